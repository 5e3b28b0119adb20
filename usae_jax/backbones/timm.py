"""Converters from timm and torch.hub checkpoint key names to transformers naming.

The paper's three backbones come as timm / torch.hub checkpoints. Each converter renames a state
dict (``{key: array}``) into the transformers PyTorch naming and splits fused ``qkv`` projections;
the shared path in ``hf.py`` / ``siglip.py`` then builds the Flax backbone. Nothing downloads:
give the checkpoint file (``.safetensors``, ``.bin``, ``.pth``) that timm/torch.hub saved, e.g.
``~/.cache/torch/hub/checkpoints/dinov2_vits14_pretrain.pth``.

* ``timm_vit``: timm ``vit_base_patch16_224`` (class token, LayerNorm eps 1e-6, mean/std 0.5).
* ``timm_siglip``: timm ``vit_base_patch16_siglip_224`` (no class token, MAP head ignored,
  tanh-GELU, mean/std 0.5).
* ``hub_dinov2``: facebookresearch/dinov2 ``dinov2_vits14`` (position table for 518 px, resized
  once for 224 px with torch-compatible bicubic; ImageNet mean/std).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from usae_jax.backbones import base, hf, siglip, weights

if TYPE_CHECKING:
    pass


def _blocks(sd: Mapping[str, np.ndarray]) -> int:
    return 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k)))


def _split_qkv(out, prefix, names, weight, bias):
    for name, w, b in zip(names, np.split(weight, 3), np.split(bias, 3), strict=True):
        out[f"{prefix}{name}.weight"], out[f"{prefix}{name}.bias"] = w, b


def _common(sd, out, block_prefix, names, norms, mlp):
    """Rename timm-style blocks: ``names`` = q/k/v/proj targets, ``norms`` = (norm1, norm2)."""
    for i in range(_blocks(sd)):
        src, dst = f"blocks.{i}.", block_prefix.format(i)
        _split_qkv(out, dst, names[:3], sd[src + "attn.qkv.weight"], sd[src + "attn.qkv.bias"])
        for leaf in ("weight", "bias"):
            out[f"{dst}{names[3]}.{leaf}"] = sd[f"{src}attn.proj.{leaf}"]
            out[f"{dst}{norms[0]}.{leaf}"] = sd[f"{src}norm1.{leaf}"]
            out[f"{dst}{norms[1]}.{leaf}"] = sd[f"{src}norm2.{leaf}"]
            out[f"{dst}{mlp[0]}.{leaf}"] = sd[f"{src}mlp.fc1.{leaf}"]
            out[f"{dst}{mlp[1]}.{leaf}"] = sd[f"{src}mlp.fc2.{leaf}"]
        if f"{src}ls1.gamma" in sd:
            out[f"{dst}layer_scale1.lambda1"] = sd[f"{src}ls1.gamma"]
            out[f"{dst}layer_scale2.lambda1"] = sd[f"{src}ls2.gamma"]
    return out


def vit_state_dict(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """timm ViT keys -> transformers ``ViTModel`` keys."""
    attn = "attention.attention."
    out = {
        "embeddings.cls_token": sd["cls_token"],
        "embeddings.position_embeddings": sd["pos_embed"],
        "embeddings.patch_embeddings.projection.weight": sd["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": sd["patch_embed.proj.bias"],
        "layernorm.weight": sd["norm.weight"],
        "layernorm.bias": sd["norm.bias"],
    }
    names = (attn + "query", attn + "key", attn + "value", "attention.output.dense")
    return _common(sd, out, "encoder.layer.{}.", names, ("layernorm_before", "layernorm_after"),
                   ("intermediate.dense", "output.dense"))  # fmt: skip


def dinov2_state_dict(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """torch.hub DINOv2 keys -> transformers ``Dinov2Model`` keys."""
    attn = "attention.attention."
    out = {
        "embeddings.cls_token": sd["cls_token"],
        "embeddings.mask_token": sd["mask_token"].reshape(1, -1),
        "embeddings.position_embeddings": sd["pos_embed"],
        "embeddings.patch_embeddings.projection.weight": sd["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": sd["patch_embed.proj.bias"],
        "layernorm.weight": sd["norm.weight"],
        "layernorm.bias": sd["norm.bias"],
    }
    names = (attn + "query", attn + "key", attn + "value", "attention.output.dense")
    return _common(sd, out, "encoder.layer.{}.", names, ("norm1", "norm2"), ("mlp.fc1", "mlp.fc2"))


def siglip_state_dict(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """timm SigLIP ViT keys -> transformers ``SiglipVisionModel`` keys (``attn_pool`` dropped)."""
    v = "vision_model."
    out = {
        v + "embeddings.position_embedding.weight": sd["pos_embed"][0],
        v + "embeddings.patch_embedding.weight": sd["patch_embed.proj.weight"],
        v + "embeddings.patch_embedding.bias": sd["patch_embed.proj.bias"],
        v + "post_layernorm.weight": sd["norm.weight"],
        v + "post_layernorm.bias": sd["norm.bias"],
    }
    names = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj")
    return _common(sd, out, v + "encoder.layers.{}.", names, ("layer_norm1", "layer_norm2"),
                   ("mlp.fc1", "mlp.fc2"))  # fmt: skip


def _geometry(sd, prefix_tokens):
    width = sd["patch_embed.proj.weight"].shape[0]
    patch = sd["patch_embed.proj.weight"].shape[-1]
    side = int(round(np.sqrt(sd["pos_embed"].shape[1] - prefix_tokens)))
    mlp = sd["blocks.0.mlp.fc1.weight"].shape[0]
    return dict(hidden_size=width, patch_size=patch, intermediate_size=mlp,
                num_hidden_layers=_blocks(sd)), side  # fmt: skip


def vit_from_state_dict(sd, ident, num_heads: int = 12) -> base.VisionBackbone:
    """timm ``vit_base_patch16_224``-style ViT (heads are not in the state dict: 12 for B/16)."""
    import transformers as tf  # optional: only these loaders need it

    geo, side = _geometry(sd, 1)
    config = tf.ViTConfig(**geo, num_attention_heads=num_heads, image_size=side * geo["patch_size"],
                          layer_norm_eps=1e-6, hidden_act="gelu")  # fmt: skip
    return hf.vision_from_state_dict("vit", config, vit_state_dict(sd), ident, base.HALF, base.HALF)


def dinov2_from_state_dict(sd, ident, num_heads: int = 6, image_size: int = 224):
    """torch.hub ``dinov2_vits14``-style DINOv2 run at ``image_size`` (6 heads for ViT-S)."""
    import transformers as tf  # optional: only these loaders need it

    geo, _ = _geometry(sd, 1)
    geo.pop("intermediate_size")
    config = tf.Dinov2Config(**geo, num_attention_heads=num_heads, image_size=image_size,
                             layerscale_value=1.0, layer_norm_eps=1e-6)  # fmt: skip
    return hf.vision_from_state_dict("dinov2", config, dinov2_state_dict(sd), ident)


def siglip_from_state_dict(sd, ident, num_heads: int = 12) -> base.VisionBackbone:
    """timm SigLIP ViT-B/16 (``vit_base_patch16_siglip_224``; 12 heads)."""
    import transformers as tf  # optional: only these loaders need it

    geo, side = _geometry(sd, 0)
    config = tf.SiglipVisionConfig(**geo, num_attention_heads=num_heads,
                                   image_size=side * geo["patch_size"], layer_norm_eps=1e-6,
                                   hidden_act="gelu_pytorch_tanh")  # fmt: skip
    return siglip.siglip_backbone(config, siglip_state_dict(sd), ident)


def _load(path, converter, fmt, **kw):
    sd = weights.read_state_dict(weights.require_file(path, f"{fmt} checkpoint"))
    return converter(sd, weights.identity(path, format=fmt), **kw)


def load_timm_vit(path, num_heads: int = 12) -> base.VisionBackbone:
    """timm ``vit_base_patch16_224`` from a local checkpoint file."""
    return _load(path, vit_from_state_dict, "timm_vit", num_heads=num_heads)


def load_timm_siglip(path, num_heads: int = 12) -> base.VisionBackbone:
    """timm SigLIP ViT-B/16 from a local checkpoint file."""
    return _load(path, siglip_from_state_dict, "timm_siglip", num_heads=num_heads)


def load_hub_dinov2(path, num_heads: int = 6, image_size: int = 224) -> base.VisionBackbone:
    """torch.hub ``dinov2_vits14`` from a local checkpoint file, at ``image_size`` px."""
    return _load(path, dinov2_from_state_dict, "hub_dinov2", num_heads=num_heads,
                 image_size=image_size)  # fmt: skip
