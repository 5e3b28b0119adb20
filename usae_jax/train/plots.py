"""PNG figures of training results (matplotlib, headless)."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_model_matrix(
    matrix: np.ndarray,
    names: tuple[str, ...],
    path: str | os.PathLike,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    vmin: float = 0.0,
    vmax: float = 1.0,
    cmap: str = "viridis",
) -> str:
    """Annotated heatmap of an ``[M, M]`` model-by-model matrix, saved as a PNG."""
    matrix = np.asarray(matrix)
    size = 1.6 + 1.1 * len(names)
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    image = ax.imshow(matrix, vmin=vmin, vmax=vmax, cmap=cmap)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    for i in range(len(names)):
        for j in range(len(names)):
            colour = "black" if matrix[i, j] > 0.6 else "white"
            ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", color=colour)
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return os.fspath(path)


def plot_r2_matrix(
    r2: np.ndarray, names: tuple[str, ...], path: str | os.PathLike, title: str = "R²"
) -> str:
    """Heatmap of an ``[M, M]`` R² matrix (rows: encoding model, columns: decoded model)."""
    return plot_model_matrix(
        r2,
        names,
        path,
        title=title,
        xlabel="decoded into (target model)",
        ylabel="encoded from (source model)",
        vmin=min(0.0, float(np.min(r2))),
    )


def plot_training_curves(records: list[dict], names: tuple[str, ...], path) -> str:
    """Per-target-model loss over steps from the JSONL metric records."""
    steps = [r["step"] for r in records if "target_losses" in r]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for index, name in enumerate(names):
        ax.plot(
            steps, [r["target_losses"][index] for r in records if "target_losses" in r], label=name
        )
    ax.set_xlabel("step")
    ax.set_ylabel("loss (as target)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return os.fspath(path)
