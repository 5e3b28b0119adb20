"""One call from data to a trained, exported, reported USAE (what ``experiments/train.py`` runs)."""

from __future__ import annotations

import json
import os

import jax
import numpy as np

from usae_jax.config import TrainConfig
from usae_jax.data.source import PairedSource
from usae_jax.data.synthetic.planted import PlantedData, shared_variance_share
from usae_jax.model.interop import export_safetensors, has_official_layout
from usae_jax.train.loop import TrainResult, train
from usae_jax.train.recovery import recovery, recovery_report

OUTPUTS = (
    "config.json",
    "metrics.jsonl",
    "losses.png",
    "r2_matrix.png",
    "summary.json",
    "checkpoints/",
    "export/",
)
"""What a run may write into its workdir (process 0 only; ``losses.png`` once metrics exist)."""


def written_outputs(workdir: str | os.PathLike) -> list[str]:
    """The entries of :data:`OUTPUTS` that exist in ``workdir``, in that order."""
    return [name for name in OUTPUTS if os.path.exists(os.path.join(workdir, name))]


def train_and_report(
    config: TrainConfig,
    workdir: str | os.PathLike,
    source: PairedSource,
    planted: PlantedData | None = None,
    stop_after: int | None = None,
) -> tuple[TrainResult, dict]:
    """Train (auto-resuming), export safetensors, write ``summary.json``; return both.

    The export is the official code's per-model format (encoder, BatchNorm, dictionary), which
    only a USAE has: SPARC and crosscoder runs are not exported
    (:func:`~usae_jax.model.interop.has_official_layout`).

    With ``planted`` ground truth the summary adds ``recovery``: per model, the mean over the
    planted shared concepts of the best cosine with a row of that model's dictionary;
    ``recovery_per_concept``: the same cosine for every planted concept, shared and model-specific
    separately, with its distribution and worst concepts
    (:func:`~usae_jax.train.recovery.recovery_report`); and ``shared_variance_share``: per
    model, the fraction of its variance the shared concepts carry in the generator
    (:func:`~usae_jax.data.synthetic.planted.shared_variance_share`).
    """
    result = train(config, workdir, source, stop_after=stop_after)
    summary = {**result.final_metrics, "seconds": round(result.seconds, 1)}
    if stop_after is not None and summary["steps"] < config.total_steps(source.num_rows):
        return result, summary
    params, stats = jax.device_get((result.state.params, result.state.batch_stats))
    if planted is not None:
        summary["recovery"] = recovery(params, planted)
        summary["recovery_per_concept"] = recovery_report(params, planted)
        summary["shared_variance_share"] = shared_variance_share(planted)
    if jax.process_index() == 0:
        if has_official_layout(params):
            export_safetensors(params, stats, os.path.join(workdir, "export"))
        with open(os.path.join(workdir, "summary.json"), "w") as handle:
            json.dump(summary, handle, indent=2)
    return result, summary


def format_summary(names: tuple[str, ...], summary: dict) -> str:
    """A short human-readable table of the summary (also of a ``summary.json`` written before
    the R² encoding and ``dead_recent`` were named: it read ``dead_fraction`` then)."""
    width = max(len(n) for n in names) + 2
    encoding = summary.get("r2_encoding", "local TopK")
    lines = [
        f"R² matrix (row: encoded from, column: decoded into; {encoding} encoding, scalar "
        f"centring, {summary['eval_rows']} rows)"
    ]
    values = [[f"{v:.3f}" for v in row] for row in np.asarray(summary["r2"])]
    # columns as wide as the names column, or wider where an entry (a negative R²) needs it
    cell = max(width, 1 + max((len(v) for row in values for v in row), default=0))
    lines.append(" " * width + "".join(f"{n:>{cell}}" for n in names))
    for name, row in zip(names, values, strict=True):
        lines.append(f"{name:<{width}}" + "".join(f"{v:>{cell}}" for v in row))
    lines.append("L0: " + ", ".join(f"{n} {summary['l0'][n]:.1f}" for n in names))
    dead = summary.get("dead_recent", summary.get("dead_fraction"))
    window = summary.get("dead_recent_rows")
    window = f"the last {window}" if window else "the last epoch's"
    lines.append(
        f"dead concepts (not fired in {window} training rows): "
        + ", ".join(f"{n} {dead[n]:.1%}" for n in names)
    )
    if "recovery" in summary:
        lines.append(
            "shared-concept recovery (mean max cosine): "
            + ", ".join(f"{n} {summary['recovery'][n]:.3f}" for n in names)
        )
    if "recovery_per_concept" in summary:
        lines.extend(format_recovery(names, summary["recovery_per_concept"]))
    if "shared_variance_share" in summary:
        lines.append(
            "variance carried by the shared concepts (planted generator): "
            + ", ".join(f"{n} {summary['shared_variance_share'][n]:.1%}" for n in names)
        )
    lines.append(f"steps: {summary['steps']}, wall time: {summary['seconds']:.0f} s")
    return "\n".join(lines)


def format_recovery(names: tuple[str, ...], report: dict) -> list[str]:
    """Lines of the per-concept recovery: concepts per cosine band, the minimum, the worst, and
    (shared) how many concepts have a best dictionary row that is also another concept's."""
    first = report[names[0]]["shared"]["bands"]
    lines = [f"per-concept max cosine, concepts per band {' / '.join(first)}; min; worst (id cos):"]
    width = max(len(n) for n in names)
    for name in names:
        for group in ("shared", "specific"):
            entry = report[name][group]
            worst = " ".join(f"{w['concept']}:{w['cosine']:.2f}" for w in entry["worst"])
            lines.append(
                f"  {name:<{width}} {group:<8} {entry['count']:>3}: "
                + " / ".join(str(n) for n in entry["bands"].values())
                + (f"; min {entry['min']:.3f}; worst {worst}" if entry["count"] else "")
                + (
                    f"; {report[name]['shared_rows_reused']} on a reused row"
                    if group == "shared"
                    else ""
                )
            )
    return lines
