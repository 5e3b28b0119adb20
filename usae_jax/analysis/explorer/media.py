"""What a concept page shows of the data: image crops with heatmaps, CAM images, text contexts.

Images are written as small PNG files (PIL) under the site's ``img/`` folder and referred to by
relative path; text contexts are plain JSON (tokens and the highlighted position).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence
from pathlib import Path

import jax
import matplotlib
import numpy as np
from PIL import Image

from usae_jax.analysis.examples import ImageTokens, crop_window, top_images
from usae_jax.analysis.statistics import ConceptStatistics, RowSource
from usae_jax.config import USAEConfig
from usae_jax.model.inference import encode_models_eval
from usae_jax.validation import require


@dataclasses.dataclass(frozen=True)
class RowTexts:
    """The text behind each row: for pooled streams a whole item, for per-token streams the
    item with the row's token highlighted.

    Shapes: ``rows`` rows of the source, ``I`` items.
    """

    items: Sequence[Sequence[str]]
    """``[I]`` the tokens (or words) of each item."""

    item_index: np.ndarray | None = None
    """``[rows]`` int item of each row; None: row r is item r."""

    position: np.ndarray | None = None
    """``[rows]`` int token of each row within its item; None: rows are whole items."""

    def __post_init__(self):
        require(
            self.item_index is None or np.ndim(self.item_index) == 1,
            "item_index.shape",
            np.shape(self.item_index),
            "must be 1-D [rows]",
        )
        require(
            self.position is None
            or self.item_index is None
            or np.shape(self.position) == np.shape(self.item_index),
            "position.shape",
            np.shape(self.position),
            f"must equal item_index's shape {np.shape(self.item_index)}",
        )

    @classmethod
    def from_sentences(cls, sentences: Sequence[str]) -> RowTexts:
        """Pooled streams: row r is sentence r (split on white space)."""
        return cls([s.split() for s in sentences])

    def context(self, row: int, window: int = 12) -> dict:
        """``{"item": i, "tokens": [...], "highlight": j or None}``; per-token rows keep
        ``window`` tokens either side of the highlighted one."""
        item = int(row if self.item_index is None else self.item_index[row])
        if not 0 <= item < len(self.items):
            raise ValueError(f"row {row} maps to item {item}, but there are {len(self.items)}")
        tokens = [str(t) for t in self.items[item]]
        if self.position is None:
            return {"item": item, "tokens": tokens, "highlight": None}
        at = int(self.position[row])
        lo = max(at - window, 0)
        return {"item": item, "tokens": tokens[lo : at + window + 1], "highlight": at - lo}


@functools.partial(jax.jit, static_argnums=(0,))
def _all_codes(usae: USAEConfig, params: dict, stats: dict, batch: dict) -> jax.Array:
    """``[M, B, n]`` every model's codes of its own rows (eval mode, its own sparsity rule)."""
    encodings = encode_models_eval(usae, params, stats, batch)
    return jax.numpy.stack([encodings[name].codes for name in usae.model_names])


def overlay(image: np.ndarray, heatmap: np.ndarray, vmax: float) -> np.ndarray:
    """``[H, W(, 3)]`` image in [0, 1] with ``heatmap`` ``[h, w]`` (bilinear upsampled, jet
    colours, alpha 0.45 where above 5% of ``vmax``) blended over it: uint8 ``[H, W, 3]``."""
    image = np.asarray(image, np.float32)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    height, width = image.shape[:2]
    up = Image.fromarray(np.asarray(heatmap, np.float32)).resize((width, height), Image.BILINEAR)
    scaled = np.clip(np.asarray(up) / max(vmax, 1e-6), 0, 1)
    colours = matplotlib.colormaps["jet"](scaled)[..., :3]
    alpha = np.where(scaled > 0.05, 0.45, 0.0)[..., None]
    blended = (1 - alpha) * np.clip(image, 0, 1) + alpha * colours
    return (blended * 255 + 0.5).astype(np.uint8)


def save_png(pixels: np.ndarray, path: Path, side: int) -> None:
    """Save uint8 ``[H, W, 3]`` scaled so its longer side is ``side`` pixels."""
    image = Image.fromarray(pixels)
    scale = side / max(image.size)
    size = (max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale)))
    image.resize(size, Image.BILINEAR).save(path, optimize=True)


