"""The numbers of a real-network run: which concepts get CAM images, ``summary.json``, the printed
headline and the table that compares two budgets (:mod:`usae_jax.pipelines.real_networks`)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from usae_jax.data.store import read_manifest

MARGIN_KEYS = ("cofire_tokens_per_row", "universal_fraction", "mean_cross_r2", "mean_self_r2")
"""Control-summary numbers whose real-minus-control margins the summary reports."""


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def cam_concepts(analysis: dict, universal: int, unique: int, config) -> dict:
    """``{"universal": [ids], "unique": {model: [ids]}}`` chosen from ``analysis.json``.

    Universal: firing entropy at least ``config.universal_entropy`` and co-firing at least once,
    highest energy first. Unique to model m: m holds at least the baseline's ``specific_share``
    (0.9 without a baseline) of the concept's firings, highest energy first.
    """
    per = analysis["per_concept"]
    names = analysis["model_names"]
    energy = np.array([e if e is not None else -np.inf for e in per["energy"]])
    entropy = np.array([e if e is not None else 0.0 for e in per["firing_entropy"]])
    cofires = np.asarray(per["cofire_count"])
    counts = np.array([per["fire_counts"][n] for n in names], np.float64)
    totals = counts.sum(axis=0)
    order = np.argsort(-energy, kind="stable")
    is_universal = (entropy >= config.universal_entropy) & (cofires > 0)
    share = 0.9 if config.baseline is None else config.baseline.specific_share
    ratio = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    return {
        "universal": [int(c) for c in order[is_universal[order]][:universal]],
        "unique": {
            n: [int(c) for c in order[(ratio[m] >= share)[order]][:unique]]
            for m, n in enumerate(names)
        },
        "rule": {"universal_entropy": config.universal_entropy, "unique_share": share},
    }


def margins(controls: dict) -> dict:
    """Real minus each control for :data:`MARGIN_KEYS` and the mean co-fire proportion."""
    out = {}
    for kind in ("shuffled", "noise"):
        if kind not in controls or "real" not in controls:
            continue
        real, other = controls["real"], controls[kind]
        entry = {k: real[k] - other[k] for k in MARGIN_KEYS}
        mean = lambda s: float(np.mean(list(s["mean_cofire_proportion"].values())))  # noqa: E731
        entry["mean_cofire_proportion"] = mean(real) - mean(other)
        out[f"real_minus_{kind}"] = entry
    return out


def _held_out(analysis: dict) -> dict:
    names = analysis["model_names"]
    off = ~np.eye(len(names), dtype=bool)
    out = {
        "rows": analysis["num_rows"],
        "r2_encoding": analysis["r2_encoding"],
        "r2_scalar_centring": analysis["r2_scalar_centring"],
        "r2_per_feature_centring": analysis["r2_per_feature_centring"],
    }
    for key in ("scalar_centring", "per_feature_centring"):
        r2 = np.asarray(analysis[f"r2_{key}"])
        out[f"mean_self_r2_{key}"] = float(np.mean(np.diag(r2)))
        out[f"mean_cross_r2_{key}"] = float(np.mean(r2[off]))
    keys = ("dead_on_data", "dead_on_data_above_tau", "universal_fraction",
            "cofire_tokens_per_row", "mean_cofire_proportion", "firing_entropy_histogram",
            "cofiring_matrix")  # fmt: skip
    out |= {k: analysis[k] for k in keys}
    counts = analysis["per_concept"]["fire_counts"]
    out["firing_concepts"] = int((np.sum([counts[n] for n in names], axis=0) > 0).sum())
    scatter = analysis["universality_vs_importance"]
    out["universality_vs_importance"] = {
        k: scatter[k]
        for k in (
            "pearson_r",
            "concepts_used",
            "min_cofires",
            "pearson_r_min_cofires",
            "concepts_used_min_cofires",
        )  # fmt: skip
    }
    return out


def _baseline(analysis: dict) -> dict | None:
    base = analysis.get("independent_saes")
    if base is None:
        return None
    keys = ("matched_fraction", "random_atoms_matched_fraction", "mean_matched_cosine",
            "universal_matched_fraction", "num_unique", "unique_matched_fraction",
            "unique_concepts")  # fmt: skip
    out = {k: base[k] for k in ("match_cosine", "num_universal", "num_steps", "seconds")}
    for name in analysis["model_names"]:
        out[name] = {k: base[name][k] for k in keys}
    return out


def _cam(prefix: str) -> dict:
    report = json.loads(Path(prefix + ".json").read_text())
    rows = [
        {"concept": row["concept"]} | {
            n: {k: round(row[n][k], 3) for k in ("final_pre", "final_code", "best_natural_pre")}
            | {"best_natural_image": row[n]["best_natural_image"]}
            for n in report["models"]
        }
        for row in report["concepts"]
    ]  # fmt: skip
    return {"png": prefix + ".png", "seconds": report["seconds"], "concepts": rows}


def collect(config, paths, stages: dict, chosen: dict) -> dict:
    """Every number of the run, from the files its stages wrote."""
    images = _read(paths.images / "manifest.json")
    stores = {}
    for split in ("train", "held_out"):
        manifest = read_manifest(paths.store(split))
        stores[split] = {
            "views": len(manifest["image_ids"]),
            "rows": int(manifest["num_rows"]),
            "widths": {m["name"]: m["width"] for m in manifest["models"]},
        }
    training = _read(paths.usae / "summary.json")
    analysis = _read(paths.analysis / "analysis.json")
    controls = analysis.get("controls")
    done = _read(paths.cam / "done.json") or {"prefixes": []}
    summary = {
        "budget": config.budget,
        "networks": [dataclasses.asdict(n) for n in config.networks],
        "images": None
        if images is None
        else {
            "counts": images["counts"],
            "sources": {
                s: {k: v for k, v in info.items() if k != "rejected"}
                for s, info in images["sources"].items()
            },
        },  # fmt: skip
        "stores": stores,
        "training": training,
        "held_out": _held_out(analysis),
        "independent_saes": _baseline(analysis),
        "controls": controls,
        "margins": margins(controls) if controls else None,
        "cam_concepts": chosen,
        "cam": {Path(p).name: _cam(p) for p in done["prefixes"]},
        "explorer": _read(paths.explorer / "build.json"),
        "stages": stages,
        "total_stage_seconds": round(sum(s["seconds"] for s in stages.values()), 1),
        "peak_rss_mb": max((s["peak_rss_mb_after"] for s in stages.values()), default=None),
        "config": json.loads(json.dumps(dataclasses.asdict(config), default=str)),
    }
    return summary


def _matrix(names, matrix) -> list[str]:
    width = max(len(n) for n in names) + 2
    lines = [" " * width + "".join(f"{n:>{width}}" for n in names)]
    for name, row in zip(names, matrix, strict=True):
        lines.append(f"{name:<{width}}" + "".join(f"{v:>{width}.3f}" for v in row))
    return lines


def headline_numbers(summary: dict) -> dict[str, float]:
    """The numbers the budget comparison table lists, by label."""
    held = summary["held_out"]
    out = {
        "held-out mean self-R², scalar centring": held["mean_self_r2_scalar_centring"],
        "held-out mean cross-R², scalar centring": held["mean_cross_r2_scalar_centring"],
        "held-out mean self-R², per-feature centring": held["mean_self_r2_per_feature_centring"],
        "held-out mean cross-R², per-feature centring": held["mean_cross_r2_per_feature_centring"],
        "universal fraction of firing concepts (entropy >= 0.8)": held["universal_fraction"],
        "co-fires per token": held["cofire_tokens_per_row"],
        "universality vs importance r (all)": held["universality_vs_importance"]["pearson_r"],
    }
    names = [n["name"] for n in summary["networks"]]
    for n in names:
        out[f"co-fire proportion {n}"] = held["mean_cofire_proportion"][n]
    base = summary.get("independent_saes")
    if base:
        for n in names:
            out[f"USAE concepts matched by the independent SAE, {n}"] = base[n]["matched_fraction"]
            out[f"concepts unique to {n}"] = base[n]["num_unique"]
    for kind, entry in (summary.get("margins") or {}).items():
        out[f"co-fires per token, {kind.replace('_', ' ')}"] = entry["cofire_tokens_per_row"]
        out[f"mean cross-R², {kind.replace('_', ' ')}"] = entry["mean_cross_r2"]
    return out


def headline(summary: dict) -> str:
    """The printed summary of a run."""
    names = [n["name"] for n in summary["networks"]]
    held, stores = summary["held_out"], summary["stores"]
    lines = [
        f"real networks, budget {summary['budget']}: "
        + ", ".join(f"{n['name']} ({n['spec']} {n['layer']})" for n in summary["networks"]),
        f"stores: train {stores['train']['views']} views / {stores['train']['rows']} rows, "
        f"held out {stores['held_out']['views']} views / {stores['held_out']['rows']} rows",
    ]
    for key in ("scalar_centring", "per_feature_centring"):
        lines.append(f"held-out R² ({held['r2_encoding']} encoding, {key.replace('_', '-')}; "
                     "row: encoded from, column: decoded into)")  # fmt: skip
        lines += _matrix(names, held[f"r2_{key}"])
    scatter = held["universality_vs_importance"]
    lines.append(
        f"firing concepts {held['firing_concepts']}; universal (entropy >= 0.8) "
        f"{held['universal_fraction']:.1%}; co-fires per token "
        f"{held['cofire_tokens_per_row']:.3f}; "
        "co-fire proportion " + ", ".join(
            f"{n} {held['mean_cofire_proportion'][n]:.3f}" for n in names)
        + f"; universality vs importance r {scatter['pearson_r']:.3f} (all), "
        f"{scatter['pearson_r_min_cofires']:.3f} (>= {scatter['min_cofires']} co-fires, "
        f"{scatter['concepts_used_min_cofires']} concepts)"
    )  # fmt: skip
    base = summary.get("independent_saes")
    if base:
        lines.append(
            "independent SAEs: USAE concepts matched " + ", ".join(
                f"{n} {base[n]['matched_fraction']:.1%} (random atoms "
                f"{base[n]['random_atoms_matched_fraction']:.1%})" for n in names)
            + "; unique concepts " + ", ".join(f"{n} {base[n]['num_unique']}" for n in names)
        )  # fmt: skip
    controls = summary.get("controls")
    if controls:
        kinds = [k for k in ("real", "shuffled", "noise") if k in controls]
        lines.append(
            f"controls ({controls['num_steps']} steps each, {controls['control_model']} "
            "manipulated), " + " / ".join(kinds) + ": co-fires per token "
            + " / ".join(f"{controls[k]['cofire_tokens_per_row']:.3f}" for k in kinds)
            + "; universal " + " / ".join(f"{controls[k]['universal_fraction']:.1%}" for k in kinds)
            + "; mean cross-R² " + " / ".join(f"{controls[k]['mean_cross_r2']:.3f}" for k in kinds)
        )  # fmt: skip
        for kind, entry in summary["margins"].items():
            lines.append(f"  {kind.replace('_', ' ')}: " + ", ".join(
                f"{k} {v:+.3f}" for k, v in entry.items()))  # fmt: skip
    for tag, item in summary["cam"].items():
        cells = "; ".join(
            f"{row['concept']}: " + ", ".join(
                f"{n} {row[n]['final_pre']:.2f}/{row[n]['best_natural_pre']:.2f}"
                for n in names if n in row)
            for row in item["concepts"])  # fmt: skip
        lines.append(f"CAM {tag} (final / best held-out image, token-mean pre-activation): {cells}")
    if summary.get("explorer"):
        e = summary["explorer"]
        lines.append(f"explorer: {e['files']} files, {e['bytes'] / 1e6:.1f} MB, built in "
                     f"{e['seconds']} s")  # fmt: skip
    lines.append("stages: " + ", ".join(
        f"{k} {v['seconds']:.0f} s" for k, v in summary["stages"].items())
        + f"; total {summary['total_stage_seconds']:.0f} s; peak memory "
        f"{summary['peak_rss_mb']:.0f} MB")  # fmt: skip
    return "\n".join(lines)


def compare_budgets(runs: dict[str, dict]) -> str:
    """A markdown table of :func:`headline_numbers` per run (``{label: summary}``) and the
    difference between the last and the first."""
    labels = list(runs)
    numbers = {label: headline_numbers(s) for label, s in runs.items()}
    keys = list(numbers[labels[-1]])
    lines = ["| number | " + " | ".join(labels) + f" | {labels[-1]} - {labels[0]} |",
             "|---|" + "---|" * (len(labels) + 1)]  # fmt: skip
    for key in keys:
        values = [numbers[label].get(key) for label in labels]
        cells = [f"{v:.3f}" if isinstance(v, float) else str(v) for v in values]
        diff = values[-1] - values[0] if None not in (values[0], values[-1]) else None
        diff_cell = "" if diff is None else (f"{diff:+.3f}" if isinstance(diff, float) else
                                             f"{diff:+d}")  # fmt: skip
        lines.append(f"| {key} | " + " | ".join(cells) + f" | {diff_cell} |")
    stage = lambda s: f"{s['total_stage_seconds']:.0f} s, {s['peak_rss_mb']:.0f} MB"  # noqa: E731
    lines.append("| run time (sum of stages), peak memory | "
                 + " | ".join(stage(runs[label]) for label in labels) + " | |")  # fmt: skip
    return "\n".join(lines)
