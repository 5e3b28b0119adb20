"""Local (per-stream) vs global (SPARC) TopK on the same paired streams, same budget.

:func:`compare_local_global` trains one SPARC-architecture model per sparsity rule with the
shared train loop (same data order, init, loss and optimiser; only the TopK rule differs) on
the training rows, then scores both on held-out rows: Jaccard and retrieval per stream and on
the shared support (:mod:`usae_jax.analysis.sparc.alignment`), and optionally feature transfer from
one stream to another against an orthogonal Procrustes baseline
(:mod:`usae_jax.analysis.sparc.crossmodel`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Mapping

import jax
import numpy as np

from usae_jax.analysis.sparc.alignment import alignment_report
from usae_jax.analysis.sparc.crossmodel import transfer_report
from usae_jax.config import TrainConfig
from usae_jax.config_io import replace_fields
from usae_jax.data.source import ArraySource
from usae_jax.train.loop import train

RULES = ("local_topk", "global_topk")


def split_rows(num_rows: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint sorted ``(train, test)`` row indices; ``test_fraction`` of rows held out."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction={test_fraction}: must be in (0, 1)")
    order = np.random.default_rng([seed, 7]).permutation(num_rows)
    cut = max(1, int(round(num_rows * test_fraction)))
    return np.sort(order[cut:]), np.sort(order[:cut])


def compare_local_global(
    config: TrainConfig,
    workdir: str | os.PathLike,
    train_arrays: Mapping[str, np.ndarray],
    test_arrays: Mapping[str, np.ndarray],
    transfer: tuple[str, str] | None = None,
) -> dict:
    """Train local and global TopK SPARC models and report alignment on held-out rows.

    Args:
      config: a SPARC-architecture config (its ``sparsity`` is overridden per run).
      workdir: each run checkpoints into ``workdir/<rule>`` (re-running resumes).
      train_arrays, test_arrays: ``{stream: [N, d]}`` raw paired rows, disjoint items. The
        scalar standardisation is fitted on the training rows and applied to both.
      transfer: ``(model_a, model_b)`` to also report feature transfer A -> B.

    Returns:
      ``{rule: {"alignment", "transfer"?, "final", "train_seconds"}}`` (JSON-ready), also
      written to ``workdir/comparison.json``.
    """
    if config.usae.architecture != "sparc":
        raise ValueError('compare_local_global needs config.usae.architecture == "sparc"')
    source = ArraySource(dict(train_arrays), standardise=True)
    norm = source.standardisation
    train_std = {n: norm.apply(n, a) for n, a in train_arrays.items()}
    test_std = {n: norm.apply(n, a) for n, a in test_arrays.items()}
    report = {}
    for rule in RULES:
        run_config = dataclasses.replace(
            config, usae=dataclasses.replace(config.usae, sparsity=rule)
        )
        started = time.perf_counter()
        result = train(run_config, os.path.join(os.fspath(workdir), rule), source)
        run_config = result.config  # the streams bound from the data
        params = jax.device_get(result.state.params)
        entry = {
            "alignment": alignment_report(run_config.usae, params, test_std),
            "final": result.final_metrics,
            "train_seconds": round(time.perf_counter() - started, 1),
        }
        if transfer is not None:
            entry["transfer"] = transfer_report(
                run_config.usae, params, train_std, test_std, *transfer, seed=config.seed
            )
        report[rule] = entry
    with open(os.path.join(os.fspath(workdir), "comparison.json"), "w") as handle:
        json.dump(report, handle, indent=1)
    return report


def sparc_run_config(
    config: TrainConfig,
    *,
    num_concepts: int,
    top_k: int,
    steps: int,
    batch_rows: int,
    seed: int,
    learning_rate: float,
    eval_rows: int | None = None,
) -> TrainConfig:
    """A SPARC recipe (e.g. ``experiments.configs.sparc.get_config()``) resized for a comparison
    run, with a constant learning rate; the streams are bound from the data when training."""
    if config.usae.architecture != "sparc":
        raise ValueError('sparc_run_config needs config.usae.architecture == "sparc"')
    return replace_fields(
        config,
        num_concepts=num_concepts,
        top_k=top_k,
        num_steps=steps,
        batch_rows=batch_rows,
        seed=seed,
        learning_rate=learning_rate,
        final_lr=learning_rate,
        eval_rows=eval_rows,
    )


def compare_held_out(
    config: TrainConfig,
    workdir: str | os.PathLike,
    arrays: Mapping[str, np.ndarray],
    test_fraction: float,
    transfer: tuple[str, str] | None = None,
) -> dict:
    """Hold out ``test_fraction`` of the paired items (seeded by ``config.seed``), then
    :func:`compare_local_global` on the rest: ``arrays`` is ``{stream: [N, d]}``."""
    rows = len(next(iter(arrays.values())))
    train_rows, test_rows = split_rows(rows, test_fraction, config.seed)
    return compare_local_global(
        config,
        workdir,
        {n: a[train_rows] for n, a in arrays.items()},
        {n: a[test_rows] for n, a in arrays.items()},
        transfer=transfer,
    )


def format_comparison(report: dict) -> str:
    """A plain-text table of the headline numbers of :func:`compare_local_global`, naming the
    encoding behind each column (R²: each model's own rule; retrieval and transfer: per stream)."""
    lines = [
        f"{'rule':<12} {'encoding':<15} {'jaccard':>8} {'recall@1':>9} {'mean rank':>10}"
        f" {'self R2':>8} {'cross R2':>9}"
    ]
    for rule, entry in report.items():
        r2 = np.asarray(entry["final"]["r2"])
        off = r2[~np.eye(len(r2), dtype=bool)]
        for encoding in ("per_stream", "shared_support"):
            a = entry["alignment"][encoding]
            lines.append(
                f"{rule:<12} {encoding:<15} {a['jaccard']:>8.3f} {a['recall@1']:>9.3f}"
                f" {a['mean_rank']:>10.1f} {np.mean(np.diag(r2)):>8.3f} {np.mean(off):>9.3f}"
            )
    items = next(iter(report.values()))["alignment"]["per_stream"]["items"]
    lines.append(f"(held-out items: {items}; chance mean rank {(items + 1) / 2:.1f})")
    encodings = ", ".join(
        f"{rule}: {entry['final'].get('r2_encoding', 'local TopK')} encoding"
        for rule, entry in report.items()
    )
    lines.append(f"(self / cross R2: each model's own rule ({encodings}), scalar centring)")
    lines.append(
        "(per_stream: every stream its own encoder and TopK for both rules, on purpose: the fair "
        "cross-stream setting, spec section 4)"
    )
    if "transfer" in next(iter(report.values())):
        lines.append("")
        lines.append(f"{'rule':<12} {'feature transfer A->B':<22} {'mean r':>7} {'frac r>0.5':>10}")
        lines.append("(concept activations: each stream its own encoder and TopK, as per_stream)")
        for rule, entry in report.items():
            t = entry["transfer"]
            for key in (
                "sae_concept",
                "procrustes_concept",
                "sae_direction",
                "procrustes_direction",
                "shuffled_control",
            ):
                lines.append(
                    f"{rule:<12} {key:<22} {t[key]['mean_r']:>7.3f} {t[key]['frac_r>0.5']:>10.3f}"
                )
            lines.append(f"{rule:<12} ({t['concepts']} live concepts of A, {t['test_rows']} rows)")
    return "\n".join(lines)
