"""Reading a store for training: a ``PairedSource`` over a store on disk.

``StoreSource`` serves the batch of ``(seed, step)`` exactly as ``ArraySource`` does (same
``epoch_rows`` order), standardised with the store manifest's per-model scalar mean/std. The
background prefetch to the devices is :func:`usae_jax.parallel.prefetch.prefetch_to_mesh`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np

from usae_jax.data.source import Standardisation, check_finite, epoch_rows
from usae_jax.data.store import Store, StoreError


def manifest_standardisation(store, names: Iterable[str]) -> Standardisation:
    """The store manifest's ``(x - mean) / (std + std_epsilon)`` for ``names``.

    ``store`` is a memmap :class:`~usae_jax.data.store.Store` or a zarr store (anything with
    ``models``, ``manifest`` and ``directory``); ``std_epsilon`` is 0 for stores written before
    it was recorded. Raises :class:`StoreError` when the store has no statistics.
    """
    models = store.models
    if any(models[n]["mean"] is None for n in names):
        raise StoreError(f"store {store.directory} has no standardisation statistics")
    return Standardisation(
        mean={n: models[n]["mean"] for n in names},
        std={n: models[n]["std"] for n in names},
        epsilon=float(store.manifest.get("std_epsilon", 0.0)),
    )


class StoreModels:
    """The models a store-backed source serves: what :class:`StoreSource` and
    :class:`~usae_jax.data.grain_source.GrainSource` share.

    Args:
      store: an open store (memmap :class:`~usae_jax.data.store.Store` or zarr store).
      standardise: apply the manifest's ``(x - mean) / (std + std_epsilon)`` per model.
      names: the models to serve and their order (default: all, in manifest order).

    Raises:
      StoreError: ``names`` holds a model the store lacks, or the store has no statistics.
    """

    def __init__(self, store, standardise: bool = True, names: Iterable[str] | None = None):
        self.store = store
        self._names = tuple(names) if names is not None else tuple(store.names)
        unknown = [n for n in self._names if n not in store.models]
        if unknown:
            raise StoreError(f"models {unknown} are not in the store ({store.names})")
        self.standardisation = manifest_standardisation(store, self._names) if standardise else None

    @property
    def names(self) -> tuple[str, ...]:
        """The served models, in order."""
        return self._names

    @property
    def widths(self) -> tuple[int, ...]:
        """Activation width of each served model, in the order of :attr:`names`."""
        return tuple(int(self.store.models[n]["width"]) for n in self._names)

    @property
    def num_rows(self) -> int:
        """Rows (tokens) of the store, the same for every model."""
        return self.store.num_rows


class StoreSource(StoreModels):
    """A paired source over a store on disk.

    Args:
      store: a :class:`~usae_jax.data.store.Store` or its directory.
      standardise: apply the manifest's ``(x - mean) / (std + std_epsilon)`` per model (the
        official recipe; ``std_epsilon`` is 0 in stores written before it was recorded).
      names: the models to serve and their order (default: all, in manifest order).
      verify: check shard checksums when opening a directory.
      standardisation: apply this one instead of the manifest's (e.g. the training store's, to
        read a held-out store exactly as training read its own rows); needs ``standardise``.
    """

    def __init__(
        self,
        store: Store | str | os.PathLike,
        standardise: bool = True,
        names: Iterable[str] | None = None,
        verify: bool = True,
        standardisation: Standardisation | None = None,
    ):
        store = store if isinstance(store, Store) else Store(store, verify=verify)
        if standardisation is not None and not standardise:
            raise StoreError("a standardisation was given with standardise=False")
        super().__init__(store, standardise and standardisation is None, names)
        if standardisation is not None:
            self.standardisation = standardisation

    def rows(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """Standardised float32 rows ``{name: [len(indices), width]}`` at sorted ``indices``."""
        out = {}
        for name in self._names:
            block = self.store.read(name, indices)
            if self.standardisation is not None:
                block = self.standardisation.apply(name, block)
            check_finite(name, block, f"store {self.store.directory}", indices)
            out[name] = block
        return out

    def batch(self, step: int, batch_rows: int, seed: int) -> dict[str, np.ndarray]:
        """The batch of ``step``: ``{name: float32 [batch_rows, width]}``."""
        return self.rows(epoch_rows(self.num_rows, step, batch_rows, seed))
