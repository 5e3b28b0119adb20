"""Splice results as text and a figure: the per-pair table and the concept-effect agreement.

Input is what :mod:`usae_jax.analysis.splice` and :mod:`usae_jax.analysis.splice_effects`
return (plain dicts and lists, JSON-ready).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

CONDITIONS = ("self", "cross", "mean", "baseline")


def _cell(value: float, general: bool = False) -> str:
    if not math.isfinite(value):
        return "nan"
    return f"{value:.3g}" if general else f"{value:.3f}"


def format_table(rows: Sequence[Mapping]) -> str:
    """The per-pair table: KL recovered, KL and agreement under each condition."""
    pair = max(len(f"{r['source']} -> {r['target']}") for r in rows) + 2
    blocks = [("KL recovered", "kl_recovered"), ("KL", "kl"), ("agreement", "agreement")]
    lines = [" " * pair + "".join(f"{title:<40}" for title, _ in blocks)]
    lines.append(f"{'source -> target':<{pair}}" + "".join(f"{c:>10}" for c in CONDITIONS) * 3)
    for row in rows:
        cells = "".join(f"{_cell(row[c][key]):>10}" for _, key in blocks for c in CONDITIONS)
        lines.append(f"{row['source'] + ' -> ' + row['target']:<{pair}}{cells}")
    worst = max(row["clean"]["kl"] for row in rows)
    lines.append(f"clean splice (path check): max KL {worst:.2e}")
    return "\n".join(lines)


def format_agreement(agreement: Mapping, groups: Mapping[str, Sequence[int]]) -> str:
    """Mean Spearman rho of concept effects across target networks, real vs random control."""
    lines = ["concept-effect agreement across networks (mean Spearman rho over sources and pairs)"]
    for group, result in agreement.items():
        lines.append(
            f"  {group:<10} {len(groups[group]):>3} concepts: real {_cell(result['real'])}, "
            f"random directions of equal norm {_cell(result['control'])}"
        )
    return "\n".join(lines)


def plot_splice(rows: Sequence[Mapping], agreement: Mapping | None, path: str) -> None:
    """A PNG: KL recovered per ordered pair and condition (left), effect agreement real vs
    control per group (right, when given)."""
    panels = 2 if agreement else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 + 4 * panels, 4), squeeze=False)
    ax = axes[0][0]
    labels = [f"{r['source']}\n-> {r['target']}" for r in rows]
    width = 0.8 / 3
    for i, condition in enumerate(("self", "cross", "baseline")):
        values = [r[condition]["kl_recovered"] for r in rows]
        ax.bar([x + (i - 1) * width for x in range(len(rows))], values, width, label=condition)
    ax.axhline(0, color="k", lw=0.8)
    ax.axhline(1, color="grey", lw=0.8, ls="--")
    ax.set_xticks(range(len(rows)), labels, fontsize=7)
    ax.set_ylabel("KL recovered (1 = clean, 0 = mean ablation)")
    ax.legend(fontsize=8)
    ax.set_title("splice into the target's forward pass")
    if agreement:
        ax = axes[0][1]
        groups = list(agreement)
        for i, kind in enumerate(("real", "control")):
            values = [agreement[g][kind] for g in groups]
            ax.bar([x + (i - 0.5) * 0.4 for x in range(len(groups))], values, 0.4, label=kind)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks(range(len(groups)), groups)
        ax.set_ylabel("mean Spearman rho across networks")
        ax.legend(fontsize=8)
        ax.set_title("per-concept ablation effects")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


SECTION_TITLE = "## Splicing: does what the USAE reconstructs matter to the network?"


def markdown_section(report: Mapping, figure: str | None = None) -> str:
    """The splice results (``splice_networks``' JSON) as a section of an analysis report."""
    lines = [
        SECTION_TITLE,
        f"USAE step {report['usae_step']}, {report['images']} images. Per ordered pair "
        "(source -> target): the target's tokens replaced by its own reconstruction (self), by "
        "the source's code of the same image decoded into the target (cross), by the target's "
        "mean token (mean), or by the source's code of another image (baseline); KL of the "
        "target's output to its clean output, KL recovered = 1 - KL / KL(mean), agreement with "
        "the clean decision.",
        "",
        "```",
        format_table(report["table"]),
    ]
    if "effects" in report:
        lines.append(format_agreement(report["effects"]["agreement"], report["effects"]["groups"]))
    lines.append("```")
    seconds = ", ".join(f"{k} {v:.0f} s" for k, v in report["seconds"].items())
    lines.append(f"Run time: {seconds}.")
    if figure:
        lines += ["", f"![splice]({figure})"]
    return "\n".join(lines) + "\n"


def add_to_report(report_md: str, section: str) -> None:
    """Put ``section`` into the markdown file ``report_md``, replacing an earlier splice
    section (from its title to the next ``## `` heading) or appending it."""
    with open(report_md) as handle:
        text = handle.read()
    start = text.find(SECTION_TITLE)
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(SECTION_TITLE))
        text = text[:start] + section + ("" if end < 0 else text[end + 1 :])
    with open(report_md, "w") as handle:
        handle.write(text)
