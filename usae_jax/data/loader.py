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


class StoreSource:
    """A paired source over a store on disk.

    Args:
      store: a :class:`~usae_jax.data.store.Store` or its directory.
      standardise: apply the manifest's ``(x - mean) / std`` per model (the official recipe).
      names: the models to serve and their order (default: all, in manifest order).
      verify: check shard checksums when opening a directory.
    """

    def __init__(
        self,
        store: Store | str | os.PathLike,
        standardise: bool = True,
        names: Iterable[str] | None = None,
        verify: bool = True,
    ):
        self.store = store if isinstance(store, Store) else Store(store, verify=verify)
        self._names = tuple(names) if names is not None else self.store.names
        unknown = [n for n in self._names if n not in self.store.models]
        if unknown:
            raise StoreError(f"models {unknown} are not in the store ({self.store.names})")
        models = self.store.models
        if standardise and any(models[n]["mean"] is None for n in self._names):
            raise StoreError(f"store {self.store.directory} has no standardisation statistics")
        self.standardisation = (
            Standardisation(
                mean={n: models[n]["mean"] for n in self._names},
                std={n: models[n]["std"] for n in self._names},
            )
            if standardise
            else None
        )

    @property
    def names(self) -> tuple[str, ...]:
        return self._names

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(int(self.store.models[n]["width"]) for n in self._names)

    @property
    def num_rows(self) -> int:
        return self.store.num_rows

    def rows(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """Standardised float32 rows ``{name: [len(indices), width]}`` at sorted ``indices``."""
        out = {}
        for name in self._names:
            block = self.store.read(name, indices)
            if self.standardisation is not None:
                block = self.standardisation.apply(name, block)
            check_finite(name, block, f"store {self.store.directory}")
            out[name] = block
        return out

    def batch(self, step: int, batch_rows: int, seed: int) -> dict[str, np.ndarray]:
        """The batch of ``step``: ``{name: float32 [batch_rows, width]}``."""
        return self.rows(epoch_rows(self.num_rows, step, batch_rows, seed))
