"""The activation store: memory-mapped shards per model plus a JSON manifest.

Layout of a store directory::

    manifest.json          # what is committed (see below); replaced atomically
    <model>/00000.bin      # raw C-order [rows, width] arrays, one file per model per chunk

Rows are appended in chunks of whole images. A chunk is *committed* when its shard files are
flushed, fsynced and renamed into place and only then the manifest listing it is replaced
(write to a temporary file, fsync, ``os.replace``). A crash at any point therefore leaves a store
whose manifest describes exactly the complete chunks; files of an uncommitted chunk are removed
when the writer reopens the store. The manifest holds: the models (width, layer, dtype, backbone
identity, scalar standardisation mean and unbiased std; the top-level ``std_epsilon`` is added to
the std before dividing, 0 in stores written before it was recorded), the common token grid, the
image ids in row order, per-shard row counts and sha256 checksums, and whether extraction
completed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import ml_dtypes
import numpy as np

from usae_jax.data.source import STD_EPSILON, Standardisation
from usae_jax.validation import require

FORMAT = "usae_jax.store/1"
MANIFEST = "manifest.json"
DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}


class StoreError(ValueError):
    """A store on disk that is missing pieces or disagrees with its manifest."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """One model (one backbone layer) of a store."""

    name: str
    """Model name, used as the shard folder name and in the USAE config."""
    width: int
    """Activation width (channels)."""
    layer: str = "final"
    """Backbone layer the rows come from (see ``usae_jax.backbones.base``)."""
    dtype: str = "float32"
    """Storage dtype: ``float32``, ``float16`` or ``bfloat16``; loaders return float32."""
    backbone: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """Backbone family and checkpoint identity (path, sha256, converter)."""

    def __post_init__(self):
        require(
            bool(self.name) and "/" not in self.name and not self.name.startswith("."),
            "name",
            self.name,
            "a model name must be a plain folder name",
        )
        require(self.width >= 1, "width", self.width, f"model {self.name!r}: must be >= 1")
        require(
            self.dtype in DTYPES,
            "dtype",
            self.dtype,
            f"model {self.name!r}: one of {sorted(DTYPES)}",
        )


def _fsync_write(path: str, data: bytes | str) -> None:
    mode = "wb" if isinstance(data, bytes) else "w"
    with open(path, mode) as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_manifest(directory: str, manifest: Mapping[str, Any]) -> None:
    """Replace ``manifest.json`` atomically (temp file, fsync, rename, fsync the folder)."""
    tmp = os.path.join(directory, MANIFEST + ".tmp")
    _fsync_write(tmp, json.dumps(manifest, indent=1))
    os.replace(tmp, os.path.join(directory, MANIFEST))
    _fsync_dir(directory)


def read_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    """Read and sanity-check a manifest; ``StoreError`` if missing, truncated or foreign."""
    path = os.path.join(os.fspath(directory), MANIFEST)
    if not os.path.isfile(path):
        raise StoreError(f"no store at {directory}: {path} does not exist")
    try:
        with open(path) as f:
            manifest = json.load(f)
    except json.JSONDecodeError as err:
        raise StoreError(f"store manifest {path} is truncated or not valid JSON: {err}") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise StoreError(f"{path} is not a {FORMAT} manifest")
    for key in ("models", "grid", "shards", "image_ids", "num_rows"):
        if key not in manifest:
            raise StoreError(f"store manifest {path} lacks the field {key!r}")
    return manifest


def new_manifest(
    specs: Sequence[ModelSpec], grid: Sequence[int], meta: Mapping[str, Any]
) -> dict[str, Any]:
    """An empty manifest (no chunks committed)."""
    names = [s.name for s in specs]
    if len(set(names)) != len(names) or not names:
        raise ValueError(f"model names must be unique and non-empty: {names}")
    return {
        "format": FORMAT,
        "models": [dataclasses.asdict(s) | {"mean": None, "std": None} for s in specs],
        "grid": [int(g) for g in grid],
        "tokens_per_image": int(np.prod(grid)),
        "num_rows": 0,
        "image_ids": [],
        "shards": [],
        "complete": False,
        "meta": dict(meta),
    }


def shard_path(name: str, index: int) -> str:
    """Relative path of shard ``index`` of model ``name``."""
    return f"{name}/{index:05d}.bin"


# What the writer itself puts in a model folder: committed shards and their temporary files.
_SHARD_FILE = re.compile(r"\d{5}\.bin(\.tmp)?")


def resolve_shard(directory: str, rel: Any) -> str:
    """The absolute path of a manifest's shard entry ``rel``, which must stay inside the store.

    A manifest is data read from disk: a crafted or damaged one must not make a reader open
    files elsewhere. ``rel`` must be a relative path without ``..`` components whose real path
    (symbolic links followed) lies under the store's real path; otherwise ``StoreError``.
    """
    if not isinstance(rel, str) or not rel:
        raise StoreError(f"{directory}: manifest shard path {rel!r} is not a non-empty string")
    parts = rel.replace("\\", "/").split("/")
    if os.path.isabs(rel) or rel.startswith(("/", "\\")) or os.path.splitdrive(rel)[0]:
        raise StoreError(
            f"{directory}: manifest shard path {rel!r} is absolute; shard paths must be "
            "relative to the store folder"
        )
    if ".." in parts:
        raise StoreError(
            f"{directory}: manifest shard path {rel!r} contains '..'; shard paths must stay "
            "inside the store folder"
        )
    root = os.path.realpath(directory)
    path = os.path.realpath(os.path.join(root, rel))
    if os.path.commonpath([root, path]) != root or path == root:
        raise StoreError(
            f"{directory}: manifest shard path {rel!r} resolves to {path}, outside the store "
            f"folder {root} (a symbolic link?)"
        )
    return path


class StoreWriter:
    """Appends committed chunks to a store; reopening resumes after the last committed chunk.

    Args:
      directory: the store folder: new, empty, or a store to resume. A non-empty folder
        without a manifest is refused (``StoreError``), its files untouched.
      specs: the models; must equal the manifest's when resuming.
      grid: common token grid ``(h, w)``; rows per image is ``h * w``.
      meta: extraction settings; must equal the manifest's when resuming (so a resumed run
        cannot silently mix two different extractions).
    """

    def __init__(self, directory, specs: Sequence[ModelSpec], grid, meta: Mapping[str, Any]):
        self.directory = os.fspath(directory)
        os.makedirs(self.directory, exist_ok=True)
        fresh = new_manifest(specs, grid, json.loads(json.dumps(meta)))
        if not os.path.exists(os.path.join(self.directory, MANIFEST)):
            self._refuse_foreign_folder()
        if os.path.exists(os.path.join(self.directory, MANIFEST)):
            self.manifest = read_manifest(self.directory)
            for key in ("models", "grid", "meta"):
                have, want = self.manifest[key], fresh[key]
                if key == "models":
                    have = [{k: v for k, v in m.items() if k not in ("mean", "std")} for m in have]
                    want = [{k: v for k, v in m.items() if k not in ("mean", "std")} for m in want]
                if have != want:
                    raise StoreError(
                        f"{self.directory} holds a store with other {key} ({have}) than this "
                        f"run ({want}); use another directory or delete it"
                    )
        else:
            self.manifest = fresh
            write_manifest(self.directory, fresh)
        self.specs = {s.name: s for s in specs}
        for name in self.specs:
            os.makedirs(os.path.join(self.directory, name), exist_ok=True)
        self._remove_uncommitted()

    def _refuse_foreign_folder(self) -> None:
        """A folder without a manifest must be empty: it is not a store, so its files are not
        ours to overwrite or remove. (A lone ``manifest.json.tmp`` is a crash during the very
        first manifest write.)"""
        entries = sorted(set(os.listdir(self.directory)) - {MANIFEST + ".tmp"})
        if entries:
            shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
            raise StoreError(
                f"{self.directory} is not empty ({len(entries)} entries: {shown}) and holds no "
                f"store ({MANIFEST} is missing); refusing to write a store there. Use an empty "
                "or new folder."
            )

    def _remove_uncommitted(self) -> None:
        """Delete shard files (and their temporaries) that no committed chunk lists."""
        listed = {f["path"] for s in self.manifest["shards"] for f in s["files"].values()}
        for rel in listed:
            resolve_shard(self.directory, rel)  # a manifest pointing elsewhere is refused
        for name in self.specs:
            folder = os.path.join(self.directory, name)
            for entry in os.listdir(folder):
                if _SHARD_FILE.fullmatch(entry) and f"{name}/{entry}" not in listed:
                    os.remove(os.path.join(folder, entry))  # a link itself, never its target

    @property
    def committed_images(self) -> int:
        """Number of images whose rows are committed."""
        return len(self.manifest["image_ids"])

    @property
    def complete(self) -> bool:
        """Whether :meth:`finish` has run."""
        return bool(self.manifest["complete"])

    def append(self, image_ids: Sequence[str], arrays: Mapping[str, np.ndarray]) -> None:
        """Commit one chunk: ``arrays = {name: [len(image_ids) * h * w, width]}``."""
        if self.complete:
            raise StoreError(f"{self.directory} is complete; it takes no more chunks")
        rows = len(image_ids) * self.manifest["tokens_per_image"]
        index = len(self.manifest["shards"])
        files = {}
        for name, spec in self.specs.items():
            block = np.ascontiguousarray(arrays[name], dtype=DTYPES[spec.dtype])
            if block.shape != (rows, spec.width):
                want = (rows, spec.width)
                raise ValueError(f"model {name!r}: chunk shape {block.shape} != {want}")
            rel = shard_path(name, index)
            path = os.path.join(self.directory, rel)
            data = block.tobytes()
            _fsync_write(path + ".tmp", data)
            os.replace(path + ".tmp", path)
            files[name] = {"path": rel, "sha256": hashlib.sha256(data).hexdigest()}
        _fsync_dir(self.directory)
        manifest = dict(self.manifest)
        manifest["shards"] = [*manifest["shards"], {"rows": rows, "files": files}]
        manifest["image_ids"] = [*manifest["image_ids"], *map(str, image_ids)]
        manifest["num_rows"] = manifest["num_rows"] + rows
        write_manifest(self.directory, manifest)
        self.manifest = manifest

    def finish(
        self,
        mean: Mapping[str, float],
        std: Mapping[str, float],
        std_epsilon: float = STD_EPSILON,
    ) -> None:
        """Record the per-model standardisation and mark the store complete.

        Readers standardise with ``(x - mean) / (std + std_epsilon)``; ``std`` is the unbiased
        (``ddof=1``) std, as in the official code.
        """
        manifest = dict(self.manifest)
        manifest["models"] = [
            m | {"mean": float(mean[m["name"]]), "std": float(std[m["name"]])}
            for m in manifest["models"]
        ]
        manifest["std_epsilon"] = float(std_epsilon)
        manifest["complete"] = True
        write_manifest(self.directory, manifest)
        self.manifest = manifest


class Store:
    """A read-only, verified view of a store: memory-mapped shards per model.

    Args:
      directory: the store folder.
      verify: also check every shard's sha256 (reads all bytes once). Sizes, presence and the
        manifest's consistency are always checked.
      require_complete: refuse a store whose extraction has not finished.
    """

    def __init__(self, directory, verify: bool = True, require_complete: bool = True):
        self.directory = os.fspath(directory)
        self.manifest = read_manifest(self.directory)
        m = self.manifest
        if require_complete and not m["complete"]:
            raise StoreError(f"store {self.directory} is incomplete (extraction did not finish)")
        self.models = {spec["name"]: spec for spec in m["models"]}
        if sum(s["rows"] for s in m["shards"]) != m["num_rows"]:
            raise StoreError(f"{self.directory}: shard rows do not add up to num_rows")
        if len(m["image_ids"]) * m["tokens_per_image"] != m["num_rows"]:
            raise StoreError(f"{self.directory}: image ids do not match num_rows")
        self.shards: dict[str, list[np.memmap]] = {name: [] for name in self.models}
        for shard in m["shards"]:
            for name, spec in self.models.items():
                self.shards[name].append(self._open_shard(shard, name, spec, verify))
        self.offsets = np.cumsum([0] + [s["rows"] for s in m["shards"]])

    def _open_shard(self, shard, name, spec, verify):
        entry = shard["files"].get(name)
        if entry is None:
            raise StoreError(f"{self.directory}: a shard lists no file for model {name!r}")
        path = resolve_shard(self.directory, entry.get("path"))
        if not os.path.isfile(path):
            raise StoreError(f"missing shard {path} (listed in the manifest)")
        dtype = np.dtype(DTYPES[spec["dtype"]])
        expected = shard["rows"] * spec["width"] * dtype.itemsize
        if os.path.getsize(path) != expected:
            raise StoreError(
                f"shard {path} has {os.path.getsize(path)} bytes, the manifest implies {expected}"
            )
        if verify:
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                while block := f.read(1 << 22):
                    digest.update(block)
            if digest.hexdigest() != entry["sha256"]:
                raise StoreError(f"checksum mismatch for shard {path}: the file was modified")
        if shard["rows"] == 0:
            return np.zeros((0, spec["width"]), dtype)
        return np.memmap(path, dtype=dtype, mode="r", shape=(shard["rows"], spec["width"]))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.models)

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(int(self.models[n]["width"]) for n in self.names)

    @property
    def num_rows(self) -> int:
        return int(self.manifest["num_rows"])

    def pieces(self, name: str, start: int, stop: int) -> Iterator[np.ndarray]:
        """Rows ``[start, stop)`` of model ``name`` as stored (no copy, no upcast): views of the
        shards that hold them, in order, ``[rows_i, width]`` each."""
        bounds = np.clip(self.offsets, start, stop)
        for i, shard in enumerate(self.shards[name]):
            lo, hi = bounds[i], bounds[i + 1]
            if hi > lo:
                yield shard[lo - self.offsets[i] : hi - self.offsets[i]]

    def read(self, name: str, indices: np.ndarray) -> np.ndarray:
        """Raw rows of model ``name`` at sorted ``indices``: float32 ``[len(indices), width]``."""
        indices = np.asarray(indices, np.int64)
        out = np.empty((len(indices), self.models[name]["width"]), np.float32)
        bounds = np.searchsorted(indices, self.offsets)
        for i, shard in enumerate(self.shards[name]):
            lo, hi = bounds[i], bounds[i + 1]
            if hi > lo:
                out[lo:hi] = shard[indices[lo:hi] - self.offsets[i]]
        return out

    def array(self, name: str) -> np.ndarray:
        """All rows of one model in memory, float32 ``[num_rows, width]`` (small stores)."""
        return self.read(name, np.arange(self.num_rows))


def write_store(
    directory,
    arrays: Mapping[str, np.ndarray],
    grid: Sequence[int],
    image_ids: Sequence[str],
    chunk_images: int = 64,
    dtype: str = "float32",
    meta: Mapping[str, Any] | None = None,
) -> Store:
    """Write in-memory ``{name: [images * h * w, width]}`` as a complete store (tests, tools)."""
    specs = [ModelSpec(name=n, width=int(a.shape[1]), dtype=dtype) for n, a in arrays.items()]
    writer = StoreWriter(directory, specs, grid, meta or {})
    per = int(np.prod(grid))
    for start in range(0, len(image_ids), chunk_images):
        ids = image_ids[start : start + chunk_images]
        rows = slice(start * per, (start + len(ids)) * per)
        writer.append(ids, {n: a[rows] for n, a in arrays.items()})
    stats = Standardisation.fit(dict(arrays))
    writer.finish(stats.mean, stats.std, stats.epsilon)
    return Store(directory)
