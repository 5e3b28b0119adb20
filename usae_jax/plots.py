"""PNG figures of training results (matplotlib, headless)."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_r2_matrix(
    r2: np.ndarray, names: tuple[str, ...], path: str | os.PathLike, title: str = "R²"
) -> str:
    """Heatmap of an ``[M, M]`` R² matrix (rows: encoding model, columns: decoded model)."""
    r2 = np.asarray(r2)
    size = 1.6 + 1.1 * len(names)
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    image = ax.imshow(r2, vmin=min(0.0, float(r2.min())), vmax=1.0, cmap="viridis")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("decoded into (target model)")
    ax.set_ylabel("encoded from (source model)")
    for i in range(len(names)):
        for j in range(len(names)):
            colour = "black" if r2[i, j] > 0.6 else "white"
            ax.text(j, i, f"{r2[i, j]:.2f}", ha="center", va="center", color=colour)
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return os.fspath(path)


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
