"""The BERT family on the shared block: BERT, MiniLM, XLM-R / RoBERTa (e5), CLIP text.

:class:`TextConfig` says how they differ (token-type table, position offset, embedding norm,
final norm, causal attention); :class:`TextTransformer` runs token ids and an attention mask.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from usae_jax.backbones.transformer_block import Block, BlockConfig, layer_norm, run_blocks
from usae_jax.validation import require


@dataclasses.dataclass(frozen=True, kw_only=True)
class TextConfig:
    """A text transformer: token (+ position, + type) embeddings and blocks."""

    block: BlockConfig
    """The block every layer uses."""
    num_layers: int
    """Number of blocks."""
    vocab_size: int
    """Rows of the token embedding table."""
    max_positions: int
    """Rows of the position table."""
    type_vocab_size: int = 0
    """Rows of the token-type table (BERT: 2; 0: no table). Token type 0 is added."""
    position_offset: int = 0
    """Index of the first position in the table (XLM-R / RoBERTa: ``pad_token_id + 1``)."""
    embed_norm: bool = True
    """A LayerNorm on the summed embeddings (BERT; not CLIP text)."""
    final_norm: bool = False
    """A LayerNorm after the last block gives ``last`` (CLIP text)."""
    causal: bool = False
    """Causal attention on top of the padding mask (CLIP text)."""

    def __post_init__(self):
        for field in ("num_layers", "vocab_size", "max_positions"):
            require(getattr(self, field) >= 1, field, getattr(self, field), "must be >= 1")
        require(self.type_vocab_size >= 0, "type_vocab_size", self.type_vocab_size, "must be >= 0")
        require(
            0 <= self.position_offset < self.max_positions,
            "position_offset",
            self.position_offset,
            f"must be in [0, max_positions={self.max_positions})",
        )


class TextTransformer(nnx.Module):
    """``(input_ids [B, T], attention_mask [B, T]) -> (hidden_states, last)``.

    ``hidden_states``: ``num_layers + 1`` arrays ``[B, T, d]``; ``last``: the final-normed last
    state (CLIP text) or the last state itself (BERT). Padding positions hold values that mean
    nothing; pool with the mask.
    """

    def __init__(self, cfg: TextConfig, rngs: nnx.Rngs):
        d = cfg.block.width
        self.cfg = cfg
        self.word = nnx.Embed(cfg.vocab_size, d, rngs=rngs)
        self.position = nnx.Embed(cfg.max_positions, d, rngs=rngs)
        self.token_type = (
            nnx.Embed(cfg.type_vocab_size, d, rngs=rngs) if cfg.type_vocab_size else None
        )
        self.embed_norm = layer_norm(d, cfg.block.eps, rngs) if cfg.embed_norm else None
        self.blocks = nnx.List([Block(cfg.block, rngs) for _ in range(cfg.num_layers)])
        self.final_norm = layer_norm(d, cfg.block.eps, rngs) if cfg.final_norm else None

    def embed(self, input_ids: jax.Array) -> jax.Array:
        """``[B, T]`` token ids -> embedding output ``[B, T, d]`` (layer ``0``)."""
        t = input_ids.shape[-1]
        if t + self.cfg.position_offset > self.cfg.max_positions:
            raise ValueError(f"{t} tokens exceed the position table ({self.cfg.max_positions})")
        x = self.word(input_ids)
        if self.token_type is not None:  # summed in torch's order: (word + type) + position
            x = x + self.token_type.embedding[0]
        x = x + self.position.embedding[self.cfg.position_offset : self.cfg.position_offset + t]
        return x if self.embed_norm is None else self.embed_norm(x)

    def mask(self, attention_mask: jax.Array) -> jax.Array:
        """``[B, T]`` (1: token, 0: padding) -> bool ``[B, 1, T|1, T]`` (True: may attend)."""
        keys = jnp.asarray(attention_mask).astype(bool)[:, None, None, :]
        if not self.cfg.causal:
            return keys
        t = keys.shape[-1]
        return keys & jnp.tril(jnp.ones((t, t), bool))[None, None]

    def finish(self, x: jax.Array) -> jax.Array:
        """The final norm (identity where the family has none)."""
        return x if self.final_norm is None else self.final_norm(x)

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array):
        x = self.embed(input_ids)
        mask = self.mask(attention_mask)
        states = [x, *run_blocks(self.blocks, x, mask, 0, len(self.blocks))]
        return tuple(states), self.finish(states[-1])

    def continue_from(
        self, hidden: jax.Array, attention_mask: jax.Array, start: int, stop: int | None = None
    ):
        """Run blocks ``start + 1 .. stop`` on ``hidden`` = layer ``start`` ``[B, T, d]``.

        Returns ``(states, last)`` as :meth:`VisionTransformer.continue_from`.
        """
        stop = len(self.blocks) if stop is None else stop
        states = run_blocks(self.blocks, hidden, self.mask(attention_mask), start, stop)
        return tuple(states), self.finish(states[-1] if states else hidden)
