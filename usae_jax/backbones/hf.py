"""transformers' Flax classes as backbones: ViT, DINOv2, CLIP vision, BERT, CLIP text.

Weights come from a local directory written by ``save_pretrained`` (``model.safetensors`` or
``pytorch_model.bin``), or from any torch-named state dict (see ``timm.py``, ``onnx_dinov2.py``).
SigLIP lives in ``siglip.py`` (transformers has no Flax SigLIP).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from usae_jax.backbones import base, siglip, weights

# model_type -> (Flax class name and config class name in transformers 4, mean, std, prefix
# tokens, params extraction never uses)
VISION_FAMILIES = {
    "vit": ("FlaxViTModel", "ViTConfig", base.HALF, base.HALF, 1, ("pooler",)),
    "dinov2": (
        "FlaxDinov2Model",
        "Dinov2Config",
        base.IMAGENET_MEAN,
        base.IMAGENET_STD,
        1,
        ("mask_token",),
    ),
    "clip_vision_model": (
        "FlaxCLIPVisionModel",
        "CLIPVisionConfig",
        base.CLIP_MEAN,
        base.CLIP_STD,
        1,
        (),
    ),
}
TEXT_FAMILIES = {
    "bert": ("FlaxBertModel", "BertConfig", ("pooler",)),
    "clip_text_model": ("FlaxCLIPTextModel", "CLIPTextConfig", ()),
}
SHORT_NAMES = {"clip_vision_model": "clip", "clip_text_model": "clip_text"}


def _transformers_class(name: str):
    """``transformers.NAME`` (imported here: transformers 4 is optional, only these loaders use
    its Flax classes)."""
    import transformers

    return getattr(transformers, name)


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    """``config.json`` of a local model directory, or a clear error naming the file."""
    path = weights.require_file(os.path.join(directory, "config.json"), "model config")
    with open(path) as f:
        return json.load(f)


def _preprocessor_stats(directory, mean, std):
    path = os.path.join(directory, "preprocessor_config.json")
    if os.path.isfile(path):
        with open(path) as f:
            pre = json.load(f)
        mean = tuple(pre.get("image_mean", mean))
        std = tuple(pre.get("image_std", std))
    return mean, std


def resize_dinov2_positions(state_dict: dict[str, np.ndarray], patch_size: int, image_size: int):
    """Replace a DINOv2 position table by one pre-resized for ``image_size`` (torch bicubic).

    FlaxDinov2 would otherwise interpolate at run time with JAX's bicubic (Keys a = -0.5), which
    differs from torch (a = -0.75) by up to 4% of the activations with real weights.
    """
    key = "embeddings.position_embeddings"
    key = key if key in state_dict else "dinov2." + key
    table = state_dict[key]  # [1, 1 + n * n, C]
    side = int(round(np.sqrt(table.shape[1] - 1)))
    new = image_size // patch_size
    if side == new:
        return state_dict
    grid = table[0, 1:].reshape(side, side, -1)
    patches = weights.resize_bicubic_torch(grid, new, new).reshape(1, new * new, -1)
    out = dict(state_dict)
    out[key] = np.concatenate([table[:, :1], patches], axis=1)
    return out


def _vision_forward(module):
    def forward(params, pixels):
        out = module.apply({"params": params}, pixels, True, False, True, True)
        return tuple(out.hidden_states), out.last_hidden_state

    return forward


def vision_from_state_dict(
    model_type: str,
    config: Any,
    state_dict: Mapping[str, np.ndarray],
    ident: Mapping[str, Any],
    mean=None,
    std=None,
) -> base.VisionBackbone:
    """Build a vision backbone from a transformers config and a torch-named state dict.

    For DINOv2 the position table is pre-resized to ``config.image_size`` (torch bicubic).
    """
    if model_type not in VISION_FAMILIES:
        raise ValueError(f"unsupported vision model_type {model_type!r}: {sorted(VISION_FAMILIES)}")
    cls_name, _, dmean, dstd, prefix, unused = VISION_FAMILIES[model_type]
    cls = _transformers_class(cls_name)
    if model_type == "dinov2":
        state_dict = resize_dinov2_positions(dict(state_dict), config.patch_size, config.image_size)
        prefix += getattr(config, "num_register_tokens", 0) or 0
    model = cls(config, seed=0)
    params = weights.flax_params_from_torch(model, state_dict, unused)
    return base.VisionBackbone(
        name=SHORT_NAMES.get(model_type, model_type),
        identity=dict(ident),
        image_size=config.image_size,
        patch_size=config.patch_size,
        width=config.hidden_size,
        num_layers=config.num_hidden_layers,
        num_prefix=prefix,
        mean=tuple(mean or dmean),
        std=tuple(std or dstd),
        forward=_vision_forward(model.module),
        params=params,
        hf_config=config,
    )


def load_hf_vision(directory: str | os.PathLike, image_size: int | None = None):
    """A vision backbone from a local ``save_pretrained`` directory (nothing downloads).

    Args:
      directory: holds ``config.json`` and ``model.safetensors`` or ``pytorch_model.bin``
        (SigLIP directories are routed to :mod:`usae_jax.backbones.siglip`).
      image_size: run at this input size instead of the checkpoint's (DINOv2 only: the position
        table is resized once, torch-compatibly).
    """
    cfg = read_config(directory)
    model_type = cfg.get("model_type")
    if model_type in ("siglip_vision_model", "siglip"):
        return siglip.load_siglip(directory)
    if model_type not in VISION_FAMILIES:
        raise ValueError(
            f"{directory}: model_type {model_type!r} is not a supported vision family "
            f"({sorted(VISION_FAMILIES)} or siglip_vision_model)"
        )
    config = _transformers_class(VISION_FAMILIES[model_type][1]).from_dict(cfg)
    if image_size is not None:
        if model_type != "dinov2" and image_size != config.image_size:
            raise ValueError(f"{model_type}: only DINOv2 supports another image_size here")
        config.image_size = image_size
    path = weights.find_checkpoint(directory)
    _, _, dmean, dstd, *_ = VISION_FAMILIES[model_type]
    mean, std = _preprocessor_stats(directory, dmean, dstd)
    return vision_from_state_dict(
        model_type,
        config,
        weights.read_state_dict(path),
        weights.identity(path, format="hf", model_type=model_type),
        mean,
        std,
    )


def text_forward(module, model_type, config):
    def forward(params, input_ids, attention_mask):
        positions = jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
        if model_type == "bert":
            out = module.apply(
                {"params": params},
                input_ids,
                attention_mask,
                jnp.zeros_like(input_ids),
                positions,
                None,
                output_hidden_states=True,
            )
        else:
            out = module.apply(
                {"params": params}, input_ids, attention_mask, positions, True, False, True
            )
        return tuple(out.hidden_states), out.last_hidden_state

    return forward


def load_hf_text(directory: str | os.PathLike, with_tokenizer: bool = True) -> base.TextBackbone:
    """A text backbone (BERT or CLIP text) from a local ``save_pretrained`` directory."""
    import transformers as tf  # optional: only these loaders need it

    cfg = read_config(directory)
    model_type = cfg.get("model_type")
    if model_type not in TEXT_FAMILIES:
        raise ValueError(f"{directory}: model_type {model_type!r} not in {sorted(TEXT_FAMILIES)}")
    cls_name, config_name, unused = TEXT_FAMILIES[model_type]
    cls, config_cls = _transformers_class(cls_name), _transformers_class(config_name)
    config = config_cls.from_dict(cfg)
    path = weights.find_checkpoint(directory)
    model = cls(config, seed=0)
    params = weights.flax_params_from_torch(model, weights.read_state_dict(path), unused)
    tokenizer = tf.AutoTokenizer.from_pretrained(os.fspath(directory)) if with_tokenizer else None
    return base.TextBackbone(
        name=SHORT_NAMES.get(model_type, model_type),
        identity=weights.identity(path, format="hf", model_type=model_type),
        width=config.hidden_size,
        num_layers=config.num_hidden_layers,
        forward=text_forward(model.module, model_type, config),
        params=params,
        tokenizer=tokenizer,
    )


def random_bert(
    tokenizer_from: base.TextBackbone, hidden: int = 256, layers: int = 4, seed: int = 0
) -> base.TextBackbone:
    """A randomly initialised (NOT pretrained) BERT sharing ``tokenizer_from``'s tokenizer.

    A control stream: a different network on the same sentences and the same token ids.
    """
    import transformers as tf  # optional: only these loaders need it

    vocab = len(tokenizer_from.tokenizer)
    config = tf.BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        intermediate_size=4 * hidden,
    )
    model = tf.FlaxBertModel(config, seed=seed)
    return base.TextBackbone(
        name="bert",
        identity={"family": "bert", "weights": f"random init (seed {seed}), not pretrained"},
        width=hidden,
        num_layers=layers,
        forward=text_forward(model.module, "bert", config),
        params=model.params,
        tokenizer=tokenizer_from.tokenizer,
    )
