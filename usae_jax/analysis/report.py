"""The whole analysis of a trained run: restore, measure, compare, control, draw, write.

``analyze(workdir, arrays, ...)`` writes into ``out_dir`` (default ``workdir/analysis``):
``analysis.json`` (every number), ``report.md`` (the same, readable) and the PNGs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np

from usae_jax.analysis import figures
from usae_jax.analysis import universality as uni
from usae_jax.analysis.baseline import (
    BaselineConfig,
    compare_with_independent,
    train_independent_saes,
)
from usae_jax.analysis.controls import ControlConfig, run_controls, universality_summary
from usae_jax.analysis.diffing import model_diffing
from usae_jax.analysis.examples import ImageTokens, concept_heatmap, top_examples, top_images
from usae_jax.analysis.load import load_run
from usae_jax.analysis.markdown import render_report
from usae_jax.analysis.statistics import StatisticsConfig, compute_statistics, statistics_summary
from usae_jax.data.source import ArraySource, Standardisation
from usae_jax.data.synthetic.planted import PlantedData
from usae_jax.model.usae import normalize_dictionary
from usae_jax.train.metrics import r2_label
from usae_jax.train.plots import plot_r2_matrix
from usae_jax.train.recovery import mean_max_cosine
from usae_jax.validation import require


@dataclasses.dataclass(kw_only=True, frozen=True)
class AnalysisConfig:
    """What the analysis computes."""

    statistics: StatisticsConfig = dataclasses.field(default_factory=StatisticsConfig)
    """Firing threshold, batch size, row limit, top examples kept."""

    baseline: BaselineConfig | None = dataclasses.field(default_factory=BaselineConfig)
    """Independent-SAE baseline settings; None skips it (it trains one SAE per model)."""

    controls: ControlConfig | None = dataclasses.field(default_factory=ControlConfig)
    """Universality controls; None skips them (they train one USAE per control)."""

    min_cofires: int = 1000
    """The second universality-vs-importance correlation keeps concepts with this many co-fires."""

    universal_entropy: float = 0.8
    """Firing entropy at or above which a firing concept is called universal."""

    num_example_concepts: int = 8
    """Concepts (highest energy first) whose top examples are listed and drawn."""

    image_crop_patches: int | None = None
    """Crop image panels to this many grid cells around the peak; None: whole images."""

    diffing_rows: int = 4096
    """Rows (from the start of the data) the model-diffing measures are computed on."""

    def __post_init__(self):
        require(self.diffing_rows >= 2, "diffing_rows", self.diffing_rows, "must be >= 2")
        require(self.min_cofires >= 1, "min_cofires", self.min_cofires, "must be >= 1")
        entropy = self.universal_entropy
        require(0 <= entropy <= 1, "universal_entropy", entropy, "must be in [0, 1]")
        require(
            self.num_example_concepts >= 0,
            "num_example_concepts",
            self.num_example_concepts,
            "must be >= 0",
        )


def _rounded(values: np.ndarray) -> list:
    """JSON-ready list with 5 decimals; NaN becomes null."""
    return [None if not np.isfinite(v) else round(float(v), 5) for v in np.ravel(values)]


def _per_concept(statistics, entropy: np.ndarray, share: np.ndarray) -> dict:
    """Every concept's numbers: lists of length n (per model: ``{name: list}``)."""
    names = statistics.model_names
    proportions = uni.cofire_proportion(statistics.cofire_counts, statistics.fire_counts)
    per_model = lambda array: {n: _rounded(array[m]) for m, n in enumerate(names)}
    return {
        "firing_entropy": _rounded(entropy),
        "cofire_count": statistics.cofire_counts.tolist(),
        "energy": _rounded(statistics.total_energy),
        "fire_counts": {n: statistics.fire_counts[m].tolist() for m, n in enumerate(names)},
        "cofire_proportion": per_model(proportions),
        "energy_share": per_model(share),
        "mean_activation": per_model(statistics.mean_activation),
    }


