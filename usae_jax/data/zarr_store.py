"""The activation store in zarr format, read and written through tensorstore.

The same content as the memory-mapped store (:mod:`usae_jax.data.store`), laid out so that many
hosts can read one copy from a shared bucket::

    manifest.json     # models (width, layer, dtype, backbone, mean/std), grid, image ids, rows
    <model>/          # a zarr v3 array [num_rows, width] per model: one file per ``chunk_rows``
                      # rows, inside it units of ``read_rows`` rows (one image), each checksummed

The location is a tensorstore *kvstore*: a local folder (``file`` driver), an in-process
``{"driver": "memory"}`` store (tests), or a bucket (``gcs``, ``s3``; see
``docs/input_pipeline.md``). Every read unit carries a crc32c checksum that tensorstore checks on
each read, and the manifest holds a sha256 of each model's full array (checked with
``verify=True``). The manifest is written last: a store without one is not a store, so an
interrupted write is never read as complete.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import tensorstore as ts

from usae_jax.data.source import Standardisation
from usae_jax.data.store import DTYPES, MANIFEST, ModelSpec, Store, StoreError

FORMAT = "usae_jax.zarr_store/1"
_WRITE_CHUNKS = 64  # zarr chunks written (and hashed) per tensorstore write


def kvstore_spec(location: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """A tensorstore kvstore spec for ``location``, its ``path`` ending in ``/``.

    Args:
      location: a local folder, or a kvstore spec such as ``{"driver": "memory"}`` or
        ``{"driver": "gcs", "bucket": "b", "path": "stores/dino"}``.
    """
    if isinstance(location, Mapping):
        spec = copy.deepcopy(dict(location))
        if "driver" not in spec:
            raise ValueError(f"a kvstore spec needs a 'driver' key, got {spec}")
    else:
        spec = {"driver": "file", "path": os.path.abspath(os.fspath(location))}
    path = spec.get("path", "")
    if path and not path.endswith("/"):
        spec["path"] = path + "/"
    return spec


def _child(spec: Mapping[str, Any], name: str) -> dict[str, Any]:
    return dict(spec) | {"path": spec.get("path", "") + name + "/"}


def _describe(spec: Mapping[str, Any]) -> str:
    return spec.get("path") if spec["driver"] == "file" else json.dumps(dict(spec))


def is_zarr_store(location: str | os.PathLike | Mapping[str, Any], context=None) -> bool:
    """Whether ``location`` holds a zarr store manifest (False for a memmap store or nothing)."""
    spec = kvstore_spec(location)
    kv = ts.KvStore.open(spec, context=context or ts.Context()).result()
    found = kv.read(MANIFEST).result()
    if found.state != "value":
        return False
    try:
        return json.loads(found.value).get("format") == FORMAT
    except (json.JSONDecodeError, AttributeError):
        return False


class ZarrStore:
    """A read-only, checked view of a zarr store (the memmap :class:`Store`'s interface).

    Args:
      location: a local folder or a tensorstore kvstore spec (see :func:`kvstore_spec`).
      verify: also compare each model's sha256 with the manifest (reads every byte once).
        Shapes, dtypes, presence and the manifest's consistency are always checked, and each
        chunk's crc32c on every read.
      require_complete: refuse a store whose extraction has not finished.
      context: the tensorstore context (a ``memory`` store lives in one context).
    """

    def __init__(
        self,
        location: str | os.PathLike | Mapping[str, Any],
        verify: bool = False,
        require_complete: bool = True,
        context: ts.Context | None = None,
    ):
        self.kvstore = kvstore_spec(location)
        self.context = context or ts.Context()
        self.directory = _describe(self.kvstore)
        self.manifest = self._read_manifest()
        m = self.manifest
        if require_complete and not m["complete"]:
            raise StoreError(f"store {self.directory} is incomplete (extraction did not finish)")
        if len(m["image_ids"]) * m["tokens_per_image"] != m["num_rows"]:
            raise StoreError(f"{self.directory}: image ids do not match num_rows")
        self.models = {spec["name"]: spec for spec in m["models"]}
        self.arrays = {name: self._open_array(name, spec) for name, spec in self.models.items()}
        if verify:
            for name in self.models:
                self._verify(name)

    def _read_manifest(self) -> dict[str, Any]:
        kv = ts.KvStore.open(self.kvstore, context=self.context).result()
        found = kv.read(MANIFEST).result()
        if found.state != "value":
            raise StoreError(f"no zarr store at {self.directory}: {MANIFEST} does not exist")
        try:
            manifest = json.loads(found.value)
        except json.JSONDecodeError as err:
            raise StoreError(
                f"zarr store manifest in {self.directory} is truncated or not valid JSON: {err}"
            ) from err
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise StoreError(f"{self.directory}/{MANIFEST} is not a {FORMAT} manifest")
        for key in ("models", "grid", "arrays", "image_ids", "num_rows", "tokens_per_image"):
            if key not in manifest:
                raise StoreError(f"zarr store manifest in {self.directory} lacks {key!r}")
        return manifest

    def _open_array(self, name: str, spec: Mapping[str, Any]) -> ts.TensorStore:
        entry = self.manifest["arrays"].get(name)
        if entry is None:
            raise StoreError(f"{self.directory}: the manifest lists no array for model {name!r}")
        where = _child(self.kvstore, name)
        try:
            array = ts.open(
                {"driver": "zarr3", "kvstore": where, "open": True}, context=self.context
            ).result()
        except ValueError as err:  # tensorstore reports missing/unreadable metadata so
            raise StoreError(
                f"missing or corrupt zarr array for model {name!r} at {_describe(where)}: {err}"
            ) from err
        want_shape = (int(self.manifest["num_rows"]), int(spec["width"]))
        if tuple(array.shape) != want_shape:
            raise StoreError(
                f"zarr array of model {name!r} has shape {tuple(array.shape)}, the manifest "
                f"implies {want_shape} (num_rows, width)"
            )
        if array.dtype.numpy_dtype != np.dtype(DTYPES[spec["dtype"]]):
            raise StoreError(
                f"zarr array of model {name!r} holds {array.dtype.name}, the manifest says "
                f"{spec['dtype']}"
            )
        return array

    def _verify(self, name: str) -> None:
        digest = hashlib.sha256()
        step = int(self.manifest["arrays"][name]["chunk_rows"]) * _WRITE_CHUNKS
        for start in range(0, self.num_rows, step):
            digest.update(self.read_block(name, start, min(start + step, self.num_rows)).tobytes())
        if digest.hexdigest() != self.manifest["arrays"][name]["sha256"]:
            raise StoreError(
                f"checksum mismatch for the zarr array of model {name!r} in {self.directory}"
            )

    def __getstate__(self):
        if self.kvstore["driver"] == "memory":
            raise StoreError(
                "a zarr store on the 'memory' driver lives in one process and cannot be sent "
                "to loader workers; use workers=0 or a file/bucket store"
            )
        return {"kvstore": self.kvstore, "manifest": self.manifest}

    def __setstate__(self, state):
        # A worker process reopens the arrays (no verification: the parent checked them).
        self.kvstore = state["kvstore"]
        self.context = ts.Context()
        self.directory = _describe(self.kvstore)
        self.manifest = state["manifest"]
        self.models = {spec["name"]: spec for spec in self.manifest["models"]}
        self.arrays = {name: self._open_array(name, spec) for name, spec in self.models.items()}

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.models)

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(int(self.models[n]["width"]) for n in self.names)

    @property
    def num_rows(self) -> int:
        return int(self.manifest["num_rows"])

    def _result(self, name: str, future) -> np.ndarray:
        try:
            return future.result()
        except ValueError as err:  # a chunk failing its crc32c, a missing chunk file, ...
            raise StoreError(f"cannot read model {name!r} from {self.directory}: {err}") from err

    def read_block(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` of model ``name`` as stored (float32/float16/bfloat16)."""
        return self._result(name, self.arrays[name][start:stop].read())

    def read_pieces(self, name: str, spans: Sequence[tuple[int, int]]) -> Iterator[np.ndarray]:
        """The rows of each span (``(start, stop)`` pairs) as stored, ``[stop - start, width]``,
        in order. All reads are issued before the first is awaited, so tensorstore fetches
        them concurrently."""
        futures = [self.arrays[name][start:stop].read() for start, stop in spans]
        for future in futures:
            yield self._result(name, future)

    def read(self, name: str, indices: np.ndarray) -> np.ndarray:
        """Raw rows of model ``name`` at sorted ``indices``: float32 ``[len(indices), width]``."""
        indices = np.asarray(indices, np.int64)
        out = np.empty((len(indices), int(self.models[name]["width"])), np.float32)
        if len(indices):
            out[:] = self._result(name, self.arrays[name][indices].read())
        return out

    def array(self, name: str) -> np.ndarray:
        """All rows of one model in memory, float32 ``[num_rows, width]`` (small stores)."""
        return self.read_block(name, 0, self.num_rows).astype(np.float32)


def _write_manifest(spec: Mapping[str, Any], manifest: Mapping[str, Any], context) -> None:
    kv = ts.KvStore.open(spec, context=context).result()
    kv.write(MANIFEST, json.dumps(manifest, indent=1).encode()).result()


def _layout(rows: int, chunk_rows: int, read_rows: int) -> tuple[int, int]:
    """``(rows per file, rows per read unit)`` of an array of ``rows`` rows: files of
    ``chunk_rows`` rows (at most the array) rounded up to whole read units; a read unit no
    larger than the file (then the file is one unit)."""
    file_rows = max(1, min(chunk_rows, rows))
    read_rows = max(1, min(read_rows, file_rows))
    return -(-file_rows // read_rows) * read_rows, read_rows


def _create_array(
    spec, name: str, rows: int, width: int, dtype: str, file_rows: int, read_rows: int, context
):
    """A zarr v3 array ``[rows, width]``: one file (shard) per ``file_rows`` rows, read in units
    of ``read_rows`` rows (from :func:`_layout`), each unit with its own crc32c
    (``sharding_indexed``), so a read of one shuffle chunk fetches and checks that unit alone,
    not the whole file."""
    checked = [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}]
    codecs = checked
    if read_rows < file_rows:
        codecs = [
            {
                "name": "sharding_indexed",
                "configuration": {
                    "chunk_shape": [read_rows, width],
                    "codecs": checked,
                    "index_codecs": checked,
                    "index_location": "end",
                },
            }
        ]
    return ts.open(
        {
            "driver": "zarr3",
            "kvstore": _child(spec, name),
            "metadata": {
                "shape": [rows, width],
                "data_type": dtype,
                "chunk_grid": {
                    "name": "regular",
                    "configuration": {"chunk_shape": [file_rows, width]},
                },
                "codecs": codecs,
            },
            "create": True,
            "delete_existing": True,
        },
        context=context,
    ).result()


def _copy_rows(target: ts.TensorStore, read, rows: int, step: int, dtype) -> str:
    """Copy ``read(start, stop)`` blocks into ``target``; the sha256 of the written bytes."""
    digest = hashlib.sha256()
    for start in range(0, rows, step):
        stop = min(start + step, rows)
        block = np.ascontiguousarray(read(start, stop), dtype=dtype)
        digest.update(block.tobytes())
        target[start:stop].write(block).result()
    return digest.hexdigest()


def _write(
    location,
    manifest: dict,
    readers: Mapping[str, Any],
    chunk_rows: int,
    read_rows: int | None,
    context,
):
    """Write every model's array through ``readers[name](start, stop)``, then the manifest.

    ``read_rows=None``: one image's tokens (the manifest's ``tokens_per_image``), the unit the
    Grain pipeline shuffles by default."""
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be positive, got {chunk_rows}")
    if read_rows is None:
        read_rows = int(manifest.get("tokens_per_image") or chunk_rows)
    if read_rows < 1:
        raise ValueError(f"read_rows must be positive, got {read_rows}")
    spec = kvstore_spec(location)
    context = context or ts.Context()
    kv = ts.KvStore.open(spec, context=context).result()
    kv.delete_range(ts.KvStore.KeyRange(MANIFEST, MANIFEST + "\0")).result()  # uncommit first
    rows = int(manifest["num_rows"])
    file_rows, unit_rows = _layout(rows, chunk_rows, read_rows)
    arrays = {}
    for model in manifest["models"]:
        name, dtype = model["name"], model["dtype"]
        target = _create_array(
            spec, name, rows, model["width"], dtype, file_rows, unit_rows, context
        )
        step = file_rows * _WRITE_CHUNKS
        digest = _copy_rows(target, readers[name], rows, step, DTYPES[dtype])
        arrays[name] = {
            "path": name + "/",
            "chunk_rows": file_rows,
            "read_rows": unit_rows,
            "sha256": digest,
        }
    manifest = dict(manifest) | {"format": FORMAT, "arrays": arrays}
    manifest.pop("shards", None)
    _write_manifest(spec, manifest, context)
    return ZarrStore(spec, context=context)


def write_zarr_store(
    location: str | os.PathLike | Mapping[str, Any],
    arrays: Mapping[str, np.ndarray],
    grid: Sequence[int],
    image_ids: Sequence[str],
    dtype: str = "float32",
    chunk_rows: int = 4096,
    meta: Mapping[str, Any] | None = None,
    context: ts.Context | None = None,
    read_rows: int | None = None,
) -> ZarrStore:
    """Write in-memory ``{name: [images * h * w, width]}`` as a complete zarr store.

    Standardisation statistics are fitted as :func:`usae_jax.data.store.write_store` does.
    ``chunk_rows`` rows go into one file, read in units of ``read_rows`` rows (default: one
    image's ``h * w`` tokens; see :func:`convert_store`).
    """
    rows = {name: int(np.shape(a)[0]) for name, a in arrays.items()}
    per = int(np.prod(grid))
    if len(set(rows.values())) != 1 or next(iter(rows.values())) != len(image_ids) * per:
        raise ValueError(
            f"row counts {rows} must all equal len(image_ids) * h * w = {len(image_ids) * per}"
        )
    specs = [ModelSpec(name=n, width=int(a.shape[1]), dtype=dtype) for n, a in arrays.items()]
    stats = Standardisation.fit(dict(arrays))
    models = [
        dataclasses.asdict(s) | {"mean": stats.mean[s.name], "std": stats.std[s.name]}
        for s in specs
    ]
    manifest = {
        "models": models,
        "grid": [int(g) for g in grid],
        "tokens_per_image": per,
        "num_rows": len(image_ids) * per,
        "image_ids": [str(i) for i in image_ids],
        "complete": True,
        "std_epsilon": float(stats.epsilon),
        "meta": dict(meta or {}),
    }
    readers = {name: (lambda start, stop, a=a: a[start:stop]) for name, a in arrays.items()}
    return _write(location, manifest, readers, chunk_rows, read_rows, context)


def convert_store(
    src: str | os.PathLike,
    dst: str | os.PathLike | Mapping[str, Any],
    chunk_rows: int = 4096,
    verify: bool = True,
    context: ts.Context | None = None,
    read_rows: int | None = None,
) -> ZarrStore:
    """Copy a memory-mapped store (``src``) into a zarr store at ``dst``, row for row.

    Models, widths, dtypes, standardisation statistics, grid, image ids and meta carry over
    unchanged; the source's shard checksums are checked first when ``verify``.

    Layout: one file (object) per ``chunk_rows`` rows (rounded up to whole read units), read in
    units of ``read_rows`` rows (default: one image's tokens, the Grain pipeline's default
    shuffle unit), each unit with its own checksum. A batch then reads only the units it
    needs: with units as large as the file, every 196-row run of a batch fetched and checked
    the whole 4096-row file (about 6x slower reads, ``benchmarks/RESULTS.md``).
    """
    store = Store(src, verify=verify)

    def reader(name):
        def read(start, stop):
            # Stored dtype, no upcast: a float16/bfloat16 store converts bit for bit.
            return np.concatenate(list(store.pieces(name, start, stop)))

        return read

    manifest = dict(store.manifest)
    manifest["meta"] = dict(manifest.get("meta", {})) | {"converted_from": store.directory}
    return _write(
        dst, manifest, {n: reader(n) for n in store.names}, chunk_rows, read_rows, context
    )
