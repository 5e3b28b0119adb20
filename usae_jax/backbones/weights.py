"""Offline weight files: find, read, fingerprint, convert torch-named state dicts to Flax.

Nothing here downloads. A state dict is ``{torch_key: float32 numpy array}`` in the naming of a
transformers PyTorch model; family-specific converters (timm, torch.hub, ONNX) first rename their
keys into that naming, then :func:`flax_params_from_torch` does the rest.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

BUFFERS = ("position_ids", "num_batches_tracked")
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


def flax_params_from_torch(
    flax_model: Any, state_dict: Mapping[str, np.ndarray], unused: Iterable[str] = ()
) -> dict[str, Any]:
    """Convert a transformers-named torch state dict into ``flax_model``'s params.

    Args:
      flax_model: an initialised transformers ``Flax*Model`` of the right config.
      state_dict: ``{torch_key: array}``.
      unused: regexes of Flax parameter paths (joined with ``/``) that may be absent from the
        state dict because extraction never uses them (poolers, mask tokens); they keep their
        random initial values.

    Raises:
      ValueError: naming the missing and unexpected parameters, or a shape mismatch.
    """
    from transformers.modeling_flax_pytorch_utils import convert_pytorch_state_dict_to_flax

    sd = {
        k: np.asarray(v, np.float32)
        for k, v in state_dict.items()
        if not k.endswith(BUFFERS)  # non-learned torch buffers
    }
    converted = flatten_dict(convert_pytorch_state_dict_to_flax(sd, flax_model))
    reference = flatten_dict(flax_model.params)
    prefix = flax_model.base_model_prefix
    if (
        reference
        and all(k[0] == prefix for k in converted)
        and prefix not in {k[0] for k in reference}
    ):
        converted = {k[1:]: v for k, v in converted.items()}
    unused_re = [re.compile(p) for p in unused]
    missing = [
        "/".join(k)
        for k in reference
        if k not in converted and not any(r.search("/".join(k)) for r in unused_re)
    ]
    unexpected = ["/".join(k) for k in converted if k not in reference]
    if missing or unexpected:
        raise ValueError(
            f"checkpoint does not match {type(flax_model).__name__}: "
            f"missing {missing[:8]}{'...' if len(missing) > 8 else ''}, "
            f"unexpected {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}"
        )
    merged = dict(reference)
    for key, value in converted.items():
        if value.shape != reference[key].shape:
            raise ValueError(f"{'/'.join(key)}: shape {value.shape} != {reference[key].shape}")
        merged[key] = value
    return unflatten_dict(merged)


def _cubic_weights(t: np.ndarray, a: float) -> np.ndarray:
    """Keys cubic convolution weights of the 4 neighbours for fractional offsets ``t``."""
    d = np.stack([t + 1, t, 1 - t, 2 - t], axis=-1)
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return np.where(d <= 1, near, far)


def _resize_axis(x: np.ndarray, size: int, axis: int, a: float) -> np.ndarray:
    n = x.shape[axis]
    src = (np.arange(size, dtype=np.float64) + 0.5) * (n / size) - 0.5
    base = np.floor(src)
    w = _cubic_weights(src - base, a)  # [size, 4]
    idx = np.clip(base[:, None].astype(int) + np.arange(-1, 3)[None], 0, n - 1)
    moved = np.moveaxis(x, axis, 0)
    out = np.einsum("sk,sk...->s...", w, moved[idx])
    return np.moveaxis(out, 0, axis)


def resize_bicubic_torch(table: np.ndarray, height: int, width: int, a: float = -0.75):
    """Resize ``[H, W, C]`` like ``torch.nn.functional.interpolate(mode="bicubic",
    align_corners=False)`` with an explicit output size (Keys a = -0.75, clamped borders).

    Returns:
      float32 ``[height, width, C]`` (computed in float64).
    """
    out = _resize_axis(np.asarray(table, np.float64), height, 0, a)
    return _resize_axis(out, width, 1, a).astype(np.float32)
