"""Rows/s of the Grain input pipeline against the raw read rate of its medium.

  python benchmarks/input_pipeline.py                        # synthetic store in a temp dir
  python benchmarks/input_pipeline.py --store=/data/store    # an existing memmap store
  python benchmarks/input_pipeline.py --workers=0,1,2,4 --dtype=bfloat16

For a memmap store and its zarr copy (written next to it in a temp dir, default layout: one
file per 4096 rows, read units of one image), on two media:
  page cache  every file read once before (the store is in memory; the rate of a copy);
  disk        every file of the store dropped from the page cache first
              (``posix_fadvise(POSIX_FADV_DONTNEED)``, no root needed), so reads reach the disk;
measures
  raw       reading every data file of the store sequentially with numpy;
  grain w=N GrainSource batches (chunked shuffle, standardised float32, NaN/Inf checked) with N
            worker processes (0: the training process's read threads).
A configuration times ``--steps`` batches in the steady state: after its first batch (worker
start-up) and the batches its workers and threads may have read ahead meanwhile, all within the
first epoch, so on the disk medium no row is read twice. Prints one JSON line, then a table.
"""

import json
import os
import tempfile
import time

import numpy as np
from absl import app, flags

from usae_jax.data.grain_source import GrainSource, PipelineConfig
from usae_jax.data.store import Store, write_store
from usae_jax.data.zarr_store import ZarrStore, convert_store

_STORE = flags.DEFINE_string("store", None, "Existing memmap store directory (default: synthetic).")
_ROWS = flags.DEFINE_integer(
    "rows", 196 * 1024, "Rows of the synthetic store (default 1.5 GB at the default widths)."
)
_WIDTHS = flags.DEFINE_list("widths", ["768", "384", "768"], "Widths of the synthetic models.")
_DTYPE = flags.DEFINE_string("dtype", "float32", "Synthetic store dtype.")
_BATCH = flags.DEFINE_integer("batch_rows", 6272, "Rows per batch (paper: 32 images x 196).")
_CHUNK = flags.DEFINE_integer("chunk_rows", 196, "Rows read contiguously (shuffle unit).")
_ZARR_CHUNK = flags.DEFINE_integer("zarr_chunk_rows", 4096, "Rows per zarr file.")
_ZARR_READ = flags.DEFINE_integer(
    "zarr_read_rows", None, "Rows per zarr read unit (default: one image's tokens)."
)
_MEDIA = flags.DEFINE_list("media", ["page_cache", "disk"], "Media to time: page_cache, disk.")
_STEPS = flags.DEFINE_integer(
    "steps", 20, "Batches timed per configuration (at most an epoch's batches minus those skipped)."
)
_WORKERS = flags.DEFINE_list(
    "workers", ["0", "1", "2"], "Grain worker process counts to time (0: read threads only)."
)
_THREADS = flags.DEFINE_list(
    "threads", ["1", "2", "4"], "Read thread counts to time with 0 workers (2 with workers)."
)
_ROUNDS = flags.DEFINE_integer(
    "rounds", 3, "Rounds over every configuration; the table shows each one's median."
)


def _files(folder):
    for root, _, names in os.walk(folder):
        for name in sorted(names):
            if name != "manifest.json" and not name.endswith(".json"):
                yield os.path.join(root, name)


def drop_from_page_cache(folder) -> None:
    """Evict every file under ``folder`` from the page cache (written pages are flushed first),
    so the next reads reach the disk. Pages some process still maps stay: open the stores
    afresh after this."""
    for path in _files(folder):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def prepare(folder, medium: str) -> None:
    """Put the store's files on ``medium``: all in the page cache, or none of them."""
    if medium == "disk":
        drop_from_page_cache(folder)
    else:
        buffer = np.empty(_RAW_BUFFER, np.uint8)
        for path in _files(folder):
            _read_all(path, buffer)


_RAW_BUFFER = 64 << 20
"""Bytes of the reused buffer the raw read fills (larger than this CPU's 32 MiB L3 cache, so
the copy goes to memory as the pipeline's output does)."""


def _read_all(path, buffer: np.ndarray) -> int:
    view, total = memoryview(buffer), 0
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(view):
            total += n
    return total


def raw_rate(folder, medium: str) -> tuple[float, int]:
    """Seconds and bytes to read every data file under ``folder`` sequentially into one reused,
    already touched buffer: the rate of the medium, without allocation costs."""
    files = list(_files(folder))
    prepare(folder, medium)
    buffer = np.ones(_RAW_BUFFER, np.uint8)
    tic = time.perf_counter()
    total = sum(_read_all(path, buffer) for path in files)
    return time.perf_counter() - tic, total


def read_ahead(workers: int, buffer: int) -> int:
    """Batches a pipeline can have read before it is asked for them (each worker's buffer and
    the process's own read-ahead): skipped before timing, so that they are not counted as free."""
    return workers * buffer + buffer


