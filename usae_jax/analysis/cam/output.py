"""Outputs of a CAM run: a JSON-ready report and the figure (rows: concepts, columns: models)."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence

import numpy as np

from usae_jax.analysis.cam.optimize import CAMConfig, CAMResult


def cam_report(
    result: CAMResult,
    config: CAMConfig,
    natural: Mapping[str, Mapping[str, np.ndarray]] | None = None,
    image_ids: Sequence[str] | None = None,
) -> dict:
    """JSON-ready summary: per concept and model, the start/final activations.

    Args:
      result: the CAM run (``C`` concepts, ``M`` models).
      config: its settings, stored in the report.
      natural: optional :func:`usae_jax.analysis.load.natural_image_maxima` for the same
        concepts in the same order: adds ``best_natural_pre`` (the largest token-mean
        pre-activation over the store's natural images) and ``best_natural_image`` (its index,
        or its id from ``image_ids``) per concept and model.
      image_ids: the store's image ids (``manifest["image_ids"]``), to name the images.
    """
    rows = []
    for i, concept in enumerate(result.concepts.tolist()):
        entry = {"concept": concept}
        for m, name in enumerate(result.model_names):
            entry[name] = {
                "start_pre": float(result.start[i, m]),
                "final_pre": float(result.final[i, m]),
                "final_code": float(result.final_codes[i, m]),
            }
            if natural is not None:
                image = int(natural[name]["image"][i])
                entry[name]["best_natural_pre"] = float(natural[name]["value"][i])
                entry[name]["best_natural_image"] = (
                    image_ids[image] if image_ids is not None else image
                )
        rows.append(entry)
    report = {
        "objective": "token-mean pre-ReLU BatchNorm output (eval mode) of the concept",
        "config": dataclasses.asdict(config),
        "models": list(result.model_names),
        "concepts": rows,
        "seconds": round(result.seconds, 2),
        "seconds_per_concept": round(result.seconds / len(result.concepts), 2),
    }
    if natural is not None:
        report["natural_images"] = (
            "best_natural_pre: the same objective's largest value over the store's images "
            "(their tokens as stored, standardised as for training)"
        )
    return report


def shrink_png(path: str, max_bytes: int = 1_000_000) -> str:
    """Re-save a PNG over ``max_bytes`` with an adaptive 256-colour palette (PIL), which roughly
    halves the size of noisy CAM figures; smaller files are left alone."""
    from PIL import Image

    if os.path.getsize(path) > max_bytes:
        with Image.open(path) as image:
            image.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(
                path, optimize=True
            )
    return path


def save_cam_png(
    result: CAMResult, path: str, title: str = "", cell_px: int = 160, max_bytes: int = 1_000_000
) -> str:
    """One row per concept, one column per model (or a single "shared image" column); each tile
    is labelled with the final token-mean pre-activation (and code) it reaches. Files over
    ``max_bytes`` are palette-quantised (:func:`shrink_png`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    concepts, per_concept = result.images.shape[:2]
    names = result.model_names if per_concept > 1 else ("shared image",)
    dpi = 100
    fig, axes = plt.subplots(
        concepts,
        per_concept,
        figsize=(
            max(per_concept * cell_px / dpi * 1.25, 4.0),
            concepts * cell_px / dpi * 1.25 + 0.5,
        ),
        squeeze=False,
    )
    for i in range(concepts):
        for p in range(per_concept):
            ax = axes[i, p]
            ax.imshow(result.images[i, p], interpolation="lanczos")
            ax.set_xticks([])
            ax.set_yticks([])
            models = [p] if per_concept > 1 else range(len(result.model_names))
            label = ", ".join(
                f"{result.final[i, m]:.2f}" + (f"/{result.final_codes[i, m]:.2f}") for m in models
            )
            ax.set_xlabel(label, fontsize=7)
            if i == 0:
                ax.set_title(names[p], fontsize=8)
            if p == 0:
                ax.set_ylabel(f"concept {int(result.concepts[i])}", fontsize=8)
    fig.suptitle(title or "CAM (label: final pre-activation / code, token means)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return shrink_png(path, max_bytes)


def write_cam_outputs(
    result: CAMResult,
    config: CAMConfig,
    prefix: str,
    *,
    usae_step: int,
    title: str,
    natural: Mapping[str, Mapping[str, np.ndarray]] | None = None,
    image_ids: Sequence[str] | None = None,
) -> dict:
    """Write ``prefix.png`` (the figure), ``prefix.npz`` (the images, float16 ``[C, P, S, S,
    3]``) and ``prefix.json`` (:func:`cam_report` with ``natural``/``image_ids`` plus
    ``usae_step``); return the report."""
    save_cam_png(result, prefix + ".png", title=title)
    np.savez_compressed(prefix + ".npz", images=result.images.astype(np.float16))
    report = cam_report(result, config, natural, image_ids) | {"usae_step": usae_step}
    with open(prefix + ".json", "w") as handle:
        json.dump(report, handle, indent=2)
    return report
