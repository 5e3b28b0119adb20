"""One call from a trained USAE over real networks to the splice table and concept effects
(what ``experiments/splice.py`` runs).

Reads the run (:func:`usae_jax.analysis.load.load_run`) and its store's standardisation and
layers, cuts every model's network at its layer with its head
(:func:`usae_jax.backbones.continuation.attach_head`), runs the images through every network
once, then splices (:mod:`usae_jax.analysis.splice`) and ablates concepts
(:mod:`usae_jax.analysis.splice_effects`). Writes ``OUT.json`` and ``OUT.png``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Mapping

import numpy as np

from usae_jax.analysis import splice, splice_effects, splice_report
from usae_jax.analysis.load import load_run, store_context
from usae_jax.backbones.continuation import attach_head
from usae_jax.backbones.registry import load_backbone
from usae_jax.data.images import ImageSource
from usae_jax.data.store import Store
from usae_jax.validation import require


@dataclasses.dataclass(frozen=True, kw_only=True)
class SpliceRunConfig:
    """How many images, and the concept-effect settings."""

    max_images: int = 32
    """Images of the source to evaluate (the first ones; ``len(source)`` when fewer)."""
    batch_images: int = 8
    """Images per forward pass (>= 2: the baseline takes codes of another image)."""
    mean_rows: int = 100_000
    """Store rows (evenly spaced) averaged for the mean-ablation token."""
    effects: bool = True
    """Also measure per-concept ablation effects and their agreement across networks."""
    effect: splice_effects.EffectConfig = splice_effects.EffectConfig()
    """Concept groups and control of the effects."""

    def __post_init__(self):
        require(self.max_images >= 2, "max_images", self.max_images, "must be >= 2")
        require(self.batch_images >= 2, "batch_images", self.batch_images, "must be >= 2")
        require(self.mean_rows >= 1, "mean_rows", self.mean_rows, "must be >= 1")


def token_means(store_dir: str | os.PathLike, rows: int) -> dict[str, np.ndarray]:
    """``{model: [d]}`` mean raw token of every store model over ``rows`` evenly spaced rows."""
    store = Store(store_dir, verify=False)
    ids = np.arange(0, store.num_rows, max(1, store.num_rows // rows))
    return {name: store.read(name, ids).astype(np.float64).mean(axis=0) for name in store.names}


def image_batches(source: ImageSource, count: int, size: int) -> list[np.ndarray]:
    """The first ``count`` images in batches of ``size`` (a last batch of one joins the one
    before it): uint8 ``[B, S, S, 3]`` each."""
    count = min(count, len(source))
    if count < 2:
        raise ValueError(f"need at least 2 images, the source has {len(source)}")
    starts = list(range(0, count, size))
    if count - starts[-1] == 1 and len(starts) > 1:
        starts.pop()
    ends = starts[1:] + [count]
    return [source.load_many(range(a, b)) for a, b in zip(starts, ends, strict=True)]


def splice_models(
    usae, store_dir, specs: Mapping[str, str], mean_rows: int = 100_000
) -> dict[str, splice.SpliceModel]:
    """Every USAE model as a :class:`~usae_jax.analysis.splice.SpliceModel`: the store's layer
    and standardisation, the backbone ``specs[key]`` (registry spec per store backbone key) and
    the mean token over ``mean_rows`` store rows."""
    context = store_context(store_dir)
    missing = {context["models"][n]["backbone"] for n in usae.model_names} - set(specs)
    if missing:
        raise ValueError(f"no --backbone spec for store backbone keys {sorted(missing)}")
    backbones = {key: load_backbone(specs[key]) for key in specs}
    means = token_means(store_dir, mean_rows)
    models = {}
    for name in usae.model_names:
        m = context["models"][name]
        cut = attach_head(specs[m["backbone"]], backbones[m["backbone"]], m["layer"])
        models[name] = splice.cut_model(name, cut, context["grid"], m["mean"], m["std"],
                                        means[name])  # fmt: skip
    return models


def splice_networks(
    workdir: str | os.PathLike,
    store_dir: str | os.PathLike,
    specs: Mapping[str, str],
    source: ImageSource,
    out: str,
    config: SpliceRunConfig = SpliceRunConfig(),
) -> dict:
    """Splice table (and concept effects) of the run in ``workdir``; writes ``out``.json/.png
    and returns the JSON's content."""
    tic = time.perf_counter()
    train_config, params, stats, step = load_run(workdir)
    usae = train_config.usae
    models = splice_models(usae, store_dir, specs, config.mean_rows)
    batches = image_batches(source, config.max_images, config.batch_images)
    observed = splice.observe_batches(models, batches)
    table = splice.run_splice(usae, params, stats, models, observed)
    seconds = {"splice": time.perf_counter() - tic}
    report = {"usae_step": step, "images": sum(len(b) for b in batches), "table": table}
    agreement = None
    if config.effects:
        tic_effects = time.perf_counter()
        counts = splice_effects.fire_counts(usae, params, stats, models, observed,
                                            config.effect.tau)  # fmt: skip
        groups = splice_effects.concept_groups(counts, config.effect)
        concepts = groups["universal"] + groups["unique"]
        effects = splice_effects.concept_effects(usae, params, stats, models, observed, concepts,
                                                 config.effect.seed)  # fmt: skip
        start = len(groups["universal"])
        index = {"universal": range(start), "unique": range(start, len(concepts))}
        index = {g: list(v) for g, v in index.items() if len(v) >= 2}
        agreement = splice_effects.effect_agreement(effects, list(models), index)
        report["effects"] = {
            "groups": groups,
            "agreement": agreement,
            "rankings": splice_effects.rankings(effects, list(models), concepts),
            "concepts": concepts,
            "models": list(models),
            "real": effects["real"].tolist(),
            "control": effects["control"].tolist(),
            "config": dataclasses.asdict(config.effect),
        }
        seconds["effects"] = time.perf_counter() - tic_effects
    seconds["total"] = time.perf_counter() - tic
    report["seconds"] = seconds
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out + ".json", "w") as handle:
        json.dump(report, handle, indent=1, allow_nan=True)
    splice_report.plot_splice(table, agreement, out + ".png")
    return report