def grain_rate(folder, medium: str, workers: int, threads: int, batch: int, steps: int) -> float:
    """Rows/s of ``steps`` batches in the steady state: after the first batch (start-up) and the
    batches the pipeline may have read ahead meanwhile; the store opened afresh (no page of it
    mapped before)."""
    config = PipelineConfig(chunk_rows=_CHUNK.value, workers=workers, threads=threads)
    skip = 1 + read_ahead(workers, config.buffer)
    prepare(folder, medium)
    with GrainSource(folder, config, verify=False) as source:
        iterator = source.iterator(batch, seed=0, stop_step=skip + steps)
        for _ in range(skip):
            next(iterator)
        tic = time.perf_counter()
        for _ in range(steps):
            next(iterator)
        seconds = time.perf_counter() - tic
        iterator.close()
    return steps * batch / seconds


def main(argv):
    del argv
    with tempfile.TemporaryDirectory() as tmp:
        path = _STORE.value
        if path is None:
            rng = np.random.default_rng(0)
            images = _ROWS.value // 196
            arrays = {f"m{i}": rng.normal(size=(images * 196, int(w))).astype(np.float32)
                      for i, w in enumerate(_WIDTHS.value)}  # fmt: skip
            path = os.path.join(tmp, "store")
            write_store(path, arrays, (14, 14), [str(i) for i in range(images)], dtype=_DTYPE.value)
            del arrays
        zarr_path = os.path.join(tmp, "zarr")
        convert_store(
            path, zarr_path, chunk_rows=_ZARR_CHUNK.value, verify=False, read_rows=_ZARR_READ.value
        )
        memmap, zarr = Store(path, verify=False), ZarrStore(zarr_path)
        num_rows, widths = memmap.num_rows, list(memmap.widths)
        dtype = memmap.models[memmap.names[0]]["dtype"]
        zarr_layout = {
            k: zarr.manifest["arrays"][zarr.names[0]][k] for k in ("chunk_rows", "read_rows")
        }
        del memmap, zarr  # no mapping may keep pages in the cache
        folders = {"memmap": path, "zarr": zarr_path}
        batch = min(_BATCH.value, num_rows)
        most_skipped = 1 + read_ahead(max(map(int, _WORKERS.value)), PipelineConfig().buffer)
        steps = min(_STEPS.value, max(1, num_rows // batch - most_skipped))
        setups = [(w, t) for w in map(int, _WORKERS.value)
                  for t in (map(int, _THREADS.value) if w == 0 else [2])]  # fmt: skip
        readings: dict[tuple, list[float]] = {}
        for _ in range(_ROUNDS.value):  # rounds interleave, so a slow minute hits every setup
            for medium in _MEDIA.value:
                for kind, folder in folders.items():
                    seconds, nbytes = raw_rate(folder, medium)
                    readings.setdefault((medium, kind, "raw"), []).append(seconds / nbytes)
                    for workers, threads in setups:
                        rate = grain_rate(folder, medium, workers, threads, batch, steps)
                        readings.setdefault((medium, kind, workers, threads), []).append(rate)
        rows = []
        for medium in _MEDIA.value:
            for kind in folders:
                seconds_per_byte = float(np.median(readings[(medium, kind, "raw")]))
                nbytes = sum(os.path.getsize(p) for p in _files(folders[kind]))
                medium_rate = num_rows / (seconds_per_byte * nbytes)
                for workers, threads in setups:
                    rate = float(np.median(readings[(medium, kind, workers, threads)]))
                    rows.append({"medium": medium, "store": kind, "workers": workers,
                                 "threads": threads, "rows_per_s": round(rate),
                                 "raw_rows_per_s": round(medium_rate),
                                 "raw_MB_per_s": round(1e-6 / seconds_per_byte, 1),
                                 "of_raw": round(rate / medium_rate, 3)})  # fmt: skip
        result = {
            "benchmark": "input_pipeline",
            "store_rows": num_rows,
            "widths": widths,
            "dtype": dtype,
            "batch_rows": batch,
            "chunk_rows": _CHUNK.value,
            "zarr_layout": zarr_layout,
            "steps": steps,
            "rounds": _ROUNDS.value,
            "cpus": os.cpu_count(),
            "rows": rows,
        }
        print(json.dumps(result))
        print(f"{'medium':<11}{'store':<8}{'workers':>8}{'threads':>8}{'rows/s':>12}"
              f"{'raw rows/s':>12}{'raw MB/s':>10}{'of raw':>8}")  # fmt: skip
        for r in rows:
            print(
                f"{r['medium']:<11}{r['store']:<8}{r['workers']:>8}{r['threads']:>8}"
                f"{r['rows_per_s']:>12}"
                f"{r['raw_rows_per_s']:>12}{r['raw_MB_per_s']:>10}{r['of_raw']:>8.2f}"
            )


if __name__ == "__main__":
    app.run(main)
