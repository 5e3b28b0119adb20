"""``report.md``: the analysis numbers of :func:`usae_jax.analysis.report.analyze`, readable."""

from __future__ import annotations


def _matrix(names, matrix) -> list[str]:
    lines = ["| from \\ to | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for name, row in zip(names, matrix, strict=True):
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in row) + " |")
    return lines


def _per_model(values: dict, fmt: str = "{:.3f}") -> str:
    return ", ".join(f"{name} {fmt.format(value)}" for name, value in values.items())


def render_report(r: dict) -> str:
    """The markdown report of an ``analysis.json`` dict (older files, written before the dead
    fractions and the R² encoding were named, render too)."""
    names = r["model_names"]
    encoding = r.get("r2_encoding", "local TopK")
    dead = r.get("dead_on_data", r.get("dead_fraction_never_nonzero"))
    dead_tau = r.get("dead_on_data_above_tau", r.get("dead_fraction_never_above_tau"))
    scatter = r["universality_vs_importance"]
    lines = [
        f"# Universality analysis of `{r['workdir']}` (step {r['step']})",
        "",
        f"{r['num_rows']} tokens, {len(names)} models ({', '.join(names)}), "
        f"{r['num_concepts']} concepts; each model encodes its own activations of every token, "
        f"BatchNorm in eval mode, {encoding} encoding. A concept fires when its code exceeds "
        f"tau = {r['tau']}. "
        f"Whole analysis: {r['seconds']} s (statistics and figures {r['seconds_core']} s).",
        "",
        "## Reconstruction: R² matrix",
        f"Row: encoding model; column: decoded model; {encoding} encoding. Scalar centring "
        "(official analysis code: one mean over all entries):",
        "",
        *_matrix(names, r["r2_scalar_centring"]),
        "",
        "Per-feature centring (1 - FVU):",
        "",
        *_matrix(names, r["r2_per_feature_centring"]),
        "",
        "![R²](r2_matrix.png)",
        "",
        "## Firing, co-firing, dead concepts",
        f"- Dead on the analysed data (never non-zero on these {r['num_rows']} rows): "
        f"{_per_model(dead, '{:.1%}')}",
        f"- Never above tau on these rows: {_per_model(dead_tau, '{:.1%}')}",
        f"- Mean co-fire proportion CFP (over concepts that fire for the model): "
        f"{_per_model(r['mean_cofire_proportion'])}",
        f"- Co-firing tokens (concept fires for every model), summed over concepts: "
        f"{r['cofire_tokens_total']} ({r['cofire_tokens_per_row']:.2f} per token)",
        f"- Universal concepts (firing entropy >= 0.8) among those that fire: "
        f"{r['universal_fraction']:.1%}",
        f"- Firing-entropy histogram (10 bins over [0, 1]): {r['firing_entropy_histogram']}",
        "",
        "![firing entropy](firing_entropy.png) ![co-firing](cofiring.png)",
        "",
        "Co-firing matrix: row i, column j = share of model i's firings on which the same concept "
        "also fires for model j.",
        "",
        *_matrix(names, r["cofiring_matrix"]),
        "",
        "## Universality vs importance",
        f"Pearson r of log10(co-fire count) vs log10(energy) over the {scatter['concepts_used']} "
        f"concepts where both are positive: **{scatter['pearson_r']:.3f}**; over the "
        f"{scatter['concepts_used_min_cofires']} with >= {scatter['min_cofires']} co-fires: "
        f"{scatter['pearson_r_min_cofires']:.3f}. Energy: the official unsquared "
        "||E_x[z_c] D̂_c|| per batch, averaged over batches, summed over models.",
        "",
        "![universality vs importance](universality.png)",
        "",
        "| concept | energy | firing entropy | co-fires | fire counts |",
        "|---|---|---|---|---|",
    ]
    for row in r["top_concepts_by_energy"][:10]:
        lines.append(
            f"| {row['concept']} | {row['energy']:.4f} | {row['firing_entropy']:.3f} | "
            f"{row['cofire_count']} | {_per_model(row['fire_counts'], '{}')} |"
        )
    if "planted" in r:
        p = r["planted"]
        lines += [
            "",
            "## Planted ground truth",
            "Each USAE concept's row in each model is matched to that model's best planted "
            "direction (cosine >= 0.5); *shared*: every model matches the same shared concept; "
            "*specific*: one model matches one of its private concepts, the others nothing; "
            "*packed*: several models match their own private concepts on one concept index. "
            f"Firing concepts: {p['num_shared']} shared, {p['num_specific']} specific, "
            f"{p['num_packed']} packed (mean firing entropy {p['mean_entropy_shared']:.3f}, "
            f"{p['mean_entropy_specific']:.3f}, {p['mean_entropy_packed']:.3f}).",
            "- AUROC of firing entropy, shared vs specific: "
            f"**{p['entropy_auroc_shared_vs_specific']:.3f}**; shared vs specific + packed: "
            f"{p['entropy_auroc_shared_vs_specific_and_packed']:.3f}",
            "- AUROC of the minimum co-fire proportion over models, shared vs specific + packed: "
            f"**{p['cofire_auroc_shared_vs_specific_and_packed']:.3f}**",
            f"- USAE recovery of the model-specific directions (mean max cosine): "
            f"{_per_model(p['usae_specific_recovery'])}",
        ]
    if "independent_saes" in r:
        b = r["independent_saes"]
        lines += [
            "",
            "## Independent SAEs",
            f"One TopK SAE per model (the same code and settings, M = 1), trained for "
            f"{b['num_steps']} steps (fewer than the USAE, to keep the analysis short; "
            f"{b['seconds']} s). Hungarian matching on 1 - cos; a match is cos > "
            f"{b['match_cosine']}. {b['num_universal']} universal concepts.",
            "",
            "| model | matched | random atoms | universal matched | unique to model | "
            "unique matched |",
            "|---|---|---|---|---|---|",
        ]
        for name in names:
            m = b[name]
            lines.append(
                f"| {name} | {m['matched_fraction']:.1%} | {m['random_atoms_matched_fraction']:.1%}"
                f" | {m['universal_matched_fraction']:.1%} | {m['num_unique']} | "
                f"{m['unique_matched_fraction']:.1%} |"
            )
        for name in names:
            lines.append(
                f"- {name}: universal missed {b[name]['universal_missed'][:20]}; unique concepts "
                f"{b[name]['unique_concepts'][:20]}"
            )
        if "planted_specific_found_fraction" in b[names[0]]:
            found = {n: b[n]["planted_specific_found_fraction"] for n in names}
            lines.append(
                "- Planted model-specific concepts (found by the USAE) for which one of their "
                "USAE rows is matched (Hungarian, cos > 0.5) by that model's independent SAE: "
                f"{_per_model(found, '{:.1%}')}"
            )
            lines.append(
                "- Independent SAEs' recovery of the planted model-specific directions (mean max "
                f"cosine): {_per_model(b['planted_specific_recovery'])}"
            )
    if "controls" in r:
        c = r["controls"]
        kinds = [k for k in ("real", "shuffled", "noise") if k in c]
        lines += [
            "",
            "## Controls: genuine vs imposed universality",
            f"Each row is a USAE trained for {c['num_steps']} steps ({c['seconds']} s in all) on: "
            f"real data (same budget), `{c['control_model']}`'s rows permuted against the other "
            f"models (shuffled), or `{c['control_model']}` replaced by Gaussian noise of its mean "
            f"and std (noise); each analysed on its own data. R²: {encoding} encoding, scalar "
            "centring.",
            "",
            "| run | co-fires per token | universal | mean CFP | mean cross-R² | mean self-R² |",
            "|---|---|---|---|---|---|",
            f"| main run | {r['cofire_tokens_per_row']:.3f} | {r['universal_fraction']:.1%} | "
            f"{sum(r['mean_cofire_proportion'].values()) / len(names):.3f} | "
            f"{r['mean_cross_r2']:.3f} | {r['mean_self_r2']:.3f} |",
        ]
        for kind in kinds:
            k = c[kind]
            lines.append(
                f"| {kind} | {k['cofire_tokens_per_row']:.3f} | {k['universal_fraction']:.1%} | "
                f"{sum(k['mean_cofire_proportion'].values()) / len(names):.3f} | "
                f"{k['mean_cross_r2']:.3f} | {k['mean_self_r2']:.3f} |"
            )
    lines += ["", "## Top examples (rows, highest energy concepts)", ""]
    for concept, per_model in r["examples"].items():
        lines.append(
            f"- concept {concept}: "
            + "; ".join(f"{name} rows {v['rows']}" for name, v in per_model.items())
        )
    example_figures = [f for f in r["figures"] if f == "top_tokens.png" or "_images" in f]
    lines += ["", " ".join(f"![{f}]({f})" for f in example_figures), ""]
    return "\n".join(lines)