def _planted_section(params, names, statistics, entropy, planted: PlantedData):
    """``(JSON section, [M, n] str planted match of each USAE row)``."""
    labels = uni.label_planted_concepts(
        params, names, planted.shared_directions, planted.specific_directions
    )
    fired = statistics.fire_counts.sum(axis=0) > 0
    proportions = uni.cofire_proportion(statistics.cofire_counts, statistics.fire_counts)
    min_cfp = np.nan_to_num(proportions, nan=0.0).min(axis=0)
    section = uni.planted_separation(entropy, min_cfp, labels["labels"], fired)
    section["concept_labels"] = labels["labels"].tolist()
    section["usae_specific_recovery"] = {
        name: mean_max_cosine(np.asarray(params["models"][name]["dictionary"]), directions)
        for name, directions in planted.specific_directions.items()
        if len(directions)
    }
    return section, labels["matches"]


def _examples(config, params, stats, source, statistics, ranked, tokens, out_dir, analysis):
    """Top rows of the highest-energy concepts, their PNG, and image heatmap grids if given."""
    concepts = [int(c) for c in ranked[: analysis.num_example_concepts]]
    listed = {str(c): top_examples(statistics, c, count=5) for c in concepts}
    pngs = []
    if concepts:
        pngs.append(figures.plot_top_activations(statistics, concepts, out_dir / "top_tokens.png"))
    for concept in concepts[:3] if tokens is not None else []:
        panels = {name: [] for name in config.usae.model_names}
        for m, name in enumerate(config.usae.model_names):
            for image_id in top_images(statistics, tokens, concept, m, count=4):
                heatmaps = concept_heatmap(
                    config.usae, params, stats, source, tokens, concept, image_id
                )
                panels[name].append((image_id, tokens.image(image_id), heatmaps[name]))
        path = out_dir / f"concept_{concept}_images.png"
        pngs.append(
            figures.plot_concept_images(
                panels, tokens.grid, concept, path, analysis.image_crop_patches
            )
        )
    return listed, pngs


def _baseline_folder(baseline: BaselineConfig) -> str:
    """Where the independent SAEs of ``baseline`` are trained (reused by a rerun)."""
    seed = "" if baseline.sae_seed is None else f"_seed{baseline.sae_seed}"
    return f"independent_saes_{baseline.num_steps}_steps{seed}"


