"""Top-activating examples of a concept: token rows and values, and image heatmaps.

Rows are tokens. When the activations come from images (an activation store lays each image's
tokens out on an ``h x w`` grid), :class:`ImageTokens` says which image and which grid cell each
row is, so a concept's per-token codes can be drawn as a heatmap over the image.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import numpy as np

from usae_jax.analysis.statistics import ConceptStatistics, RowSource
from usae_jax.config import USAEConfig
from usae_jax.model.inference import encode_models_eval
from usae_jax.validation import require


def top_examples(statistics: ConceptStatistics, concept: int, count: int | None = None) -> dict:
    """The top rows of ``concept`` per model: ``{name: {"rows": [t], "values": [t]}}``.

    Only rows with a positive code are listed (a concept that never fires has none).
    """
    out = {}
    for m, name in enumerate(statistics.model_names):
        values = statistics.top_values[m, concept]
        rows = statistics.top_rows[m, concept]
        keep = values > 0
        out[name] = {
            "rows": rows[keep][:count].tolist(),
            "values": [round(float(v), 5) for v in values[keep][:count]],
        }
    return out


@dataclasses.dataclass(frozen=True)
class ImageTokens:
    """Where each row of a paired source sits in its image.

    ``image_index[r]`` is the image of row r and ``patch_index[r]`` its cell in the row-major
    ``grid`` (default: the rows of each image are its cells in order). ``images`` is an array
    ``[num_images, H, W]`` or ``[num_images, H, W, 3]`` (values in [0, 1]) or a callable
    ``image_id -> [H, W(, 3)]``.
    """

    image_index: np.ndarray
    """``[rows]`` int image id of each row."""

    grid: tuple[int, int]
    """``(h, w)`` token grid of every image (the paper: 14 x 14)."""

    images: np.ndarray | Callable[[int], np.ndarray]
    """The images, by id."""

    patch_index: np.ndarray | None = None
    """``[rows]`` int cell of each row in the row-major grid; None: rank within its image."""

    def __post_init__(self):
        image_index = np.asarray(self.image_index)
        require(image_index.ndim == 1, "image_index.shape", image_index.shape, "must be 1-D [rows]")
        require(
            len(self.grid) == 2 and min(self.grid) >= 1,
            "grid",
            self.grid,
            "need (h, w) with h, w >= 1",
        )
        require(
            self.patch_index is None or np.shape(self.patch_index) == image_index.shape,
            "patch_index.shape",
            np.shape(self.patch_index),
            f"must equal image_index's shape {image_index.shape}",
        )

    def image(self, image_id: int) -> np.ndarray:
        """Image ``image_id`` as ``[H, W(, 3)]`` floats."""
        if callable(self.images):
            return np.asarray(self.images(image_id), np.float32)
        return np.asarray(self.images[image_id], np.float32)

    def rows_and_cells(self, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        """Row indices of image ``image_id`` and their grid cells."""
        rows = np.flatnonzero(np.asarray(self.image_index) == image_id)
        if self.patch_index is None:
            return rows, np.arange(len(rows))
        return rows, np.asarray(self.patch_index)[rows]


@functools.partial(jax.jit, static_argnums=(0,))
def _codes(usae: USAEConfig, params: dict, stats: dict, batch: dict) -> dict[str, jax.Array]:
    """``{name: [B, n]}`` codes of a paired batch, each model under its own sparsity rule."""
    return {name: enc.codes for name, enc in encode_models_eval(usae, params, stats, batch).items()}


def concept_heatmap(
    usae: USAEConfig,
    params: dict,
    batch_stats: dict,
    source: RowSource,
    tokens: ImageTokens,
    concept: int,
    image_id: int,
) -> dict[str, np.ndarray]:
    """Per model, ``concept``'s code on every token of image ``image_id``: ``{name: [h, w]}``."""
    rows, cells = tokens.rows_and_cells(image_id)
    h, w = tokens.grid
    block = source.rows(rows)
    maps = {}
    encoded = _codes(usae, params, batch_stats, block)
    for name in usae.model_names:
        codes = np.asarray(encoded[name])
        grid = np.zeros(h * w, np.float32)
        grid[cells] = codes[:, concept]
        maps[name] = grid.reshape(h, w)
    return maps


def top_images(
    statistics: ConceptStatistics, tokens: ImageTokens, concept: int, model: int, count: int
) -> list[int]:
    """Up to ``count`` distinct images holding the model's top-activating rows of ``concept``,
    in the order of their best row (the statistics keep ``t`` rows, so these are candidates
    among the images of those rows)."""
    image_index = np.asarray(tokens.image_index)
    values = statistics.top_values[model, concept]
    rows = statistics.top_rows[model, concept][values > 0]
    images = []
    for row in rows:
        image_id = int(image_index[row])
        if image_id not in images:
            images.append(image_id)
        if len(images) == count:
            break
    return images


def upsample(heatmap: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an ``[h, w]`` heatmap to the image's ``(H, W)``."""
    return np.asarray(jax.image.resize(heatmap, shape, "bilinear"))


def crop_window(shape: tuple[int, int], grid: tuple[int, int], peak: int, patches: int):
    """Pixel slices of a ``patches x patches`` window of grid cells centred on cell ``peak``."""
    (H, W), (h, w) = shape, grid
    row, col = divmod(peak, w)
    half = patches // 2
    top, left = (
        min(max(row - half, 0), max(h - patches, 0)),
        min(max(col - half, 0), max(w - patches, 0)),
    )
    ys = slice(top * H // h, min(top + patches, h) * H // h)
    xs = slice(left * W // w, min(left + patches, w) * W // w)
    return ys, xs
