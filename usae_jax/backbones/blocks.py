"""Running the remaining blocks of a vision transformer from a hidden state.

An edit of layer ``l``'s tokens is carried through blocks ``l+1 .. L`` by
:func:`make_block_runner` (transformers Flax ViT / DINOv2 layers), so a concept can be steered
early and read later. :func:`block_runner_for` builds it from a loaded backbone.
"""

from __future__ import annotations

import importlib

import jax
import jax.numpy as jnp

from usae_jax.backbones.base import VisionBackbone

HF_LAYERS = {"vit": "FlaxViTLayer", "dinov2": "FlaxDinov2Layer"}


def make_block_runner(model_type: str, hf_config, backbone_params: dict):
    """``run(hidden [B, tokens, d], start, stop) -> hidden``: blocks ``start+1 .. stop`` of a
    transformers Flax ViT or DINOv2 (``hidden`` = the output of block ``start``, all tokens,
    class token first, as :meth:`VisionBackbone.apply` returns for layer ``str(start)``).

    So an edit at layer ``start`` can be read at layer ``stop`` (``hidden_states[stop]``).
    """
    if model_type not in HF_LAYERS:
        raise ValueError(f"block runner supports {sorted(HF_LAYERS)}, not {model_type!r}")
    module = importlib.import_module(f"transformers.models.{model_type}.modeling_flax_{model_type}")
    layer = getattr(module, HF_LAYERS[model_type])(hf_config)
    blocks = backbone_params["encoder"]["layer"]

    def run(hidden, start: int, stop: int):
        if not 0 <= start <= stop <= hf_config.num_hidden_layers:
            raise ValueError(f"need 0 <= start <= stop <= {hf_config.num_hidden_layers}")
        for index in range(start, stop):
            hidden = layer.apply({"params": blocks[str(index)]}, hidden, True, False)[0]
        return hidden

    return jax.jit(run, static_argnums=(1, 2))


def carry_edit(backbone, run_blocks, hidden, start: int, stops, delta) -> dict:
    """Add ``delta`` (raw units, broadcastable to ``[B, tokens, d]``) to the patch tokens of
    ``hidden`` ``[B, prefix + tokens, d]`` (layer ``start``, all tokens) and run the remaining
    blocks: ``{stop: (before, after)}``, each ``[B, prefix + tokens, d]`` at layer ``stop``
    (``hidden_states[stop]``). ``run_blocks`` comes from :func:`make_block_runner`."""
    edited = hidden.at[:, backbone.num_prefix :].add(jnp.asarray(delta, hidden.dtype))
    return {
        stop: (run_blocks(hidden, start, stop), run_blocks(edited, start, stop)) for stop in stops
    }


def block_runner_for(backbone: VisionBackbone):
    """:func:`make_block_runner` for a loaded backbone (its family, config and weights); raises
    ``ValueError`` for families without a block runner."""
    if backbone.hf_config is None or backbone.name not in HF_LAYERS:
        raise ValueError(
            f"backbone {backbone.name!r} has no block runner (supported: {sorted(HF_LAYERS)}, "
            "loaded through transformers' Flax classes)"
        )
    return make_block_runner(backbone.name, backbone.hf_config, backbone.params)