def analyze(
    workdir: str | os.PathLike,
    arrays: dict[str, np.ndarray],
    analysis: AnalysisConfig | None = None,
    planted: PlantedData | None = None,
    tokens: ImageTokens | None = None,
    out_dir: str | os.PathLike | None = None,
    *,
    train_arrays: dict[str, np.ndarray] | None = None,
    standardisation: Standardisation | None = None,
) -> dict:
    """Analyse the run in ``workdir`` on ``arrays`` (``{name: [rows, width]}``, raw, standardised
    here as training did); write ``analysis.json``, ``report.md`` and PNGs; return the numbers.

    Held-out analysis: ``arrays`` are the held-out rows, ``standardisation`` the training data's
    (else one is fitted on ``arrays``), and ``train_arrays`` (``{name: [rows', width]}``, raw
    training rows) train the independent SAEs and the control USAEs, which are then measured on
    ``arrays``. Without ``train_arrays`` they train on ``arrays`` themselves.
    """
    started = time.perf_counter()
    analysis = analysis or AnalysisConfig()
    out = Path(out_dir or os.path.join(workdir, "analysis"))
    out.mkdir(parents=True, exist_ok=True)
    source = ArraySource(arrays, standardisation=standardisation)
    fit_arrays = arrays if train_arrays is None else train_arrays
    config, params, stats, step = load_run(workdir)
    names = config.usae.model_names
    statistics = compute_statistics(config.usae, params, stats, source, analysis.statistics)
    entropy = uni.firing_entropy(statistics.fire_counts)
    fired = statistics.fire_counts.sum(axis=0) > 0
    energy = statistics.total_energy
    share = uni.energy_share(statistics.squared_activation_sum)
    scatter = uni.universality_vs_importance(statistics.cofire_counts, energy, analysis.min_cofires)
    ranked = np.argsort(-energy, kind="stable")
    results = {
        "workdir": os.fspath(workdir),
        "step": step,
        "baselines_trained_on": "analysed rows" if train_arrays is None else "separate rows",
        "model_names": list(names),
        "num_concepts": config.usae.num_concepts,
        **statistics_summary(statistics),
        **universality_summary(statistics, analysis.universal_entropy),
        "firing_entropy_histogram": np.histogram(entropy[fired], 10, (0, 1))[0].tolist(),
        "cofiring_matrix": uni.cofiring_matrix(statistics.pairwise_cofire).tolist(),
        "universality_vs_importance": scatter,
        "per_concept": _per_concept(statistics, entropy, share),
        "top_concepts_by_energy": [
            {
                "concept": int(c),
                "energy": float(energy[c]),
                "energy_share": dict(zip(names, share[:, c].round(5).tolist(), strict=True)),
                "firing_entropy": float(entropy[c]),
                "cofire_count": int(statistics.cofire_counts[c]),
                "fire_counts": dict(zip(names, statistics.fire_counts[:, c].tolist(), strict=True)),
            }
            for c in ranked[:20]
        ],
    }
    pngs = [
        plot_r2_matrix(statistics.r2, names, out / "r2_matrix.png", r2_label(config.usae)),
        figures.plot_entropy_histogram(entropy, fired, out / "firing_entropy.png"),
        figures.plot_cofiring_matrix(results["cofiring_matrix"], names, out / "cofiring.png"),
        figures.plot_universality_scatter(
            statistics.cofire_counts, energy, scatter["pearson_r"], out / "universality.png"
        ),
    ]
    results["examples"], example_pngs = _examples(
        config, params, stats, source, statistics, ranked, tokens, out, analysis
    )
    pngs += example_pngs
    planted_matches = None
    if planted is not None:
        results["planted"], planted_matches = _planted_section(
            params, names, statistics, entropy, planted
        )
    diff_rows = source.rows(np.arange(min(source.num_rows, analysis.diffing_rows)))
    diffing = model_diffing(config.usae, params, stats, diff_rows)
    results["model_diffing"] = {**diffing.summary(), "per_concept": diffing.per_concept()}
    results["seconds_core"] = round(time.perf_counter() - started, 1)
    if analysis.baseline is not None:
        tic = time.perf_counter()
        saes = train_independent_saes(
            config,
            fit_arrays,
            out / _baseline_folder(analysis.baseline),
            analysis.baseline.num_steps,
            analysis.baseline.sae_seed,
        )
        usae_atoms = {
            n: np.asarray(normalize_dictionary(params["models"][n]["dictionary"])) for n in names
        }
        baseline = compare_with_independent(
            usae_atoms, saes, statistics.fire_counts, entropy, analysis.baseline, planted_matches
        )
        baseline["num_steps"] = analysis.baseline.num_steps
        baseline["sae_seed"] = analysis.baseline.sae_seed
        if planted is not None:
            baseline["planted_specific_recovery"] = {
                n: mean_max_cosine(saes[n], planted.specific_directions[n]) for n in names
            }
        baseline["seconds"] = round(time.perf_counter() - tic, 1)
        results["independent_saes"] = baseline
    if analysis.controls is not None:
        tic = time.perf_counter()
        results["controls"] = run_controls(
            config,
            fit_arrays,
            out / f"controls_{analysis.controls.num_steps}_steps",
            analysis.controls,
            analysis.statistics,
            eval_arrays=None if train_arrays is None else arrays,
        )
        results["controls"]["seconds"] = round(time.perf_counter() - tic, 1)
    results["seconds"] = round(time.perf_counter() - started, 1)
    results["figures"] = [os.path.basename(p) for p in pngs]
    with open(out / "analysis.json", "w") as handle:
        json.dump(results, handle, indent=2)
    (out / "report.md").write_text(render_report(results))
    return results
