"""A paired source over a store, read by a Grain pipeline: chunked shuffle, multi-worker loading.

**Order.** An epoch shuffles *chunks* of ``chunk_rows`` consecutive rows (e.g. one image's
tokens) and visits them in that order; the batch of a step is the next ``batch_rows`` rows of that
order, so a batch is a few contiguous runs read sequentially instead of ``batch_rows`` scattered
rows. Epoch ``e``'s chunk order is ``numpy.random.default_rng([seed, e]).permutation``; the ragged
tail of an epoch is dropped; inside a batch the runs are sorted by position (losses are means over
rows, so the order inside a batch changes nothing and reads go forward through the files).

**Resume.** The batch of a step is a deterministic function of ``(seed, step)``, as with
:class:`~usae_jax.data.loader.StoreSource`: the Grain pipeline is a ``MapDataset`` over *steps*
(element ``i`` is the batch of step ``start + i``), so its iterator state is nothing but the next
step, which the training checkpoint already holds as ``state.step``. A resumed run rebuilds the
pipeline at that step and reads exactly the batches an uninterrupted one would have; nothing is
added to the checkpoint, and every host of a multi-host run agrees on the batch without talking.
The Grain iterator's own ``get_state``/``set_state`` also work (tested) for callers that drive it
directly.

**Workers.** ``workers = 0`` reads in threads of this process; ``workers > 0`` starts Grain worker
processes (``mp_prefetch``), each computing whole batches, returned in step order. Both give the
same batches. A store on the tensorstore ``memory`` driver lives in one process: workers = 0 only.

Rows are stored as float32, float16 or bfloat16 and served as float32, standardised with the
manifest's per-model scalar mean/std (``(x - mean) / (std + std_epsilon)``, as
:class:`usae_jax.data.loader.StoreSource`) and checked for NaN/Inf.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import grain
import numpy as np
from absl import flags
from grain.python import SharedMemoryArray

from usae_jax.data.loader import StoreModels
from usae_jax.data.source import Standardisation, check_finite
from usae_jax.data.store import Store
from usae_jax.data.zarr_store import ZarrStore, is_zarr_store
from usae_jax.validation import require

_FOREVER = 1 << 62  # the step dataset of an open-ended iterator


@dataclasses.dataclass(frozen=True, kw_only=True)
class PipelineConfig:
    """How :class:`GrainSource` reads."""

    chunk_rows: int = 196
    """Rows read contiguously and shuffled as one unit (196: one 14x14 image's tokens)."""
    workers: int = 0
    """Grain worker processes reading whole batches ahead (0: threads of this process)."""
    threads: int = 2
    """Read threads per process, each reading whole batches (numpy and tensorstore drop the GIL)."""
    buffer: int = 2
    """Batches read ahead per worker (``workers > 0``) or by this process's threads."""

    def __post_init__(self):
        require(self.chunk_rows >= 1, "chunk_rows", self.chunk_rows, "must be >= 1")
        require(self.workers >= 0, "workers", self.workers, "must be >= 0")
        require(self.threads >= 0, "threads", self.threads, "must be >= 0")
        require(self.buffer >= 1, "buffer", self.buffer, "must be >= 1")


@functools.lru_cache(maxsize=4)
def _epoch_chunks(num_rows: int, chunk_rows: int, seed: int, epoch: int):
    """Chunk starts in epoch order ``[C]`` and the cumulative rows before each ``[C + 1]``."""
    num_chunks = -(-num_rows // chunk_rows)
    starts = np.random.default_rng([seed, epoch]).permutation(num_chunks) * chunk_rows
    lengths = np.minimum(chunk_rows, num_rows - starts)
    cumulative = np.concatenate([[0], np.cumsum(lengths)])
    starts.flags.writeable = cumulative.flags.writeable = False
    return starts, cumulative


def batch_spans(
    num_rows: int, step: int, batch_rows: int, seed: int, chunk_rows: int
) -> np.ndarray:
    """The contiguous runs of rows of the batch of ``step``: int64 ``[runs, 2]`` (start, stop).

    Runs are sorted by start and adjacent runs merged; their lengths add up to ``batch_rows``.
    """
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be positive, got {batch_rows}")
    steps_per_epoch = num_rows // batch_rows
    if steps_per_epoch < 1:
        raise ValueError(f"batch_rows={batch_rows} is larger than the source's {num_rows} rows")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    epoch, offset = divmod(step, steps_per_epoch)
    starts, cumulative = _epoch_chunks(num_rows, chunk_rows, seed, epoch)
    lo, hi = offset * batch_rows, (offset + 1) * batch_rows
    first = int(np.searchsorted(cumulative, lo, side="right")) - 1
    last = int(np.searchsorted(cumulative, hi, side="left"))  # chunks [first, last)
    begin = starts[first:last].astype(np.int64)
    end = begin + np.diff(cumulative[first : last + 1])
    end[-1] = begin[-1] + hi - cumulative[last - 1]
    begin[0] += lo - cumulative[first]
    order = np.argsort(begin, kind="stable")
    begin, end = begin[order], end[order]
    keep = np.concatenate([[True], begin[1:] != end[:-1]])  # merge touching runs
    return np.stack([begin[keep], end[np.concatenate([keep[1:], [True]])]], axis=1)


def spans_of(indices: np.ndarray) -> np.ndarray:
    """Runs of consecutive values of sorted ``indices [n]``: int64 ``[runs, 2]`` (start, stop)."""
    indices = np.asarray(indices, np.int64)
    if len(indices) == 0:
        return np.zeros((0, 2), np.int64)
    if np.any(np.diff(indices) < 1):
        raise ValueError("row indices must be sorted ascending without repeats")
    breaks = np.nonzero(np.diff(indices) != 1)[0] + 1
    starts = indices[np.concatenate([[0], breaks])]
    stops = indices[np.concatenate([breaks - 1, [len(indices) - 1]])] + 1
    return np.stack([starts, stops], axis=1)


def open_store(
    location: Store | ZarrStore | str | os.PathLike | Mapping[str, Any],
    verify: bool = True,
    context=None,
) -> Store | ZarrStore:
    """A memmap :class:`Store` or a :class:`ZarrStore`, told apart by the manifest's format.

    Args:
      location: an open store, a folder, or a tensorstore kvstore spec (zarr stores only).
      verify: check checksums (every shard of a memmap store; each zarr array's sha256).
      context: tensorstore context for a zarr store (needed to share a ``memory`` store).
    """
    if isinstance(location, Store | ZarrStore):
        return location
    if isinstance(location, Mapping) or is_zarr_store(location, context):
        return ZarrStore(location, verify=verify, context=context)
    return Store(location, verify=verify)


_TILE_BYTES = 1 << 19
"""Bytes of float32 output a tile of :func:`_fill` covers: small enough that its standardising
passes and its finite check run in the core's cache after the copy brings it in."""


def _fill(
    out: np.ndarray,
    pieces,
    mean: float | None,
    scale: float | None,
    name: str,
    where: str,
) -> None:
    """Copy ``pieces`` (arrays ``[rows_i, width]`` of any stored float dtype) one after the other
    into ``out`` ``[sum rows_i, width]`` float32, standardise them as ``(x - mean) / scale``
    (``mean=None``: as stored) and check them for NaN/Inf, tile by tile: one pass over memory
    instead of four, with the same float32 operations as on the whole block."""
    tile = max(1, _TILE_BYTES // (4 * max(out.shape[1], 1)))
    mean32 = None if mean is None else np.float32(mean)
    scale32 = None if scale is None else np.float32(scale)
    pos = 0
    for piece in pieces:
        for lo in range(0, len(piece), tile):
            part = piece[lo : lo + tile]
            dst = out[pos : pos + len(part)]
            dst[...] = part
            if mean32 is not None:
                dst -= mean32
                dst /= scale32
            if not np.isfinite(dst).all():
                check_finite(name, dst, where, row_ids=np.arange(pos, pos + len(part)))
            pos += len(part)
    if pos != len(out):
        raise ValueError(f"read {pos} rows of model {name!r}, expected {len(out)}")


class StoreRows:
    """A Grain ``RandomAccessDataSource`` over a store's paired rows.

    Element ``r`` is ``{name: float32 [width]}``, row ``r`` of every model (the same token).
    :meth:`read_spans` reads whole contiguous runs, which is what the batch pipeline uses.
    Picklable for Grain workers: a memmap store is reopened (not copied) in each worker.
    ``shared_memory``: allocate the blocks :meth:`read_spans` returns in shared memory (for a
    worker process, whose output Grain would otherwise copy there).
    """

    def __init__(
        self,
        store: Store | ZarrStore,
        names: Sequence[str],
        standardisation: Standardisation | None,
        shared_memory: bool = False,
    ):
        self.store = store
        self.names = tuple(names)
        self.standardisation = standardisation
        self.shared_memory = shared_memory

    def __getstate__(self):
        state = dict(self.__dict__)
        if isinstance(self.store, Store):  # pickling np.memmap would copy the data
            state["store"] = ("memmap", self.store.directory)
        return state

    def __setstate__(self, state):
        store = state["store"]
        if isinstance(store, tuple):
            state["store"] = Store(store[1], verify=False)  # the parent process verified it
        self.__dict__.update(state)

    def __len__(self) -> int:
        return self.store.num_rows

    def __repr__(self) -> str:
        return f"StoreRows({self.store.directory!r}, names={self.names})"

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"row {index} is outside [0, {len(self)})")
        return {k: v[0] for k, v in self.read_spans(np.array([[index, index + 1]])).items()}

    def read_spans(self, spans: np.ndarray) -> dict[str, np.ndarray]:
        """Rows of the runs ``spans [runs, 2]``, concatenated: ``{name: float32 [rows, width]}``.

        In a Grain worker (``shared_memory``) the blocks are allocated in shared memory, so
        Grain hands them to the training process without copying them once more."""
        total = int(sum(int(stop) - int(start) for start, stop in spans))
        where = f"store {self.store.directory}"
        out = {}
        for name in self.names:
            shape = (total, int(self.store.models[name]["width"]))
            if self.shared_memory and total > 0:  # shared memory cannot be empty
                block = SharedMemoryArray(shape, np.float32)
            else:
                block = np.empty(shape, np.float32)
            if isinstance(self.store, Store):
                pieces = itertools.chain.from_iterable(
                    self.store.pieces(name, int(a), int(b)) for a, b in spans
                )
            else:
                pieces = self.store.read_pieces(name, [(int(a), int(b)) for a, b in spans])
            st = self.standardisation
            mean, scale = (None, None) if st is None else (st.mean[name], st.scale(name))
            _fill(block, pieces, mean, scale, name, where)
            out[name] = block
        return out


class _ReadBatch:
    """Grain map: step -> ``(step, {name: float32 [batch_rows, width]})``."""

    def __init__(self, data: StoreRows, batch_rows: int, seed: int, chunk_rows: int):
        self.data, self.batch_rows, self.seed, self.chunk_rows = data, batch_rows, seed, chunk_rows

    def __call__(self, step):
        step = int(step)
        spans = batch_spans(len(self.data), step, self.batch_rows, self.seed, self.chunk_rows)
        return step, self.data.read_spans(spans)


def _absl_flags_ready() -> None:
    # Grain reads its settings from absl flags; outside an absl app (a library call, pytest)
    # nothing parsed them, and reading one would raise. Use their defaults then.
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


class GrainSource(StoreModels):
    """A paired source over a memmap or zarr store, read by a Grain pipeline.

    Drop-in for :class:`~usae_jax.data.loader.StoreSource` in ``train``: :meth:`batch` serves the
    batch of ``(seed, step)``; once it sees consecutive steps it serves them from a Grain
    iterator whose workers read ahead (any other call is read directly). Call :meth:`close` (or
    use ``with``) to stop the workers.

    Args:
      store: a store, its folder, or a tensorstore kvstore spec of a zarr store.
      config: chunking, workers, threads, read-ahead.
      standardise: apply the manifest's ``(x - mean) / (std + std_epsilon)`` per model.
      names: the models to serve and their order (default: all, in manifest order).
      verify: check the store's checksums when opening it.
      context: tensorstore context (to share a ``memory`` zarr store).
    """

    def __init__(
        self,
        store: Store | ZarrStore | str | os.PathLike | Mapping[str, Any],
        config: PipelineConfig | None = None,
        standardise: bool = True,
        names: Iterable[str] | None = None,
        verify: bool = True,
        context=None,
    ):
        super().__init__(open_store(store, verify=verify, context=context), standardise, names)
        self.config = config or PipelineConfig()
        if self.config.workers and isinstance(self.store, ZarrStore):
            self.store.__getstate__()  # raises now, clearly, for a one-process memory store
        self.data = StoreRows(
            self.store, self._names, self.standardisation, shared_memory=self.config.workers > 0
        )
        self._lock = threading.Lock()
        self._stream = None  # (key, next_step, iterator)
        self._last: dict[tuple[int, int], int] = {}

    def batch_indices(self, step: int, batch_rows: int, seed: int) -> np.ndarray:
        """Row indices of the batch of ``step``: int64 ``[batch_rows]``, ascending."""
        spans = batch_spans(self.num_rows, step, batch_rows, seed, self.config.chunk_rows)
        return np.concatenate([np.arange(a, b) for a, b in spans])

    def rows(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """Standardised float32 rows ``{name: [len(indices), width]}`` at sorted ``indices``."""
        return self.data.read_spans(spans_of(indices))

    def dataset(
        self, batch_rows: int, seed: int, start_step: int = 0, stop_step: int | None = None
    ) -> grain.IterDataset:
        """The Grain pipeline of steps ``[start_step, stop_step)`` (open-ended if None).

        Elements are ``(step, {name: float32 [batch_rows, width]})`` in step order.
        """
        batch_spans(self.num_rows, start_step, batch_rows, seed, self.config.chunk_rows)  # checks
        cfg = self.config
        steps = grain.MapDataset.range(start_step, _FOREVER if stop_step is None else stop_step)
        read = _ReadBatch(self.data, batch_rows, seed, cfg.chunk_rows)
        pipeline = steps.map(read).to_iter_dataset(
            grain.ReadOptions(num_threads=cfg.threads, prefetch_buffer_size=cfg.buffer)
        )
        if cfg.workers:
            _absl_flags_ready()
            pipeline = pipeline.mp_prefetch(
                grain.MultiprocessingOptions(
                    num_workers=cfg.workers, per_worker_buffer_size=cfg.buffer
                )
            )
        return pipeline

    def iterator(
        self, batch_rows: int, seed: int, start_step: int = 0, stop_step: int | None = None
    ):
        """A Grain iterator over :meth:`dataset` (``get_state``/``set_state``; ``close``)."""
        return iter(self.dataset(batch_rows, seed, start_step, stop_step))

    def batch(self, step: int, batch_rows: int, seed: int) -> dict[str, np.ndarray]:
        """The batch of ``step``: ``{name: float32 [batch_rows, width]}``."""
        key = (batch_rows, seed)
        with self._lock:
            if self._stream is not None and self._stream[:2] == (key, step):
                got, out = next(self._stream[2])
                self._stream = (key, step + 1, self._stream[2])
                assert got == step, (got, step)
                return out
            sequential = self._last.get(key) == step - 1
            self._last[key] = step
            if sequential:  # a sequential reader: serve it from a read-ahead iterator
                self._close_stream()
                iterator = self.iterator(batch_rows, seed, start_step=step)
                got, out = next(iterator)
                self._stream = (key, step + 1, iterator)
                return out
        return _ReadBatch(self.data, batch_rows, seed, self.config.chunk_rows)(step)[1]

    def _close_stream(self) -> None:
        if self._stream is not None:
            close = getattr(self._stream[2], "close", None)
            if close is not None:
                close()
            self._stream = None

    def close(self) -> None:
        """Stop the read-ahead iterator and its workers (if any)."""
        with self._lock:
            self._close_stream()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        with contextlib.suppress(Exception):  # at interpreter shutdown
            self._close_stream()
