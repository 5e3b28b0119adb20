"""Rows/s of the store loader: host batches (StoreSource) and prefetched sharded device batches.

  python benchmarks/loader_throughput.py                      # synthetic store in a temp dir
  python benchmarks/loader_throughput.py --store /tmp/store   # an existing store

Prints one JSON line (machine-readable) and a short table. Reads are from the page cache after
the first epoch; pass --rows larger than RAM to measure the disk.
"""

import json
import os
import tempfile
import time

import jax
import numpy as np
from absl import app, flags
from jax.sharding import NamedSharding, PartitionSpec

from usae_jax.data.loader import StoreSource
from usae_jax.data.store import write_store
from usae_jax.parallel.prefetch import prefetch_to_mesh

_STORE = flags.DEFINE_string("store", None, "Existing store directory (default: synthetic).")
_ROWS = flags.DEFINE_integer("rows", 196 * 256, "Rows of the synthetic store.")
_WIDTHS = flags.DEFINE_list("widths", ["768", "384", "768"], "Widths of the synthetic models.")
_DTYPE = flags.DEFINE_string("dtype", "float32", "Synthetic store dtype.")
_BATCH = flags.DEFINE_integer("batch_rows", 6272, "Rows per batch (paper: 32 images x 196).")
_STEPS = flags.DEFINE_integer("steps", 20, "Batches timed per mode.")


def _time(fn, steps):
    fn(0)  # warm up (first read, first transfer)
    tic = time.perf_counter()
    for step in range(1, steps + 1):
        fn(step)
    return (time.perf_counter() - tic) / steps


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
        source = StoreSource(path)
        mesh = jax.make_mesh((jax.device_count(),), ("data",),
                             axis_types=(jax.sharding.AxisType.Auto,))  # fmt: skip
        sharding = NamedSharding(mesh, PartitionSpec("data"))
        batch = _BATCH.value
        host_s = _time(lambda s: source.batch(s, batch, 0), _STEPS.value)
        stream = prefetch_to_mesh(source, range(_STEPS.value + 1), batch, 0, sharding, depth=2)
        device_s = _time(lambda s: jax.block_until_ready(next(stream)[1]), _STEPS.value)
        bytes_per_row = sum(source.widths) * 4
        result = {
            "benchmark": "loader_throughput",
            "store_rows": source.num_rows,
            "widths": list(source.widths),
            "dtype": source.store.models[source.names[0]]["dtype"],
            "batch_rows": batch,
            "devices": jax.device_count(),
            "host_rows_per_s": round(batch / host_s),
            "prefetch_rows_per_s": round(batch / device_s),
            "host_MB_per_s": round(batch * bytes_per_row / host_s / 1e6, 1),
        }
        print(json.dumps(result))
        print(f"{'mode':<28}{'rows/s':>12}{'ms/batch':>10}")
        print(
            f"{'StoreSource.batch (host)':<28}{result['host_rows_per_s']:>12}{host_s * 1e3:>10.1f}"
        )
        print(f"{'prefetch_to_mesh (device)':<28}{result['prefetch_rows_per_s']:>12}"
              f"{device_s * 1e3:>10.1f}")  # fmt: skip


if __name__ == "__main__":
    app.run(main)
