"""The ViT family on the shared block: ViT, DINOv2 (with registers), CLIP vision, SigLIP.

:class:`VisionConfig` says how the families differ (prefix tokens, patch bias, pre/final norm,
how the learned position grid reaches another input size); :func:`resize_grid` resizes that grid
as torch's ``interpolate`` does (bicubic with or without antialias, torch.hub DINOv2's offset),
so our modules match the torch models at any resolution the family supports.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from usae_jax.backbones.transformer_block import Block, BlockConfig, layer_norm, run_blocks
from usae_jax.validation import require

INTERPOLATIONS = ("none", "bicubic", "bicubic_antialias")


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
        for field in ("num_layers", "image_size", "patch_size", "channels"):
            require(getattr(self, field) >= 1, field, getattr(self, field), "must be >= 1")
        require(
            self.image_size % self.patch_size == 0,
            "image_size",
            self.image_size,
            f"must be a multiple of patch_size={self.patch_size}",
        )
        require(self.registers >= 0, "registers", self.registers, "must be >= 0")
        require(
            self.interpolation in INTERPOLATIONS,
            "interpolation",
            self.interpolation,
            f"one of {INTERPOLATIONS}",
        )
        require(
            self.interpolation_offset >= 0
            and (not self.interpolation_offset or self.interpolation == "bicubic"),
            "interpolation_offset",
            self.interpolation_offset,
            "must be >= 0 and needs 'bicubic' interpolation",
        )
        require(
            self.position_grid is None or self.position_grid >= 1,
            "position_grid",
            self.position_grid,
            "must be None or >= 1",
        )
        require(
            self.interpolation != "none" or self.table_grid == self.grid,
            "interpolation",
            self.interpolation,
            f"position grid {self.table_grid} differs from the token grid {self.grid} of "
            f"{self.image_size} px and interpolation is 'none'",
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


def resize_position_table(cfg: VisionConfig, table: jax.Array) -> tuple[VisionConfig, jax.Array]:
    """The position table ``[1, prefix + n * n, d]`` resized once to the token grid ``g``:
    ``(cfg', table' [1, prefix + g * g, d])`` with ``cfg'`` a model that adds it as is
    (``position_grid=None``, ``interpolation="none"``).

    The model computes the same thing either way (the resize depends on the weights only), but
    a stored table of the right size spares every forward pass the resize.
    """
    if cfg.table_grid == cfg.grid:
        return cfg, table
    n, prefix = cfg.table_grid, int(cfg.class_token)
    grid = resize_grid(
        jnp.asarray(table[0, prefix:]).reshape(n, n, -1),
        cfg.grid,
        cfg.interpolation,
        cfg.interpolation_offset,
    )
    resized = jnp.concatenate([table[:, :prefix], grid.reshape(1, -1, table.shape[-1])], axis=1)
    fixed = dataclasses.replace(
        cfg, position_grid=None, interpolation="none", interpolation_offset=0.0
    )
    return fixed, resized


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
        states = [x, *run_blocks(self.blocks, x, None, 0, len(self.blocks))]
        return tuple(states), self.finish(states[-1])

    def continue_from(self, hidden: jax.Array, start: int, stop: int | None = None):
        """Run blocks ``start + 1 .. stop`` on ``hidden`` = layer ``start`` (all tokens).

        Returns:
          ``(states, last)``: ``states[j]`` is layer ``start + 1 + j`` ``[B, T, d]``; ``last``
          the final-normed layer ``stop`` (``stop`` defaults to ``num_layers``).
        """
        stop = len(self.blocks) if stop is None else stop
        states = run_blocks(self.blocks, hidden, None, start, stop)
        return tuple(states), self.finish(states[-1] if states else hidden)
