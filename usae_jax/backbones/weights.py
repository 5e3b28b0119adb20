"""Offline weight files: find, read and fingerprint checkpoints.

Nothing here downloads. A state dict is ``{key: float32 numpy array}`` in torch layout; the
converters (:mod:`usae_jax.backbones.convert`, the CNN modules) map it onto our parameters.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def find_checkpoint(directory: str | os.PathLike, names: Iterable[str] = HF_WEIGHT_FILES) -> str:
    """The first existing weight file of a local model directory, or a clear error."""
    directory = os.fspath(directory)
    names = tuple(names)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"model directory not found: {directory}")
    for name in names:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"no weight file in {directory}: expected one of {', '.join(names)} "
        f"(found {sorted(os.listdir(directory))}); nothing is downloaded, copy the file there"
    )


def require_file(path: str | os.PathLike, what: str) -> str:
    """``path`` as a string if it is a file, else ``FileNotFoundError`` naming ``what``."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: expected the file {os.path.abspath(path)}")
    return path


def package_file(package: str, relative: str, what: str, install: str) -> str:
    """Path of the file ``relative`` (``/``-separated) inside the installed Python ``package``.

    Raises:
      FileNotFoundError: the package is not installed (the message gives ``install``, the pip
        command that installs it) or it lacks the file (the message names ``what``).
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"{package} is not installed: {install} (the {what} are the file "
            f"{package}/{relative} inside it)"
        )
    return require_file(
        os.path.join(spec.submodule_search_locations[0], *relative.split("/")), what
    )


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def identity(path: str | os.PathLike, **extra: Any) -> dict[str, Any]:
    """The checkpoint identity stored in manifests: path, size and sha256, plus ``extra``."""
    path = os.fspath(path)
    return {
        "path": os.path.abspath(path),
        "bytes": os.path.getsize(path),
        "sha256": file_sha256(path),
        **extra,
    }


def _unwrap(obj: Any) -> Mapping[str, Any]:
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            return obj[key]
    return obj


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read ``.safetensors`` (no torch needed) or ``.bin/.pth/.pt`` (torch, weights_only).

    Returns:
      ``{key: float32 array}``; checkpoints wrapped as ``{"model": ...}`` or
      ``{"state_dict": ...}`` are unwrapped.
    """
    path = require_file(path, "checkpoint file")
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        raw = load_file(path)
    else:
        try:
            import torch
        except ImportError as err:
            raise ImportError(
                f"reading {path} needs torch (pip install torch==2.13.0, the CPU wheel); "
                "save the checkpoint as .safetensors to avoid it"
            ) from err
        loaded = _unwrap(torch.load(path, map_location="cpu", weights_only=True))
        raw = {k: v.float().numpy() for k, v in loaded.items() if hasattr(v, "numpy")}
    return {k: np.asarray(v, np.float32) for k, v in raw.items()}
