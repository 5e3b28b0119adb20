"""Reading a store for training: a ``PairedSource`` and a background prefetcher to a mesh.

``StoreSource`` serves the batch of ``(seed, step)`` exactly as ``ArraySource`` does (same
``epoch_rows`` order), standardised with the store manifest's per-model scalar mean/std.
``prefetch_to_mesh`` reads the next batches on a background thread and places each one on the
devices, split along the mesh's ``"data"`` axis, while the accelerator works on the current one.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator

import jax
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


class StoreSource:
    """A paired source over a store on disk.

    Args:
      store: a :class:`~usae_jax.data.store.Store` or its directory.
      standardise: apply the manifest's ``(x - mean) / (std + std_epsilon)`` per model (the
        official recipe; ``std_epsilon`` is 0 in stores written before it was recorded).
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
        self.standardisation = (
            manifest_standardisation(self.store, self._names) if standardise else None
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
            check_finite(name, block, f"store {self.store.directory}", indices)
            out[name] = block
        return out

    def batch(self, step: int, batch_rows: int, seed: int) -> dict[str, np.ndarray]:
        """The batch of ``step``: ``{name: float32 [batch_rows, width]}``."""
        return self.rows(epoch_rows(self.num_rows, step, batch_rows, seed))


_DONE = object()


def prefetch_to_mesh(
    source,
    steps: Iterable[int],
    batch_rows: int,
    seed: int,
    sharding: jax.sharding.Sharding | None = None,
    depth: int = 2,
    place: Callable[[dict[str, np.ndarray]], dict[str, jax.Array]] | None = None,
) -> Iterator[tuple[int, dict[str, jax.Array]]]:
    """Yield ``(step, {name: jax.Array [batch_rows, width]})`` placed with ``sharding``.

    A background thread reads host batches (``source.batch``) and ``jax.device_put``s them, at
    most ``depth`` batches ahead. Errors in the thread are re-raised here; closing the generator
    stops the thread.

    Args:
      sharding: e.g. ``NamedSharding(mesh, PartitionSpec("data"))``; ``batch_rows`` must divide
        evenly over the ``"data"`` axis.
      place: instead of ``sharding``, a function placing a host batch on the devices (e.g.
        :func:`usae_jax.sharding.shard_rows`, which also assembles multi-process arrays).
    """
    if (sharding is None) == (place is None):
        raise ValueError("pass exactly one of sharding and place")
    if place is None:

        def place(host):
            return {k: jax.device_put(v, sharding) for k, v in host.items()}

    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                buffer.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work():
        try:
            for step in steps:
                host = source.batch(step, batch_rows, seed)
                device = place(host)
                if not put((step, device)):
                    return
            put(_DONE)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer
            put(err)

    thread = threading.Thread(target=work, name="usae-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = buffer.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)
