"""The transformer block every family of :mod:`usae_jax.backbones.transformer` shares.

:class:`Block` is pre-norm (``x + ls(f(ln(x)))``: ViT, DINOv2, CLIP, SigLIP, with DINOv2's layer
scale) or post-norm (``ln(x + f(x))``: BERT); attention with or without query/key/value biases;
the MLP activation is a name in :data:`ACTIVATIONS`. :func:`run_blocks` applies a range of blocks
in turn (the full pass and layer continuation both use it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from usae_jax.validation import require

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "relu": jax.nn.relu,
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class BlockConfig:
    """One transformer block (shared by every family)."""

    width: int
    """Channel width ``d`` of the residual stream."""
    heads: int
    """Attention heads; ``width`` must be a multiple of it."""
    mlp_width: int
    """Hidden width of the two-layer MLP."""
    activation: str = "gelu"
    """MLP activation: ``gelu`` (erf), ``gelu_tanh``, ``quick_gelu`` (CLIP) or ``relu``."""
    norm_first: bool = True
    """Pre-norm (``x + f(ln(x))``: ViT, DINOv2, CLIP, SigLIP) or post-norm (``ln(x + f(x))``:
    BERT)."""
    eps: float = 1e-6
    """LayerNorm epsilon."""
    layer_scale: bool = False
    """Scale each residual branch by a learned per-channel vector (DINOv2); pre-norm only."""
    qkv_bias: bool = True
    """Whether the query/key/value projections have biases."""

    def __post_init__(self):
        for field in ("width", "heads", "mlp_width"):
            require(getattr(self, field) >= 1, field, getattr(self, field), "must be >= 1")
        require(
            self.width % self.heads == 0,
            "width",
            self.width,
            f"must be a multiple of heads={self.heads}",
        )
        require(
            self.activation in ACTIVATIONS, "activation", self.activation, f"{sorted(ACTIVATIONS)}"
        )
        require(self.eps > 0, "eps", self.eps, "must be > 0")
        require(
            not self.layer_scale or self.norm_first,
            "layer_scale",
            self.layer_scale,
            "needs a pre-norm block (norm_first=True)",
        )


def layer_norm(width: int, eps: float, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """A LayerNorm with the two-pass variance torch uses (``E[(x - mean)^2]``)."""
    return nnx.LayerNorm(width, epsilon=eps, use_fast_variance=False, rngs=rngs)


class Attention(nnx.Module):
    """Multi-head self-attention: ``query``, ``key``, ``value`` and ``out`` projections."""

    def __init__(self, cfg: BlockConfig, rngs: nnx.Rngs):
        width = cfg.width
        self.heads = cfg.heads
        self.query = nnx.Linear(width, width, use_bias=cfg.qkv_bias, rngs=rngs)
        self.key = nnx.Linear(width, width, use_bias=cfg.qkv_bias, rngs=rngs)
        self.value = nnx.Linear(width, width, use_bias=cfg.qkv_bias, rngs=rngs)
        self.out = nnx.Linear(width, width, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """``x`` ``[B, T, d]``, ``mask`` bool broadcastable to ``[B, heads, T, T]`` (True:
        attend) -> ``[B, T, d]``."""
        b, t, d = x.shape
        dim = d // self.heads
        q, k, v = (f(x).reshape(b, t, self.heads, dim) for f in (self.query, self.key, self.value))
        # Scale the queries, not the [B, heads, T, T] logits: XLA:CPU materialises a broadcast
        # of the scale for the logits in every layer. Exact when sqrt(dim) is a power of two.
        q = q / np.sqrt(dim).astype(np.float32)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k)
        if mask is not None:
            logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
        probs = jax.nn.softmax(logits, axis=-1)
        return self.out(jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, t, d))


class LayerScale(nnx.Module):
    """Per-channel scale of a residual branch (DINOv2's ``lambda1``)."""

    def __init__(self, width: int):
        self.gamma = nnx.Param(jnp.ones((width,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        return x * self.gamma[...]


class Mlp(nnx.Module):
    """``fc2(act(fc1(x)))``."""

    def __init__(self, cfg: BlockConfig, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(cfg.width, cfg.mlp_width, rngs=rngs)
        self.fc2 = nnx.Linear(cfg.mlp_width, cfg.width, rngs=rngs)
        self.activation = cfg.activation

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(ACTIVATIONS[self.activation](self.fc1(x)))


class Block(nnx.Module):
    """The transformer block of every family (see the module docstring).

    Pre-norm: ``x + ls1(attn(norm1(x)))`` then ``x + ls2(mlp(norm2(x)))``. Post-norm (BERT):
    ``norm1(x + attn(x))`` then ``norm2(x + mlp(x))``.
    """

    def __init__(self, cfg: BlockConfig, rngs: nnx.Rngs):
        self.norm_first = cfg.norm_first
        self.norm1 = layer_norm(cfg.width, cfg.eps, rngs)
        self.attn = Attention(cfg, rngs)
        self.norm2 = layer_norm(cfg.width, cfg.eps, rngs)
        self.mlp = Mlp(cfg, rngs)
        self.ls1 = LayerScale(cfg.width) if cfg.layer_scale else None
        self.ls2 = LayerScale(cfg.width) if cfg.layer_scale else None

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """``[B, T, d] -> [B, T, d]``."""
        if not self.norm_first:
            x = self.norm1(x + self.attn(x, mask))
            return self.norm2(x + self.mlp(x))
        h = self.attn(self.norm1(x), mask)
        x = x + (h if self.ls1 is None else self.ls1(h))
        h = self.mlp(self.norm2(x))
        return x + (h if self.ls2 is None else self.ls2(h))


def run_blocks(blocks, x, mask, start: int, stop: int) -> list[jax.Array]:
    """Outputs of blocks ``start .. stop - 1`` (0-based) applied in turn to ``x``."""
    if not 0 <= start <= stop <= len(blocks):
        raise ValueError(f"need 0 <= start <= stop <= {len(blocks)}, got {start}, {stop}")
    states = []
    for block in list(blocks)[start:stop]:
        x = block(x, mask)
        states.append(x)
    return states
