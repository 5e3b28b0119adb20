"""Model families: how a Hugging Face ``config.json`` or a timm / torch.hub state dict becomes
one of our configs (:class:`~usae_jax.backbones.transformer.VisionConfig` /
:class:`~usae_jax.backbones.transformer.TextConfig`).

transformers is never imported: :data:`HF_FAMILIES` holds, per ``model_type``, the key table, the
keys extraction ignores, transformers' defaults for fields a ``config.json`` may omit, and the
fields fixed for the family; timm / torch.hub geometry is read from the state dict's shapes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from usae_jax.backbones import base, weights
from usae_jax.backbones import transformer as tr
from usae_jax.backbones.key_tables import (
    HF_BERT_KEYS,
    HF_CLIP_TEXT_KEYS,
    HF_CLIP_VISION_KEYS,
    HF_DINOV2_KEYS,
    HF_SIGLIP_KEYS,
    HF_VIT_KEYS,
    Rule,
)
from usae_jax.validation import require

HALF, IMAGENET = (base.HALF, base.HALF), (base.IMAGENET_MEAN, base.IMAGENET_STD)
CLIP_STATS = (base.CLIP_MEAN, base.CLIP_STD)
ACTIVATION_NAMES = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "quick_gelu": "quick_gelu",
    "relu": "relu",
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Family:
    """How one Hugging Face ``model_type`` maps onto our configs and parameters."""

    name: str
    """Backbone name (``vit``, ``dinov2``, ``clip``, ``siglip``, ``bert``, ...)."""
    kind: str
    """``vision`` or ``text``."""
    keys: tuple[Rule, ...]
    """The key table."""
    ignore: tuple[str, ...] = ()
    """Regexes of (prefix-stripped) keys extraction never uses."""
    prefixes: tuple[str, ...] = ()
    """Key prefixes stripped first (task models, two-tower models)."""
    defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """transformers' config defaults for fields a ``config.json`` may omit."""
    block: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """Our :class:`~usae_jax.backbones.transformer.BlockConfig` fields fixed for the family."""
    fixed: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """Our vision / text config fields fixed for the family."""
    positions_after_pad: bool = False
    """Position ids start at ``pad_token_id + 1`` (RoBERTa, XLM-R)."""
    stats: tuple[tuple[float, ...], tuple[float, ...]] = HALF
    """Default pixel mean/std (vision; ``preprocessor_config.json`` overrides)."""

    def __post_init__(self):
        require(self.kind in ("vision", "text"), "kind", self.kind, "'vision' or 'text'")


