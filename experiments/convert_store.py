"""Convert a memory-mapped activation store into a zarr store (tensorstore), row for row.

    python -m experiments.convert_store --src=stores/dino --dst=stores/dino_zarr
    python -m experiments.convert_store --src=stores/dino \
        --dst='{"driver": "gcs", "bucket": "my-bucket", "path": "stores/dino"}'

The destination is a folder or a tensorstore kvstore spec as JSON (see docs/input_pipeline.md).
Models, widths, dtypes, standardisation statistics, grid and image ids carry over; the source's
shard checksums are checked first. Train on it with ``GrainSource`` (usae_jax.data.grain_source).
"""

import json

from absl import app, flags

from usae_jax.data.zarr_store import convert_store

_SRC = flags.DEFINE_string("src", None, "Memmap store folder (written by experiments/extract.py).")
_DST = flags.DEFINE_string("dst", None, "Zarr store folder, or a kvstore spec as JSON.")
_CHUNK = flags.DEFINE_integer(
    "chunk_rows", 4096, "Rows per file (object) of each model's array, rounded up to whole units."
)
_READ = flags.DEFINE_integer(
    "read_rows",
    None,
    "Rows per read unit inside a file, each with its own checksum (default: one image's tokens, "
    "the Grain pipeline's default shuffle unit; set it to the chunk_rows you train with).",
)
_VERIFY = flags.DEFINE_bool("verify", True, "Check the source shards' sha256 first.")


def main(argv):
    del argv
    dst = _DST.value
    if dst.lstrip().startswith("{"):
        dst = json.loads(dst)
    store = convert_store(
        _SRC.value, dst, chunk_rows=_CHUNK.value, verify=_VERIFY.value, read_rows=_READ.value
    )
    print(
        f"wrote {store.num_rows} rows of {', '.join(store.names)} (widths {store.widths}) "
        f"to {store.directory}"
    )


if __name__ == "__main__":
    flags.mark_flags_as_required(["src", "dst"])
    app.run(main)
