"""Read torch ``.pth`` state dicts with numpy only (no torch), legacy and zip formats.

Only plain state dicts are read: nested dicts/OrderedDicts of dense tensors and plain Python
values. Unpickling is restricted to a short list of globals (the same spirit as torch's
``weights_only=True``), so a file cannot run code.

Formats:
* legacy (torch < 1.6, ``_use_new_zipfile_serialization=False``): four pickles (magic number,
  protocol version, system info, the object with storages as persistent ids), a pickled list of
  storage keys, then per key an int64 element count and the raw little-endian bytes;
* zip (torch >= 1.6): ``<archive>/data.pkl`` with storages as persistent ids whose bytes are the
  members ``<archive>/data/<key>``.
"""

from __future__ import annotations

import collections
import os
import pickle
import zipfile
from typing import Any, BinaryIO

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _Storage:
    """A storage whose bytes arrive after unpickling (legacy) or from a zip member."""

    def __init__(self, dtype, numel: int):
        self.dtype = np.dtype(dtype)
        self.numel = numel
        self.data: np.ndarray | None = None


class _Tensor:
    """A tensor whose storage may not be filled yet; :meth:`array` builds the numpy view."""

    def __init__(self, storage: _Storage, offset: int, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), stride

    def array(self) -> np.ndarray:
        data = self.storage.data
        if data is None:
            raise ValueError("a tensor's storage was never filled: truncated or corrupt file")
        need = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride, strict=True))
        if all(self.size) and need >= data.size:
            raise ValueError(f"tensor of size {self.size} overruns its storage ({data.size})")
        item = data.itemsize
        view = np.lib.stride_tricks.as_strided(
            data[self.offset :], self.size, tuple(s * item for s in self.stride)
        )
        return np.array(view)  # a contiguous copy


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, hooks=None, meta=None):
    del requires_grad, hooks, meta
    return _Tensor(storage, offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, hooks=None):
    del requires_grad, hooks
    return data


class _StorageType:
    def __init__(self, name: str):
        self.dtype = STORAGE_DTYPES[name]


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, storages: dict[str, _Storage]):
        super().__init__(file)
        self.storages = storages

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return _rebuild_parameter
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(
            f"{module}.{name} is not allowed in a weights file (only plain state dicts are read)"
        )

    def persistent_load(self, pid):
        kind = pid[0].decode() if isinstance(pid[0], bytes) else pid[0]
        if kind != "storage":
            raise pickle.UnpicklingError(f"unsupported persistent id {pid[0]!r}")
        storage_type, key = pid[1], str(pid[2])
        numel = pid[4]
        view = pid[5] if len(pid) > 5 else None
        if view is not None:
            raise pickle.UnpicklingError("storage views (pre-1.0 torch files) are not supported")
        if key not in self.storages:
            self.storages[key] = _Storage(storage_type.dtype, numel)
        return self.storages[key]


def _materialise(obj: Any) -> Any:
    if isinstance(obj, _Tensor):
        return obj.array()
    if isinstance(obj, dict):
        return type(obj)((k, _materialise(v)) for k, v in obj.items())
    return obj


def _load_legacy(f: BinaryIO) -> Any:
    magic = pickle.load(f)
    if magic != LEGACY_MAGIC:
        raise ValueError("not a torch file: bad magic number")
    if pickle.load(f) != 1001:
        raise ValueError("unsupported legacy torch protocol version")
    info = pickle.load(f)
    if not info.get("little_endian", True):
        raise ValueError("big-endian torch files are not supported")
    storages: dict[str, _Storage] = {}
    result = _Unpickler(f, storages).load()
    for key in pickle.load(f):
        storage = storages[str(key)]
        count = int(np.frombuffer(f.read(8), "<i8")[0])
        raw = f.read(count * storage.dtype.itemsize)
        if len(raw) != count * storage.dtype.itemsize:
            raise ValueError(f"storage {key}: file ends early")
        storage.data = np.frombuffer(raw, storage.dtype.newbyteorder("<"))
    return _materialise(result)


def _load_zip(path: str) -> Any:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkl) != 1:
            raise ValueError(f"{path}: expected one data.pkl in the zip, found {pkl}")
        prefix = pkl[0][: -len("data.pkl")]
        storages: dict[str, _Storage] = {}
        with archive.open(pkl[0]) as f:
            result = _Unpickler(f, storages).load()
        for key, storage in storages.items():
            raw = archive.read(f"{prefix}data/{key}")
            storage.data = np.frombuffer(raw, storage.dtype.newbyteorder("<"))
    return _materialise(result)


def load(path: str | os.PathLike) -> Any:
    """The object in a torch file, tensors as numpy arrays (dtype of the file).

    Raises:
      FileNotFoundError: no such file.
      ValueError / pickle.UnpicklingError: not a plain torch state dict.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"torch checkpoint not found: {os.path.abspath(path)}")
    if zipfile.is_zipfile(path):
        return _load_zip(path)
    with open(path, "rb") as f:
        return _load_legacy(f)


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """``{key: float32 array}`` of a ``.pth`` state dict (non-float entries such as
    ``num_batches_tracked`` are dropped)."""
    obj = load(path)
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(obj).__name__}")
    return {
        k: np.asarray(v, np.float32)
        for k, v in obj.items()
        if isinstance(v, np.ndarray) and np.issubdtype(v.dtype, np.floating)
    }
