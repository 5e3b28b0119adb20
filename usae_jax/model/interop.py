"""Bring official PyTorch USAE weights in, send ours out as safetensors.

Official checkpoints (``uni_<Model>_checkpoint_<epoch>.pth``) hold a ``model_state_dict`` per
model with torch key names::

    encoder.final_block.0.weight   [n, d]   Linear weight (y = x W^T + b)
    encoder.final_block.0.bias     [n]
    encoder.final_block.1.weight   [n]      BatchNorm1d scale
    encoder.final_block.1.bias     [n]      BatchNorm1d shift
    encoder.final_block.1.running_mean / running_var [n], num_batches_tracked []
    dictionary._weights            [n, d]   raw dictionary (used row-normalised)

:func:`import_official_model` maps such a mapping of arrays (from ``torch.load`` or from plain
numpy arrays, as in the parity fixture) onto our parameter layout.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import numpy as np

OFFICIAL_KEYS = {
    "kernel": "encoder.final_block.0.weight",
    "bias": "encoder.final_block.0.bias",
    "bn_scale": "encoder.final_block.1.weight",
    "bn_bias": "encoder.final_block.1.bias",
    "running_mean": "encoder.final_block.1.running_mean",
    "running_var": "encoder.final_block.1.running_var",
    "count": "encoder.final_block.1.num_batches_tracked",
    "dictionary": "dictionary._weights",
}


def import_official_model(state_dict: Mapping[str, np.ndarray]) -> tuple[dict, dict]:
    """One model's official state dict -> ``(model_params, batch_stats)`` as numpy arrays.

    Raises ``KeyError`` naming the missing key, ``ValueError`` on inconsistent shapes.
    """
    missing = [key for key in OFFICIAL_KEYS.values() if key not in state_dict]
    if missing:
        raise KeyError(f"official USAE state dict lacks {missing}; has {sorted(state_dict)}")

    def get(key, dtype=np.float32):
        value = state_dict[OFFICIAL_KEYS[key]]
        if hasattr(value, "detach"):  # a torch tensor
            value = value.detach().cpu().numpy()
        return np.asarray(value, dtype)

    weight, dictionary = get("kernel"), get("dictionary")
    if weight.shape != dictionary.shape:
        raise ValueError(
            f"encoder weight {weight.shape} and dictionary {dictionary.shape} disagree; "
            "both should be [concepts, width]"
        )
    params = {
        "encoder": {"kernel": np.ascontiguousarray(weight.T), "bias": get("bias")},
        "batchnorm": {"scale": get("bn_scale"), "bias": get("bn_bias")},
        "dictionary": dictionary,
    }
    stats = {
        "mean": get("running_mean"),
        "var": get("running_var"),
        "count": get("count", np.int32).reshape(()),
    }
    return params, stats


def export_official_model(model_params: Mapping, stats: Mapping) -> dict[str, np.ndarray]:
    """Inverse of :func:`import_official_model`: our arrays -> official key names (numpy)."""
    return {
        OFFICIAL_KEYS["kernel"]: np.asarray(model_params["encoder"]["kernel"]).T.copy(),
        OFFICIAL_KEYS["bias"]: np.asarray(model_params["encoder"]["bias"]),
        OFFICIAL_KEYS["bn_scale"]: np.asarray(model_params["batchnorm"]["scale"]),
        OFFICIAL_KEYS["bn_bias"]: np.asarray(model_params["batchnorm"]["bias"]),
        OFFICIAL_KEYS["running_mean"]: np.asarray(stats["mean"]),
        OFFICIAL_KEYS["running_var"]: np.asarray(stats["var"]),
        OFFICIAL_KEYS["count"]: np.asarray(stats["count"], np.int64),
        OFFICIAL_KEYS["dictionary"]: np.asarray(model_params["dictionary"]),
    }


def load_official_checkpoint(path: str | os.PathLike) -> tuple[dict, dict]:
    """Read an official ``uni_<Model>_checkpoint_<epoch>.pth`` (needs torch; ``weights_only``).

    Returns ``(model_params, batch_stats)`` for that model.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"official checkpoint not found: {path}")
    try:
        import torch
    except ImportError as err:
        raise ImportError(
            "reading .pth checkpoints needs torch: pip install torch==2.13.0 (CPU wheel)"
        ) from err
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt files
        raise ValueError(f"cannot read official checkpoint {path}: {err}") from err
    state = checkpoint.get("model_state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if state is None:
        raise ValueError(f"{path} does not hold a state dict (got {type(checkpoint).__name__})")
    return import_official_model(state)


def import_official(models: Mapping[str, Mapping[str, np.ndarray]]) -> tuple[dict, dict]:
    """Several models' official state dicts ``{name: state_dict}`` -> ``(params, batch_stats)``."""
    params, stats = {}, {}
    for name, state in models.items():
        params[name], stats[name] = import_official_model(state)
    return {"models": params}, stats


def has_official_layout(params: Mapping) -> bool:
    """Whether every model of ``params`` has the official per-model layout (encoder, BatchNorm,
    dictionary): a USAE does; SPARC (no BatchNorm) and a crosscoder (no BatchNorm, decoder
    biases) do not, so they have no official export."""
    return all("batchnorm" in model for model in params["models"].values())


def export_safetensors(params: Mapping, stats: Mapping, directory: str | os.PathLike) -> list[str]:
    """Write ``<directory>/<model>.safetensors`` per model (official key names) + ``usae.json``.

    Returns the written paths. The files load in PyTorch with ``safetensors.torch.load_file``
    straight into the official module's ``load_state_dict``.

    Raises:
      ValueError: the models lack the official layout (:func:`has_official_layout`).
    """
    from safetensors.numpy import save_file

    if not has_official_layout(params):
        raise ValueError(
            "only a USAE has the official per-model layout (encoder, BatchNorm, dictionary); "
            "SPARC and crosscoder parameters have no official export"
        )
    os.makedirs(directory, exist_ok=True)
    paths = []
    for name, model_params in params["models"].items():
        tensors = export_official_model(model_params, stats[name])
        path = os.path.join(directory, f"{name}.safetensors")
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, path)
        paths.append(path)
    meta = {
        name: {
            "num_concepts": int(np.shape(p["dictionary"])[0]),
            "width": int(np.shape(p["dictionary"])[1]),
        }
        for name, p in params["models"].items()
    }
    with open(os.path.join(directory, "usae.json"), "w") as handle:
        json.dump(meta, handle, indent=2)
    return paths


def import_safetensors(directory: str | os.PathLike, names) -> tuple[dict, dict]:
    """Read what :func:`export_safetensors` wrote, for the given model names."""
    from safetensors.numpy import load_file

    states = {}
    for name in names:
        path = os.path.join(directory, f"{name}.safetensors")
        if not os.path.exists(path):
            raise FileNotFoundError(f"no exported weights for model {name!r}: expected {path}")
        states[name] = load_file(path)
    return import_official(states)