_VISION_DEFAULTS = dict(
    hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_channels=3, image_size=224
)
_TEXT_DEFAULTS = dict(
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    hidden_act="gelu",
    max_position_embeddings=512,
)
_CLIP_IGNORE = (
    r"text_model\..*",
    r"vision_model\..*",
    r"(visual|text)_projection\..*",
    r"logit_(scale|bias)",
)
HF_FAMILIES: dict[str, Family] = {
    "vit": Family(
        name="vit", kind="vision", keys=HF_VIT_KEYS, prefixes=("vit.",),
        ignore=(r"pooler\..*", r"embeddings\.mask_token", r"classifier\..*"),
        defaults=dict(_VISION_DEFAULTS, intermediate_size=3072, hidden_act="gelu",
                      layer_norm_eps=1e-12, patch_size=16, qkv_bias=True),
    ),
    "dinov2": Family(
        name="dinov2", kind="vision", keys=HF_DINOV2_KEYS, prefixes=("dinov2.",),
        ignore=(r"embeddings\.mask_token", r"classifier\..*"),
        defaults=dict(_VISION_DEFAULTS, mlp_ratio=4, hidden_act="gelu", layer_norm_eps=1e-6,
                      patch_size=14, use_swiglu_ffn=False, qkv_bias=True),
        block=dict(layer_scale=True), fixed=dict(interpolation="bicubic"), stats=IMAGENET,
    ),
    "dinov2_with_registers": Family(
        name="dinov2", kind="vision", keys=HF_DINOV2_KEYS, prefixes=("dinov2_with_registers.",),
        ignore=(r"embeddings\.mask_token", r"classifier\..*"),
        defaults=dict(_VISION_DEFAULTS, mlp_ratio=4, hidden_act="gelu", layer_norm_eps=1e-6,
                      patch_size=16, num_register_tokens=4, use_swiglu_ffn=False,
                      qkv_bias=True),
        block=dict(layer_scale=True), fixed=dict(interpolation="bicubic_antialias"),
        stats=IMAGENET,
    ),
    "clip_vision_model": Family(
        name="clip", kind="vision", keys=HF_CLIP_VISION_KEYS, prefixes=("vision_model.",),
        ignore=(r"post_layernorm\..*", *_CLIP_IGNORE),
        defaults=dict(_VISION_DEFAULTS, intermediate_size=3072, hidden_act="quick_gelu",
                      layer_norm_eps=1e-5, patch_size=32),
        fixed=dict(patch_bias=False, pre_norm=True, final_norm=False), stats=CLIP_STATS,
    ),
    "siglip_vision_model": Family(
        name="siglip", kind="vision", keys=HF_SIGLIP_KEYS, prefixes=("vision_model.",),
        ignore=(r"head\..*", *_CLIP_IGNORE),
        defaults=dict(_VISION_DEFAULTS, intermediate_size=3072, hidden_act="gelu_pytorch_tanh",
                      layer_norm_eps=1e-6, patch_size=16),
        fixed=dict(class_token=False),
    ),
    "bert": Family(
        name="bert", kind="text", keys=HF_BERT_KEYS, prefixes=("bert.",),
        ignore=(r"pooler\..*", r"cls\..*"),
        defaults=dict(_TEXT_DEFAULTS, vocab_size=30522, type_vocab_size=2,
                      layer_norm_eps=1e-12, pad_token_id=0),
        block=dict(norm_first=False),
    ),
    "xlm-roberta": Family(
        name="xlm_roberta", kind="text", keys=HF_BERT_KEYS, prefixes=("roberta.",),
        ignore=(r"pooler\..*", r"lm_head\..*"),
        defaults=dict(_TEXT_DEFAULTS, vocab_size=30522, type_vocab_size=2,
                      layer_norm_eps=1e-12, pad_token_id=1),
        block=dict(norm_first=False), positions_after_pad=True,
    ),
    "clip_text_model": Family(
        name="clip_text", kind="text", keys=HF_CLIP_TEXT_KEYS, prefixes=("text_model.",),
        ignore=_CLIP_IGNORE,
        defaults=dict(_TEXT_DEFAULTS, vocab_size=49408, hidden_size=512, intermediate_size=2048,
                      num_attention_heads=8, max_position_embeddings=77,
                      hidden_act="quick_gelu", layer_norm_eps=1e-5),
        fixed=dict(embed_norm=False, final_norm=True, causal=True),
    ),
}  # fmt: skip
HF_FAMILIES["roberta"] = dataclasses.replace(
    HF_FAMILIES["xlm-roberta"],
    name="roberta",
    defaults=dict(HF_FAMILIES["xlm-roberta"].defaults, vocab_size=50265),
)
# Two-tower folders: model_type -> (sub-config key, tower model_type) per kind.
TWO_TOWER = {
    "clip": {
        "vision": ("vision_config", "clip_vision_model"),
        "text": ("text_config", "clip_text_model"),
    },
    "siglip": {"vision": ("vision_config", "siglip_vision_model")},
}


# ------------------------------------------------------------------ configs from config.json
def _activation(name: str) -> str:
    if name not in ACTIVATION_NAMES:
        raise ValueError(f"unsupported hidden_act {name!r}; supported: {sorted(ACTIVATION_NAMES)}")
    return ACTIVATION_NAMES[name]


def _get(cfg: Mapping[str, Any], family: Family, field: str):
    if field in cfg and cfg[field] is not None:
        return cfg[field]
    if field in family.defaults:
        return family.defaults[field]
    raise ValueError(f"config.json of a {family.name} model lacks {field!r}")


def _block(cfg: Mapping[str, Any], family: Family) -> tr.BlockConfig:
    if cfg.get("use_swiglu_ffn"):
        raise ValueError("DINOv2 with a SwiGLU MLP (giant) is not supported")
    width = _get(cfg, family, "hidden_size")
    if "mlp_ratio" in family.defaults:
        mlp = int(width * _get(cfg, family, "mlp_ratio"))
    else:
        mlp = _get(cfg, family, "intermediate_size")
    qkv = _get(cfg, family, "qkv_bias") if "qkv_bias" in family.defaults else True
    return tr.BlockConfig(
        width=width,
        heads=_get(cfg, family, "num_attention_heads"),
        mlp_width=mlp,
        activation=_activation(_get(cfg, family, "hidden_act")),
        eps=float(_get(cfg, family, "layer_norm_eps")),
        qkv_bias=qkv,
        **family.block,
    )


def vision_config(cfg: Mapping[str, Any], family: Family, image_size: int | None = None):
    """Our :class:`~usae_jax.backbones.transformer.VisionConfig` from an HF config dict.

    Args:
      image_size: run at this size instead of the checkpoint's (families whose position table
        interpolates only, e.g. DINOv2).
    """
    native = _get(cfg, family, "image_size")
    patch = _get(cfg, family, "patch_size")
    if image_size not in (None, native) and family.fixed.get("interpolation", "none") == "none":
        raise ValueError(
            f"{family.name}: only families with an interpolated position table "
            f"run at another image_size than their {native}"
        )
    return tr.VisionConfig(
        block=_block(cfg, family),
        num_layers=_get(cfg, family, "num_hidden_layers"),
        image_size=image_size or native,
        patch_size=patch,
        channels=_get(cfg, family, "num_channels"),
        registers=cfg.get("num_register_tokens", family.defaults.get("num_register_tokens", 0)),
        position_grid=native // patch,
        **family.fixed,
    )


