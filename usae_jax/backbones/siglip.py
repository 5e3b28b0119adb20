"""A Flax SigLIP vision tower (transformers has none) and its converter from PyTorch weights.

The module mirrors transformers' ``SiglipVisionTransformer`` up to ``post_layernorm``: a patch
convolution (no class token), a learned position table, pre-norm blocks with tanh-GELU MLPs, and
the final LayerNorm. The attention-pooling head (``head.*``) gives one vector per image and is not
ported: extraction wants patch tokens.

Parameter names follow the torch keys (``layers.3`` -> ``layers_3``; Linear ``weight`` ->
transposed ``kernel``; LayerNorm ``weight`` -> ``scale``), so conversion is a rename.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from usae_jax.backbones import base, weights

ACTIVATIONS = {
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
}


class SiglipBlock(nn.Module):
    """One pre-norm transformer block: ``x + attn(ln1(x))``, then ``x + mlp(ln2(x))``."""

    config: Any

    @nn.compact
    def __call__(self, x):  # [B, T, C]
        cfg = self.config
        heads, dim = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
        eps = cfg.layer_norm_eps
        h = nn.LayerNorm(epsilon=eps, name="layer_norm1")(x)

        def split(name):
            y = nn.Dense(cfg.hidden_size, name=name)(h)
            return y.reshape(*y.shape[:2], heads, dim)

        with jax.named_scope("self_attn"):
            q, k, v = split("q_proj"), split("k_proj"), split("v_proj")
            logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) * dim**-0.5
            attn = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, axis=-1), v)
            attn = attn.reshape(*attn.shape[:2], cfg.hidden_size)
            x = x + nn.Dense(cfg.hidden_size, name="out_proj")(attn)
        h = nn.LayerNorm(epsilon=eps, name="layer_norm2")(x)
        h = nn.Dense(cfg.intermediate_size, name="fc1")(h)
        h = nn.Dense(cfg.hidden_size, name="fc2")(ACTIVATIONS[cfg.hidden_act](h))
        return x + h


class FlaxSiglipVision(nn.Module):
    """``pixels [B, S, S, 3] -> (hidden_states (num_layers + 1) x [B, T, C], last [B, T, C])``."""

    config: Any

    @nn.compact
    def __call__(self, pixels):
        cfg = self.config
        p = cfg.patch_size
        x = nn.Conv(cfg.hidden_size, (p, p), strides=(p, p), padding="VALID",
                    name="patch_embedding")(pixels)  # fmt: skip
        x = x.reshape(x.shape[0], -1, cfg.hidden_size)
        table = nn.Embed((cfg.image_size // p) ** 2, cfg.hidden_size, name="position_embedding")
        x = x + table.embedding[None]
        states = [x]
        for i in range(cfg.num_hidden_layers):
            x = SiglipBlock(cfg, name=f"layers_{i}")(x)
            states.append(x)
        last = nn.LayerNorm(epsilon=cfg.layer_norm_eps, name="post_layernorm")(x)
        return tuple(states), last


def _flax_key(torch_key: str) -> tuple[tuple[str, ...], str]:
    parts = torch_key.split(".")
    parts = [p for p in parts if p not in ("vision_model", "embeddings", "encoder", "mlp")]
    parts = [p for p in parts if p != "self_attn"]
    out = []
    for part in parts:
        if out and out[-1] == "layers" and part.isdigit():
            out[-1] = f"layers_{part}"
        else:
            out.append(part)
    return tuple(out[:-1]), out[-1]


def params_from_torch(config: Any, state_dict: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Flax params of :class:`FlaxSiglipVision` from a torch ``SiglipVisionModel`` (or
    ``SiglipModel``) state dict; ``head.*``, text-tower and buffer keys are ignored.

    Raises:
      ValueError: naming missing/unexpected parameters or a shape mismatch.
    """
    reference = flatten_dict(
        jax.eval_shape(
            FlaxSiglipVision(config).init,
            jax.random.key(0),
            jnp.zeros((1, config.image_size, config.image_size, 3)),
        )["params"]
    )
    converted = {}
    for key, value in state_dict.items():
        if key.startswith("text_model.") or ".head." in f".{key}" or key.endswith(weights.BUFFERS):
            continue
        if key in ("logit_scale", "logit_bias"):
            continue
        path, leaf = _flax_key(key)
        value = np.asarray(value, np.float32)
        if path[-1] == "position_embedding":
            leaf = "embedding"
        elif leaf == "weight" and value.ndim == 4:
            leaf, value = "kernel", value.transpose(2, 3, 1, 0)
        elif leaf == "weight" and value.ndim == 2:
            leaf, value = "kernel", value.T
        elif leaf == "weight":
            leaf = "scale"
        converted[(*path, leaf)] = value
    missing = sorted("/".join(k) for k in set(reference) - set(converted))
    unexpected = sorted("/".join(k) for k in set(converted) - set(reference))
    if missing or unexpected:
        raise ValueError(f"SigLIP checkpoint mismatch: missing {missing}, unexpected {unexpected}")
    for k, v in converted.items():
        if v.shape != reference[k].shape:
            raise ValueError(f"SigLIP {'/'.join(k)}: shape {v.shape} != {reference[k].shape}")
    return unflatten_dict({k: jnp.asarray(v) for k, v in converted.items()})


def siglip_backbone(config: Any, state_dict, ident, mean=base.HALF, std=base.HALF):
    """A :class:`~usae_jax.backbones.base.VisionBackbone` from a ``SiglipVisionConfig``."""
    module = FlaxSiglipVision(config)
    return base.VisionBackbone(
        name="siglip",
        identity=dict(ident),
        image_size=config.image_size,
        patch_size=config.patch_size,
        width=config.hidden_size,
        num_layers=config.num_hidden_layers,
        num_prefix=0,
        mean=tuple(mean),
        std=tuple(std),
        forward=lambda params, pixels: module.apply({"params": params}, pixels),
        params=params_from_torch(config, state_dict),
    )


def load_siglip(directory: str | os.PathLike) -> base.VisionBackbone:
    """SigLIP vision tower from a local ``SiglipVisionModel``/``SiglipModel`` directory."""
    import transformers as tf

    with open(weights.require_file(os.path.join(directory, "config.json"), "model config")) as f:
        cfg = json.load(f)
    vision = cfg.get("vision_config", cfg) if cfg.get("model_type") == "siglip" else cfg
    config = tf.SiglipVisionConfig.from_dict(vision)
    path = weights.find_checkpoint(directory)
    ident = weights.identity(path, format="hf", model_type="siglip_vision_model")
    return siglip_backbone(config, weights.read_state_dict(path), ident)
