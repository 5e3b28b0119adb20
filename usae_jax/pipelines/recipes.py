"""The recipe table: objective x sparsity rule x source sampling on the "hard" planted data.

Each :class:`Recipe` is trained for the same short schedule on the same planted data
(:func:`usae_jax.data.synthetic.planted.planted_preset`) and scored against the ground truth:

* shared and specific recovery per model: each planted direction's best cosine with a row of
  that model's dictionary (:func:`usae_jax.train.recovery.recovery_report`), mean and worst;
* firing-entropy AUROC: how well a concept's firing entropy separates concepts matched to a
  planted shared concept from those matched to one model's private concept
  (:func:`usae_jax.analysis.universality.planted_separation`). A crosscoder's one code fires for
  every model alike, so its firing entropy is 1 everywhere and this AUROC is 0.5 by
  construction; the *norm-entropy AUROC* uses the entropy of the concept's relative decoder
  norms instead (:mod:`usae_jax.analysis.diffing`), the measure that works for every objective;
* dead fraction: concepts that did not fire in the last epoch of training (mean over models);
* milliseconds per step: wall time of the whole run (compilation and the final evaluation
  included) over its steps, on whatever machine ran it.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time

import jax
import numpy as np

from usae_jax.analysis import universality as uni
from usae_jax.analysis.diffing import model_diffing
from usae_jax.analysis.statistics import StatisticsConfig, compute_statistics
from usae_jax.config import TrainConfig
from usae_jax.config_io import replace_fields
from usae_jax.data.source import ArraySource
from usae_jax.data.synthetic.planted import PlantedData
from usae_jax.train.loop import train
from usae_jax.train.recovery import recovery_report

TABLE_STEPS = 3000
"""Training steps per recipe of the table in ``docs/recipes.md`` (``experiments.recipes``'s
default, and the steps of the best-recipe preset)."""


@dataclasses.dataclass(frozen=True)
class Recipe:
    """One row of the table: config fields that differ from the shared base recipe."""

    name: str
    """Short name (also the run's sub-directory)."""

    overrides: dict
    """``replace_fields`` overrides: architecture, sparsity, source_sampling, prefixes, ..."""

    note: str = ""
    """What the row is (shown in the table)."""


SPARC_FIELDS = dict(
    architecture="sparc", loss="l2_auxk", aux="dead_latents", aux_coefficient=1 / 32
)
CROSSCODER_FIELDS = dict(architecture="crosscoder", loss="l2_auxk", source_sampling="all")
RECIPES = (
    Recipe("usae_topk_one", {}, "official USAE (one source per step)"),
    Recipe("usae_topk_all", dict(source_sampling="all"), "USAE, all sources per step"),
    Recipe("usae_batchtopk_one", dict(sparsity="batch_topk"), "USAE + BatchTopK"),
    Recipe(
        "usae_batchtopk_all",
        dict(sparsity="batch_topk", source_sampling="all"),
        "USAE + BatchTopK, all sources",
    ),
    Recipe(
        "usae_matryoshka_all",
        dict(sparsity="batch_topk", source_sampling="all", matryoshka_prefixes=(32, 64, 128)),
        "USAE + Matryoshka BatchTopK, all sources",
    ),
    Recipe("sparc_local", dict(**SPARC_FIELDS, sparsity="local_topk"), "SPARC, per-stream TopK"),
    Recipe("sparc_global", dict(**SPARC_FIELDS, sparsity="global_topk"), "SPARC, global TopK"),
    Recipe(
        "crosscoder_l1",
        dict(**CROSSCODER_FIELDS, sparsity="l1"),
        "crosscoder, L1 x decoder norms",
    ),
    Recipe(
        "crosscoder_batchtopk",
        dict(
            architecture="crosscoder", sparsity="batch_topk", loss="l2_auxk", source_sampling="all"
        ),
        "crosscoder, BatchTopK",
    ),
    Recipe(
        "crosscoder_matryoshka",
        dict(**CROSSCODER_FIELDS, sparsity="batch_topk", matryoshka_prefixes=(32, 64, 128)),
        "crosscoder, Matryoshka BatchTopK",
    ),
)
"""Every objective with the sparsity rules and source sampling that make sense for it."""


def _entropy(shares: np.ndarray) -> np.ndarray:
    """Normalised entropy ``[n]`` of share columns ``[M, n]``."""
    logs = np.log(np.where(shares > 0, shares, 1.0))
    return -(shares * logs).sum(axis=0) / np.log(shares.shape[0])


def score_run(config: TrainConfig, params, stats, planted: PlantedData, rows: int = 8192) -> dict:
    """Recovery per model, entropy and norm-entropy AUROCs of one trained run."""
    usae = config.usae
    source = ArraySource(planted.activations)
    report = recovery_report(params, planted)
    statistics = compute_statistics(usae, params, stats, source, StatisticsConfig(max_rows=rows))
    entropy = uni.firing_entropy(statistics.fire_counts)
    fired = statistics.fire_counts.sum(axis=0) > 0
    labels = uni.label_planted_concepts(
        params, usae.model_names, planted.shared_directions, planted.specific_directions
    )["labels"]
    proportions = uni.cofire_proportion(statistics.cofire_counts, statistics.fire_counts)
    separation = uni.planted_separation(
        entropy, np.nan_to_num(proportions, nan=0.0).min(axis=0), labels, fired
    )
    diffing = model_diffing(usae, params, stats, source.rows(np.arange(min(rows, 4096))))
    norm_entropy = _entropy(diffing.relative_norm)
    shared, specific = (labels == "shared") & fired, (labels == "specific") & fired
    return {
        "shared_mean": {m: r["shared"]["mean"] for m, r in report.items()},
        "shared_min": {m: r["shared"]["min"] for m, r in report.items()},
        "specific_mean": {m: r["specific"]["mean"] for m, r in report.items()},
        "specific_min": {m: r["specific"]["min"] for m, r in report.items()},
        "entropy_auroc": separation["entropy_auroc_shared_vs_specific"],
        "norm_entropy_auroc": uni.auroc(norm_entropy[shared], norm_entropy[specific]),
        "num_shared_concepts": separation["num_shared"],
        "num_specific_concepts": separation["num_specific"],
        "diffing_classes": diffing.summary()["classes"],
    }


def run_recipe(base: TrainConfig, recipe: Recipe, planted: PlantedData, workdir) -> dict:
    """Train ``recipe`` from scratch in ``workdir/recipe.name`` (removed first) and score it."""
    run_dir = os.path.join(workdir, recipe.name)
    shutil.rmtree(run_dir, ignore_errors=True)
    config = replace_fields(base, **recipe.overrides)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    result = train(config, run_dir, planted.source(), plots=False)
    seconds = time.perf_counter() - started
    params, stats = result.state.params, result.state.batch_stats
    params, stats = jax.device_get((params, stats))
    scores = score_run(result.config, params, stats, planted)
    steps = result.final_metrics["steps"]
    return {
        "name": recipe.name,
        "note": recipe.note,
        **scores,
        "dead": float(np.mean(list(result.final_metrics["dead_recent"].values()))),
        "l0": float(np.mean(list(result.final_metrics["l0"].values()))),
        "steps": steps,
        "ms_per_step": 1000 * seconds / steps,
        "seconds": seconds,
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
    }


def meets_aim(row: dict, recovery: float = 0.95, auroc: float = 0.95) -> bool:
    """The issue's aim: shared and specific mean recovery >= ``recovery`` in every model and an
    entropy AUROC (firing, or decoder-norm for a crosscoder) >= ``auroc``."""
    worst = min(min(row["shared_mean"].values()), min(row["specific_mean"].values()))
    separation = max(row["entropy_auroc"], row["norm_entropy_auroc"])
    return worst >= recovery and separation >= auroc


def best_recipe(rows: list[dict]) -> dict:
    """The row with the highest worst-model mean recovery (shared and specific), ties broken by
    the better entropy AUROC."""

    def key(row):
        worst = min(min(row["shared_mean"].values()), min(row["specific_mean"].values()))
        return worst, max(row["entropy_auroc"], row["norm_entropy_auroc"])

    return max(rows, key=key)


def format_table(rows: list[dict], names: tuple[str, ...]) -> str:
    """Markdown table: recovery ``mean / worst`` per model and group, AUROCs, dead, L0, ms."""
    header = ["recipe"]
    header += [f"shared {m}" for m in names] + [f"specific {m}" for m in names]
    header += ["entropy AUROC", "norm-entropy AUROC", "dead", "L0", "ms/step"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [f"{row['name']} ({row['note']})"]
        for group in ("shared", "specific"):
            cells += [
                f"{row[f'{group}_mean'][m]:.3f} / {row[f'{group}_min'][m]:.2f}" for m in names
            ]
        cells += [
            f"{row['entropy_auroc']:.3f}",
            f"{row['norm_entropy_auroc']:.3f}",
            f"{row['dead']:.3f}",
            f"{row['l0']:.1f}",
            f"{row['ms_per_step']:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