def text_config(cfg: Mapping[str, Any], family: Family) -> tr.TextConfig:
    """Our :class:`~usae_jax.backbones.transformer.TextConfig` from an HF config dict."""
    if cfg.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"position_embedding_type {cfg['position_embedding_type']!r} unsupported")
    offset = int(_get(cfg, family, "pad_token_id")) + 1 if family.positions_after_pad else 0
    types = _get(cfg, family, "type_vocab_size") if "type_vocab_size" in family.defaults else 0
    return tr.TextConfig(
        block=_block(cfg, family),
        num_layers=_get(cfg, family, "num_hidden_layers"),
        vocab_size=_get(cfg, family, "vocab_size"),
        max_positions=_get(cfg, family, "max_position_embeddings"),
        type_vocab_size=types,
        position_offset=offset,
        **family.fixed,
    )


def read_hf_config(directory: str | os.PathLike, kind: str) -> tuple[dict[str, Any], Family]:
    """``(config dict, family)`` of a local HF folder for a ``vision`` or ``text`` tower."""
    path = weights.require_file(os.path.join(directory, "config.json"), "model config")
    with open(path) as f:
        cfg = json.load(f)
    model_type = cfg.get("model_type")
    if model_type in TWO_TOWER and kind in TWO_TOWER[model_type]:
        sub, model_type = TWO_TOWER[model_type][kind]
        cfg = cfg.get(sub) or {}
    family = HF_FAMILIES.get(model_type)
    if family is None or family.kind != kind:
        supported = sorted(k for k, f in HF_FAMILIES.items() if f.kind == kind)
        raise ValueError(
            f"{directory}: model_type {model_type!r} is not a supported {kind} "
            f"family ({supported}, or a two-tower {sorted(TWO_TOWER)})"
        )
    return cfg, family


# timm / torch.hub flavours: fixed config fields and pixel statistics (data).
TIMM_FLAVOURS = {
    "timm_vit": dict(fixed=dict(activation="gelu"), stats=HALF),
    "timm_siglip": dict(fixed=dict(activation="gelu_tanh", class_token=False), stats=HALF),
    # facebookresearch/dinov2 hub models: offset 0.1 without antialias; with registers
    # (``*_reg``) antialias and no offset (see its ``hub/backbones.py``).
    "hub_dinov2": dict(
        fixed=dict(activation="gelu", interpolation="bicubic", interpolation_offset=0.1),
        stats=IMAGENET,
    ),
    "hub_dinov2_reg": dict(
        fixed=dict(activation="gelu", interpolation="bicubic_antialias"), stats=IMAGENET
    ),
}


def timm_config(
    sd: Mapping[str, np.ndarray], flavour: str, num_heads: int, image_size: int | None = None
) -> tr.VisionConfig:
    """Geometry from a timm / torch.hub state dict's shapes (heads are not stored in it)."""
    if flavour not in TIMM_FLAVOURS:
        raise ValueError(f"unknown flavour {flavour!r}; use {sorted(TIMM_FLAVOURS)}")
    fixed = dict(TIMM_FLAVOURS[flavour]["fixed"])
    proj = sd["patch_embed.proj.weight"]
    blocks = {int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))}
    if not blocks or "pos_embed" not in sd:
        raise ValueError(f"not a {flavour} state dict: no blocks.N.* or pos_embed keys")
    class_token = fixed.pop("class_token", "cls_token" in sd)
    side = int(round(np.sqrt(sd["pos_embed"].shape[1] - int(class_token))))
    block = tr.BlockConfig(
        width=proj.shape[0],
        heads=num_heads,
        mlp_width=sd["blocks.0.mlp.fc1.weight"].shape[0],
        activation=fixed.pop("activation"),
        eps=1e-6,
        layer_scale="blocks.0.ls1.gamma" in sd,
        qkv_bias="blocks.0.attn.qkv.bias" in sd,
    )
    registers = sd["register_tokens"].shape[1] if "register_tokens" in sd else 0
    return tr.VisionConfig(
        block=block,
        num_layers=max(blocks) + 1,
        image_size=image_size or side * proj.shape[-1],
        patch_size=proj.shape[-1],
        channels=proj.shape[1],
        patch_bias="patch_embed.proj.bias" in sd,
        class_token=class_token,
        registers=registers,
        position_grid=side,
        **fixed,
    )
