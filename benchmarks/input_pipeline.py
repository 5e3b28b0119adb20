"""Rows/s of the Grain input pipeline against the raw read rate of its medium.

  python benchmarks/input_pipeline.py                        # synthetic store in a temp dir
  python benchmarks/input_pipeline.py --store=/data/store    # an existing memmap store
  python benchmarks/input_pipeline.py --workers=0,1,2,4 --dtype=bfloat16

For a memmap store and its zarr copy (written next to it in a temp dir), measures:
  raw       reading every data file of the store sequentially with numpy (the medium's rate);
  grain w=N GrainSource batches (chunked shuffle, standardised float32) with N workers.
Prints one JSON line, then a table. Reads after the first pass come from the page cache: use a
store larger than RAM (or drop the cache) to measure the disk itself.
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
_ROWS = flags.DEFINE_integer("rows", 196 * 256, "Rows of the synthetic store.")
_WIDTHS = flags.DEFINE_list("widths", ["768", "384", "768"], "Widths of the synthetic models.")
_DTYPE = flags.DEFINE_string("dtype", "float32", "Synthetic store dtype.")
_BATCH = flags.DEFINE_integer("batch_rows", 6272, "Rows per batch (paper: 32 images x 196).")
_CHUNK = flags.DEFINE_integer("chunk_rows", 196, "Rows read contiguously (shuffle unit).")
_ZARR_CHUNK = flags.DEFINE_integer("zarr_chunk_rows", 1568, "Rows per zarr chunk file.")
_STEPS = flags.DEFINE_integer("steps", 20, "Batches timed per configuration.")
_WORKERS = flags.DEFINE_list("workers", ["0", "1", "2"], "Grain worker counts to time.")


def _files(folder):
    for root, _, names in os.walk(folder):
        for name in sorted(names):
            if name != "manifest.json" and not name.endswith(".json"):
                yield os.path.join(root, name)


def raw_rate(folder) -> tuple[float, int]:
    """Seconds and bytes to read every data file under ``folder`` sequentially with numpy."""
    files = list(_files(folder))
    for path in files:  # warm: the same page-cache state the pipeline sees
        np.fromfile(path, np.uint8)
    tic = time.perf_counter()
    total = sum(np.fromfile(path, np.uint8).size for path in files)
    return time.perf_counter() - tic, total


def grain_rate(store, workers: int, batch: int, steps: int) -> float:
    """Rows/s of ``steps`` batches after the first (worker start-up excluded)."""
    config = PipelineConfig(chunk_rows=_CHUNK.value, workers=workers)
    with GrainSource(store, config, verify=False) as source:
        iterator = source.iterator(batch, seed=0, stop_step=steps + 1)
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
        memmap = Store(path, verify=False)
        zarr_path = os.path.join(tmp, "zarr")
        convert_store(path, zarr_path, chunk_rows=_ZARR_CHUNK.value, verify=False)
        stores = {"memmap": memmap, "zarr": ZarrStore(zarr_path)}
        batch = min(_BATCH.value, memmap.num_rows)
        steps = min(_STEPS.value, max(1, memmap.num_rows // batch - 1))
        seconds, nbytes = raw_rate(path)
        raw_rows = memmap.num_rows / seconds
        rows = []
        for kind, store in stores.items():
            zs, zb = raw_rate(zarr_path) if kind == "zarr" else (seconds, nbytes)
            medium = store.num_rows / zs
            for workers in map(int, _WORKERS.value):
                rate = grain_rate(store, workers, batch, steps)
                rows.append({"store": kind, "workers": workers, "rows_per_s": round(rate),
                             "raw_rows_per_s": round(medium),
                             "of_raw": round(rate / medium, 3)})  # fmt: skip
        result = {
            "benchmark": "input_pipeline",
            "store_rows": memmap.num_rows,
            "widths": list(memmap.widths),
            "dtype": memmap.models[memmap.names[0]]["dtype"],
            "batch_rows": batch,
            "chunk_rows": _CHUNK.value,
            "steps": steps,
            "cpus": os.cpu_count(),
            "raw_MB_per_s": round(nbytes / seconds / 1e6, 1),
            "raw_rows_per_s": round(raw_rows),
            "rows": rows,
        }
        print(json.dumps(result))
        print(f"raw read (numpy, sequential): {result['raw_rows_per_s']} rows/s, "
              f"{result['raw_MB_per_s']} MB/s")  # fmt: skip
        print(f"{'store':<8}{'workers':>8}{'rows/s':>12}{'raw rows/s':>12}{'of raw':>8}")
        for r in rows:
            print(f"{r['store']:<8}{r['workers']:>8}{r['rows_per_s']:>12}"
                  f"{r['raw_rows_per_s']:>12}{r['of_raw']:>8.2f}")  # fmt: skip


if __name__ == "__main__":
    app.run(main)
