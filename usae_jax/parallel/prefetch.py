"""Reading batches ahead on a background thread and placing them on the mesh.

``prefetch_to_mesh`` reads the next batches (``source.batch(step, rows, seed)``) on a thread
and places each one on the devices, split along the mesh's ``"data"`` axis, while the
accelerator works on the current one.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator

import jax
import numpy as np

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
        :func:`usae_jax.parallel.mesh.shard_rows`, which also assembles multi-process arrays).
    """
    if (sharding is None) == (place is None):
        raise ValueError("pass exactly one of sharding and place")
    if place is None:

        def place(host):
            return {k: jax.device_put(v, sharding) for k, v in host.items()}

    return read_ahead(
        steps, lambda step: (step, place(source.batch(step, batch_rows, seed))), depth
    )


def prefetch_chunks_to_mesh(
    source,
    chunks: Iterable[range],
    batch_rows: int,
    seed: int,
    place: Callable[[dict[str, np.ndarray]], dict[str, jax.Array]],
    depth: int = 2,
) -> Iterator[tuple[range, dict[str, jax.Array]]]:
    """Yield ``(steps, {name: jax.Array [len(steps), batch_rows, width]})``: the batches of a
    range of steps stacked on a leading axis (the same rows as :func:`prefetch_to_mesh` gives
    step by step) and placed by ``place`` (e.g. :func:`usae_jax.parallel.mesh.shard_chunk_rows`).
    """

    def stacked(steps: range):
        hosts = [source.batch(step, batch_rows, seed) for step in steps]
        chunk = {name: np.stack([host[name] for host in hosts]) for name in hosts[0]}
        return steps, place(chunk)

    return read_ahead(chunks, stacked, depth)


def read_ahead(items: Iterable, produce: Callable, depth: int = 2) -> Iterator:
    """Yield ``produce(item)`` for each item, computed on a background thread at most ``depth``
    items ahead. Errors in the thread are re-raised here; closing the generator stops it."""
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
            for item in items:
                if not put(produce(item)):
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
