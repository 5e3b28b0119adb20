"""PNG figures of the universality analysis (matplotlib, headless). Each returns its path."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from usae_jax.analysis.examples import crop_window, upsample  # noqa: E402
from usae_jax.train.plots import plot_model_matrix  # noqa: E402


def _save(fig, path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return os.fspath(path)


def plot_entropy_histogram(entropy: np.ndarray, fired: np.ndarray, path, bins: int = 20) -> str:
    """Histogram of the firing entropy ``[n]`` over concepts that fired (``fired`` ``[n]``)."""
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    ax.hist(np.asarray(entropy)[np.asarray(fired)], bins=bins, range=(0, 1), color="tab:blue")
    ax.set_xlabel("firing entropy (0: one model, 1: all models equally)")
    ax.set_ylabel("concepts")
    ax.set_title(f"Firing entropy of {int(np.sum(fired))} firing concepts")
    return _save(fig, path)


def plot_cofiring_matrix(matrix: np.ndarray, names: tuple[str, ...], path) -> str:
    """Heatmap of the ``[M, M]`` co-firing matrix (row i: share of i's firings shared with j)."""
    return plot_model_matrix(
        matrix,
        names,
        path,
        title="Co-firing of the same concept",
        xlabel="also fires for model",
        ylabel="firings of model",
        cmap="magma",
    )


def plot_universality_scatter(cofire_counts, energy, pearson: float, path) -> str:
    """log10(co-fire count) vs log10(energy) over concepts where both are positive."""
    cofire_counts, energy = np.asarray(cofire_counts), np.asarray(energy)
    both = (cofire_counts > 0) & (energy > 0)
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.scatter(np.log10(cofire_counts[both]), np.log10(energy[both]), s=10, alpha=0.6)
    ax.set_xlabel("log10 co-fire count |C_c|")
    ax.set_ylabel("log10 energy (summed over models)")
    ax.set_title(f"Universality vs importance: r = {pearson:.2f} ({int(both.sum())} concepts)")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_top_activations(statistics, concepts: list[int], path) -> str:
    """For each concept, its top code values per model (descending), top row index labelled."""
    names = statistics.model_names
    cols = min(4, max(1, len(concepts)))
    rows = -(-max(1, len(concepts)) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, concept in zip(axes.ravel(), concepts, strict=False):
        ax.axis("on")
        labels = []
        for m, name in enumerate(names):
            values = np.clip(statistics.top_values[m, concept], 0, None)
            ax.plot(values, marker=".", label=name)
            labels.append(f"{name}: row {int(statistics.top_rows[m, concept, 0])}")
        ax.set_title(f"concept {concept}", fontsize=9)
        ax.set_xlabel("rank", fontsize=8)
        ax.text(
            0.98, 0.95, "\n".join(labels), transform=ax.transAxes, ha="right", va="top", fontsize=6
        )
    axes.ravel()[0].legend(fontsize=7, loc="lower left")
    fig.suptitle("Top-activating tokens per model")
    return _save(fig, path)


def plot_concept_images(
    panels: dict[str, list[tuple[int, np.ndarray, np.ndarray]]],
    grid: tuple[int, int],
    concept: int,
    path,
    crop_patches: int | None = None,
) -> str:
    """One row per model: its top images of ``concept`` with the patch heatmap overlaid.

    Args:
      panels: ``{name: [(image_id, image [H, W(, 3)], heatmap [h, w]), ...]}``.
      grid: ``(h, w)`` token grid.
      crop_patches: crop each image to this many grid cells around the heatmap's peak; None:
        the whole image.
    """
    names = list(panels)
    cols = max(1, max(len(v) for v in panels.values()))
    fig, axes = plt.subplots(
        len(names), cols, figsize=(2.2 * cols, 2.3 * len(names)), squeeze=False
    )
    for ax in axes.ravel():
        ax.axis("off")
    for r, name in enumerate(names):
        for c, (image_id, image, heatmap) in enumerate(panels[name]):
            overlay = upsample(heatmap, image.shape[:2])
            ys, xs = slice(None), slice(None)
            if crop_patches:
                ys, xs = crop_window(image.shape[:2], grid, int(np.argmax(heatmap)), crop_patches)
            ax = axes[r, c]
            ax.imshow(image[ys, xs], cmap="gray" if image.ndim == 2 else None)
            ax.imshow(
                np.ma.masked_less_equal(overlay[ys, xs], 0.05 * float(heatmap.max())),
                cmap="jet",
                alpha=0.45,
                vmin=0,
                vmax=max(float(heatmap.max()), 1e-6),
            )
            ax.set_title(f"{name}: img {image_id}, max {heatmap.max():.2f}", fontsize=7)
    fig.suptitle(f"Concept {concept}: top images per model")
    return _save(fig, path)