def image_panels(
    usae: USAEConfig,
    params: dict,
    batch_stats: dict,
    source: RowSource,
    tokens: ImageTokens,
    statistics: ConceptStatistics,
    concepts: Sequence[int],
    out_dir: str | os.PathLike,
    *,
    num_images: int,
    side: int,
    crop_patches: int | None = None,
) -> dict[int, dict[str, list[dict]]]:
    """Per concept and model, its top images with the concept's heatmap, saved as PNGs.

    Each image is encoded once (every model) for all the concepts that list it.

    Args:
      concepts: concept ids to draw.
      out_dir: the site folder; files go to ``out_dir/img/c<concept>_<model>_<rank>.png``.
      num_images: images per concept and model (from :func:`top_images`).
      side: longer side of each PNG in pixels.
      crop_patches: crop to this many grid cells around the peak; None: whole images.

    Returns:
      ``{concept: {model: [{"src": relative path, "image": id, "max": peak code}]}}``.
    """
    folder = Path(out_dir) / "img"
    folder.mkdir(parents=True, exist_ok=True)
    names = usae.model_names
    wanted: dict[int, list[tuple[int, int, int]]] = {}  # image -> [(concept, model, rank)]
    for concept in concepts:
        for m in range(len(names)):
            for rank, image_id in enumerate(top_images(statistics, tokens, concept, m, num_images)):
                wanted.setdefault(image_id, []).append((concept, m, rank))
    panels: dict[int, dict[str, list]] = {c: {n: [] for n in names} for c in concepts}
    h, w = tokens.grid
    image_index = np.asarray(tokens.image_index)
    order = np.argsort(image_index, kind="stable")  # rows grouped by image, ascending within
    grouped = image_index[order]
    for image_id in sorted(wanted):
        lo, hi = np.searchsorted(grouped, [image_id, image_id + 1])
        rows = order[lo:hi]
        cells = (
            np.arange(len(rows))
            if tokens.patch_index is None
            else np.asarray(tokens.patch_index)[rows]
        )
        codes = np.asarray(_all_codes(usae, params, batch_stats, source.rows(rows)))  # [M, r, n]
        picture = tokens.image(image_id)
        for concept, m, rank in wanted[image_id]:
            grid = np.zeros(h * w, np.float32)
            grid[cells] = codes[m, :, concept]
            grid = grid.reshape(h, w)
            peak = float(grid.max())
            pixels = overlay(picture, grid, peak)
            if crop_patches:
                ys, xs = crop_window(pixels.shape[:2], (h, w), int(np.argmax(grid)), crop_patches)
                pixels = pixels[ys, xs]
            name = f"c{concept}_{names[m]}_{rank}.png"
            save_png(pixels, folder / name, side)
            panels[concept][names[m]].append(
                {"src": f"img/{name}", "image": image_id, "max": round(peak, 4), "rank": rank}
            )
    for per_model in panels.values():
        for items in per_model.values():
            items.sort(key=lambda item: item.pop("rank"))
    return panels


def cam_panels(
    report: dict, images: np.ndarray, out_dir: str | os.PathLike, tag: str, side: int
) -> dict[int, list[dict]]:
    """CAM images of a CAM run (``experiments/cam.py``: ``OUT.json`` and ``OUT.npz``) as PNGs.

    Args:
      report: the CAM JSON (``{"models": [...], "concepts": [{"concept": c, ...}]}``).
      images: ``[C, P, S, S, 3]`` in [0, 1]; ``P`` is one per model, or 1 (a shared image).
      out_dir: the site folder; files go to ``out_dir/img/cam_<tag>_<concept>_<p>.png``.
      tag: distinguishes several CAM runs.

    Returns:
      ``{concept: [{"src", "label", "final_pre"}]}``; ``label`` is the model, or "shared".
    """
    models = list(report["models"])
    rows = report["concepts"]
    if images.ndim != 5 or images.shape[0] != len(rows) or images.shape[1] not in (1, len(models)):
        raise ValueError(
            f"CAM images of shape {images.shape} do not match {len(rows)} concepts of "
            f"{len(models)} models ([C, P, S, S, 3] with P = 1 or {len(models)})"
        )
    folder = Path(out_dir) / "img"
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[int, list[dict]] = {}
    for i, row in enumerate(rows):
        concept = int(row["concept"])
        for p in range(images.shape[1]):
            label = models[p] if images.shape[1] > 1 else "shared"
            name = f"cam_{tag}_{concept}_{p}.png"
            pixels = (np.clip(np.asarray(images[i, p], np.float32), 0, 1) * 255 + 0.5).astype(
                np.uint8
            )
            save_png(pixels, folder / name, side)
            reached = [row[m]["final_pre"] for m in ([label] if label in row else models)]
            out.setdefault(concept, []).append(
                {
                    "src": f"img/{name}",
                    "label": f"{tag}: {label}",
                    "final_pre": round(float(np.mean(reached)), 4),
                }
            )
    return out
