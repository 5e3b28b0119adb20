"""Running the remaining blocks of a vision transformer from a hidden state.

An edit of layer ``l``'s tokens is carried through blocks ``l+1 .. L`` by the runner of
:func:`block_runner_for` (our own modules' :meth:`~usae_jax.backbones.transformer.Apply.run_blocks`,
for every transformer family: ViT, DINOv2, CLIP vision, SigLIP), so a concept can be steered
early and read later; :func:`carry_edit` applies one edit and reads it at several layers.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp

from usae_jax.backbones.base import VisionBackbone
from usae_jax.backbones.transformer import Apply

BlockRunner = Callable[[jax.Array, int, int], jax.Array]
"""``run(hidden [B, T, d], start, stop) -> [B, T, d]``: layer ``stop`` from layer ``start``."""


def block_runner_for(backbone: VisionBackbone) -> BlockRunner:
    """``run(hidden [B, tokens, d], start, stop) -> hidden``: blocks ``start+1 .. stop`` of
    ``backbone`` with its own weights (``hidden`` = the output of block ``start``, all tokens,
    prefix tokens first, as :meth:`VisionBackbone.apply` returns for layer ``str(start)``).

    So an edit at layer ``start`` can be read at layer ``stop`` (``hidden_states[stop]``);
    ``start == stop`` returns ``hidden``. Jitted, with ``start`` and ``stop`` static.

    Raises:
      ValueError: the backbone is not one of our transformers (e.g. a CNN).
    """
    if not isinstance(backbone.forward, Apply):
        raise ValueError(
            f"backbone {backbone.name!r} has no block runner: only the transformer backbones "
            "(usae_jax.backbones.transformer) can run their remaining blocks"
        )
    run = functools.partial(backbone.forward.run_blocks, backbone.params)
    return jax.jit(run, static_argnums=(1, 2))


def carry_edit(
    backbone: VisionBackbone,
    run_blocks: BlockRunner,
    hidden: jax.Array,
    start: int,
    stops: Iterable[int],
    delta,
) -> dict:
    """Add ``delta`` (raw units, broadcastable to ``[B, tokens, d]``) to the patch tokens of
    ``hidden`` ``[B, prefix + tokens, d]`` (layer ``start``, all tokens) and run the remaining
    blocks: ``{stop: (before, after)}``, each ``[B, prefix + tokens, d]`` at layer ``stop``
    (``hidden_states[stop]``). ``run_blocks`` comes from :func:`block_runner_for`."""
    edited = hidden.at[:, backbone.num_prefix :].add(jnp.asarray(delta, hidden.dtype))
    return {
        stop: (run_blocks(hidden, start, stop), run_blocks(edited, start, stop)) for stop in stops
    }
