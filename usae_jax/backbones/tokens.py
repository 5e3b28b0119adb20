"""Token grids of vision backbones: resampling a patch-token grid to another size.

Extraction resamples every model's patch tokens to one common grid; analysis tools that edit or
read tokens (steering, CAM) resample the same way, and splicing puts edited common-grid tokens
back on a layer's native grid (:func:`unresample_grid`).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def resample_grid(tokens: jax.Array, grid: Sequence[int]) -> jax.Array:
    """``[B, h, w, C]`` -> ``[B, gh, gw, C]``: bilinear with half-pixel centres and no
    antialiasing, i.e. ``torch.nn.functional.interpolate(mode="bilinear",
    align_corners=False)``. Identity when the grids already agree."""
    b, h, w, c = tokens.shape
    if (h, w) == tuple(grid):
        return tokens
    return jax.image.resize(tokens, (b, *grid, c), "bilinear", antialias=False)


def resample_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``[n_out, n_in]`` float64 matrix of :func:`resample_grid` along one axis (the 2-D
    resampling is this matrix applied to rows and to columns)."""
    with jax.ensure_compile_time_eval():  # a constant, also when called inside a trace
        eye = jnp.eye(n_in, dtype=jnp.float32)
        matrix = jax.image.resize(eye, (n_out, n_in), "bilinear", antialias=False)
    return np.asarray(matrix, np.float64)


def unresample_grid(tokens: jax.Array, clean: jax.Array) -> jax.Array:
    """Put common-grid ``tokens`` ``[B, gh, gw, C]`` back on the native grid of ``clean``
    ``[B, h, w, C]``: ``clean + Q (tokens - P clean)`` per axis, with ``P`` the resampling of
    :func:`resample_grid` and ``Q`` its pseudo-inverse.

    Where the common grid is at least as fine as the native one (``P`` has full column rank) this
    is ``Q tokens`` exactly, whatever ``clean`` holds. Where it is coarser (DINOv2's 16 x 16 seen
    on 14 x 14), the part of the native map the common grid cannot see (the null space of ``P``)
    is kept from ``clean`` and only the visible part is replaced. Either way ``tokens ==
    resample_grid(clean)`` gives ``clean`` back (to float32 rounding).
    """
    h, w = clean.shape[1:3]
    gh, gw = tokens.shape[1:3]
    if (h, w) == (gh, gw):
        return tokens
    ph, pw = resample_matrix(h, gh), resample_matrix(w, gw)
    qh, qw = (jnp.asarray(np.linalg.pinv(p), jnp.float32) for p in (ph, pw))
    seen = resample_grid(clean, (gh, gw))
    back = jnp.einsum("hi,wj,bijc->bhwc", qh, qw, tokens - seen, precision="highest")
    return clean + back
