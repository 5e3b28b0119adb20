"""Token grids of vision backbones: resampling a patch-token grid to another size.

Extraction resamples every model's patch tokens to one common grid; analysis tools that edit or
read tokens (steering, CAM) resample the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax


def resample_grid(tokens: jax.Array, grid: Sequence[int]) -> jax.Array:
    """``[B, h, w, C]`` -> ``[B, gh, gw, C]``: bilinear with half-pixel centres and no
    antialiasing, i.e. ``torch.nn.functional.interpolate(mode="bilinear",
    align_corners=False)``. Identity when the grids already agree."""
    b, h, w, c = tokens.shape
    if (h, w) == tuple(grid):
        return tokens
    return jax.image.resize(tokens, (b, *grid, c), "bilinear", antialias=False)
