"""Controls for genuine versus imposed universality (spec.md section 5).

The shared objective can make concepts co-fire even where the models share nothing. Two controls
measure how much: *shuffled* breaks the cross-model pairing (the rows of one model are permuted
against the others, so row r of that model is a different token), *noise* replaces one model by
Gaussian noise with its scalar mean and standard deviation. Each is trained with the same code
and settings as the real run, alongside a *real* reference trained for the same number of steps
(so the step budget does not confound the comparison), and analysed on its own data.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np

from usae_jax.analysis.statistics import StatisticsConfig, compute_statistics
from usae_jax.analysis.universality import firing_entropy, mean_cofire_proportion
from usae_jax.config import TrainConfig
from usae_jax.config_io import replace_fields
from usae_jax.data.source import ArraySource
from usae_jax.train.loop import train
from usae_jax.validation import require

CONTROL_KINDS = ("real", "shuffled", "noise")


@dataclasses.dataclass(kw_only=True, frozen=True)
class ControlConfig:
    """Which controls to train and how long."""

    num_steps: int = 200
    """Training steps of each control USAE (and of the same-budget real reference)."""

    kinds: tuple[str, ...] = CONTROL_KINDS
    """Runs to train: "real" (same-budget reference), "shuffled", "noise"."""

    control_model: str | None = None
    """The model whose rows are permuted or replaced by noise; None: the last model."""

    seed: int = 1
    """Seed of the permutation and of the noise."""

    universal_entropy: float = 0.8
    """Concepts with at least this firing entropy count as universal in the summary."""

    def __post_init__(self):
        object.__setattr__(self, "kinds", tuple(self.kinds))
        require(self.num_steps >= 1, "num_steps", self.num_steps, "must be >= 1")
        require(
            bool(self.kinds) and set(self.kinds) <= set(CONTROL_KINDS),
            "kinds",
            self.kinds,
            f"choose from {CONTROL_KINDS}",
        )
        entropy = self.universal_entropy
        require(0 <= entropy <= 1, "universal_entropy", entropy, "must be in [0, 1]")


def broken_pairing(arrays: dict[str, np.ndarray], name: str, seed: int) -> dict[str, np.ndarray]:
    """``arrays`` with the rows of model ``name`` permuted (the others untouched)."""
    permutation = np.random.default_rng(seed).permutation(len(arrays[name]))
    return {key: (value[permutation] if key == name else value) for key, value in arrays.items()}


def noise_replacement(arrays: dict[str, np.ndarray], name: str, seed: int) -> dict[str, np.ndarray]:
    """``arrays`` with model ``name`` replaced by Gaussian noise of its scalar mean and std."""
    original = np.asarray(arrays[name], np.float64)
    rng = np.random.default_rng(seed)
    noise = original.mean() + original.std() * rng.standard_normal(original.shape)
    return {
        key: (noise.astype(np.float32) if key == name else value) for key, value in arrays.items()
    }


def control_arrays(arrays: dict[str, np.ndarray], kind: str, name: str, seed: int):
    """The training data of control ``kind`` (see :data:`CONTROL_KINDS`)."""
    if kind == "real":
        return arrays
    if kind == "shuffled":
        return broken_pairing(arrays, name, seed)
    if kind == "noise":
        return noise_replacement(arrays, name, seed)
    raise ValueError(f"unknown control {kind!r}: choose from {CONTROL_KINDS}")


def universality_summary(statistics, universal_entropy: float = 0.8) -> dict:
    """Co-firing and cross-R² numbers of one run, for the side-by-side control table."""
    names = statistics.model_names
    entropy = firing_entropy(statistics.fire_counts)
    fired = statistics.fire_counts.sum(axis=0) > 0
    r2 = statistics.r2
    off_diagonal = ~np.eye(len(names), dtype=bool)
    return {
        "cofire_tokens_total": int(statistics.cofire_counts.sum()),
        "cofire_tokens_per_row": float(statistics.cofire_counts.sum() / statistics.num_rows),
        "mean_cofire_proportion": dict(
            zip(
                names,
                mean_cofire_proportion(statistics.cofire_counts, statistics.fire_counts).tolist(),
                strict=True,
            )
        ),
        "universal_fraction": float(np.mean(entropy[fired] >= universal_entropy))
        if fired.any()
        else 0.0,
        "r2_encoding": statistics.encoding,
        "r2_scalar_centring": r2.tolist(),
        "mean_self_r2": float(np.mean(np.diag(r2))),
        "mean_cross_r2": float(np.mean(r2[off_diagonal])) if off_diagonal.any() else float("nan"),
    }


def run_controls(
    config: TrainConfig,
    arrays: dict[str, np.ndarray],
    workdir: str | os.PathLike,
    control: ControlConfig | None = None,
    statistics_config: StatisticsConfig | None = None,
    eval_arrays: dict[str, np.ndarray] | None = None,
) -> dict:
    """Train and analyse every control run of ``control``; ``{kind: summary}`` plus settings.

    Each run is trained under ``config`` with ``control.num_steps`` steps into
    ``workdir/<kind>`` and analysed on its own (manipulated, standardised) data: ``arrays``, or
    ``eval_arrays`` (``{name: [rows', width]}``, e.g. held-out rows) when given, manipulated the
    same way (seed ``control.seed + 1``) and standardised with the training data's statistics.
    """
    control = control or ControlConfig()
    statistics_config = statistics_config or StatisticsConfig()
    names = config.usae.model_names
    target = control.control_model or names[-1]
    if target not in names:
        raise ValueError(f"control_model={target!r} is not one of {names}")
    short = replace_fields(
        dataclasses.replace(config, checkpoint_every=control.num_steps, progress_bar=False),
        num_steps=control.num_steps,
    )
    report = {
        "control_model": target,
        "num_steps": control.num_steps,
        "analysed_on": "separate evaluation rows" if eval_arrays is not None else "training rows",
    }
    for kind in control.kinds:
        source = ArraySource(control_arrays(arrays, kind, target, control.seed))
        result = train(short, os.path.join(workdir, kind), source)
        params, stats = jax.device_get((result.state.params, result.state.batch_stats))
        analysed = source
        if eval_arrays is not None:
            analysed = ArraySource(
                control_arrays(eval_arrays, kind, target, control.seed + 1),
                standardisation=source.standardisation,
            )
        statistics = compute_statistics(short.usae, params, stats, analysed, statistics_config)
        report[kind] = universality_summary(statistics, control.universal_entropy)
    return report
