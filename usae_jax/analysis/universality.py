"""Universality measures derived from concept statistics (spec.md section 5), all plain numpy.

Shapes: ``M`` models, ``n`` concepts.
"""

from __future__ import annotations

import numpy as np

from usae_jax.model.usae import normalize_dictionary


def firing_entropy(fire_counts: np.ndarray) -> np.ndarray:
    """Normalised firing entropy ``FE_c = -(1/log M) sum_m p_m log p_m``: ``[M, n] -> [n]``.

    ``p_m = |F_c^m| / sum_m' |F_c^m'|``. 1 when a concept fires equally often for every model,
    0 when it fires for one model only, and 0 for a concept that never fires. With ``M = 1``
    every concept has entropy 0.
    """
    counts = np.asarray(fire_counts, np.float64)
    num_models = counts.shape[0]
    totals = counts.sum(axis=0)
    if num_models < 2:
        return np.zeros(counts.shape[1])
    p = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return -plogp.sum(axis=0) / np.log(num_models)


def cofire_proportion(cofire_counts: np.ndarray, fire_counts: np.ndarray) -> np.ndarray:
    """``CFP_c^m = |C_c| / |F_c^m|``: ``[n], [M, n] -> [M, n]``; NaN where ``|F_c^m| = 0``."""
    fires = np.asarray(fire_counts, np.float64)
    cofires = np.broadcast_to(np.asarray(cofire_counts, np.float64), fires.shape)
    return np.divide(cofires, fires, out=np.full_like(fires, np.nan), where=fires > 0)


def mean_cofire_proportion(cofire_counts: np.ndarray, fire_counts: np.ndarray) -> np.ndarray:
    """Per model, the mean of ``CFP_c^m`` over the concepts that fire for that model: ``[M]``."""
    proportions = cofire_proportion(cofire_counts, fire_counts)
    fired = np.isfinite(proportions)
    totals = np.where(fired, proportions, 0.0).sum(axis=1)
    return np.divide(totals, fired.sum(axis=1), out=np.zeros(len(totals)), where=fired.any(1))


def cofiring_matrix(pairwise_cofire: np.ndarray) -> np.ndarray:
    """``[M, M, n] -> [M, M]``: entry (i, j) is the fraction of model i's firings (summed over
    concepts) on which the same concept also fires for model j; the diagonal is 1."""
    pairs = np.asarray(pairwise_cofire, np.float64).sum(axis=-1)
    own = np.diag(pairs)[:, None]
    return np.divide(pairs, own, out=np.zeros_like(pairs), where=own > 0)


def energy_share(squared_activation_sum: np.ndarray) -> np.ndarray:
    """Each concept's share of a model's reconstruction energy: ``[M, n] -> [M, n]``.

    ``sum_x z_c(x)^2 ||D̂_c||^2 / sum_c' sum_x z_c'(x)^2`` with unit atoms; cross terms between
    atoms are left out, so the shares are of the diagonal energy and sum to 1 per model.
    """
    squares = np.asarray(squared_activation_sum, np.float64)
    totals = squares.sum(axis=1, keepdims=True)
    return np.divide(squares, totals, out=np.zeros_like(squares), where=totals > 0)


def pearson_r(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation of two 1-D arrays; NaN with fewer than 2 points or zero variance."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.size < 2:
        return float("nan")
    dx, dy = x - x.mean(), y - y.mean()
    denominator = np.sqrt(np.sum(dx * dx) * np.sum(dy * dy))
    return float(np.sum(dx * dy) / denominator) if denominator > 0 else float("nan")


def universality_vs_importance(
    cofire_counts: np.ndarray, energy: np.ndarray, min_cofires: int = 1000
) -> dict:
    """Pearson r of ``log10(co-fire count)`` vs ``log10(energy)`` (paper: 0.63; 0.89 with
    >= 1000 co-fires).

    Only concepts whose co-fire count and energy are both positive enter (a log needs it).

    Args:
      cofire_counts: ``[n]`` ``|C_c|``.
      energy: ``[n]`` importance summed over models.
      min_cofires: the second correlation uses only concepts with at least this many co-fires.
    """
    cofire_counts, energy = np.asarray(cofire_counts), np.asarray(energy)
    both = (cofire_counts > 0) & (energy > 0)
    many = both & (cofire_counts >= min_cofires)
    log_c = np.log10(np.where(both, cofire_counts, 1.0))
    log_e = np.log10(np.where(both, energy, 1.0))
    return {
        "pearson_r": pearson_r(log_c[both], log_e[both]),
        "concepts_used": int(both.sum()),
        "min_cofires": int(min_cofires),
        "pearson_r_min_cofires": pearson_r(log_c[many], log_e[many]),
        "concepts_used_min_cofires": int(many.sum()),
    }


def auroc(positive_scores: np.ndarray, negative_scores: np.ndarray) -> float:
    """Area under the ROC curve: P(positive score > negative score) + 0.5 P(tie).

    The Mann-Whitney statistic; NaN when either group is empty.
    """
    pos = np.asarray(positive_scores, np.float64).ravel()
    neg = np.asarray(negative_scores, np.float64).ravel()
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (pos.size * neg.size))


def _unit(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, np.float64)
    return rows / (np.linalg.norm(rows, axis=-1, keepdims=True) + 1e-12)


def label_planted_concepts(
    params: dict,
    model_names: tuple[str, ...],
    shared_directions: dict[str, np.ndarray],
    specific_directions: dict[str, np.ndarray],
    min_cosine: float = 0.5,
) -> dict:
    """Map every USAE concept to planted concepts by best cosine, separately for each model.

    For concept c and model m, c's row of model m's dictionary is matched to the planted
    direction of model m (shared or model-specific) with the highest cosine, if that cosine is
    at least ``min_cosine``. The concept's label then is:

    - "shared": every model's row matches the same planted shared concept;
    - "specific": exactly one model's row matches one of that model's specific concepts and no
      other row matches anything;
    - "packed": two or more models' rows match their own specific concepts (unrelated events
      that share one concept index: they fire for several models but do not co-fire);
    - "none": anything else (no match, or a partial/mixed match).

    Returns:
      ``{"labels": [n] str, "matches": [M, n] str such as "shared:12", "specific:3" or ""}``.
    """
    rows = []
    for name in model_names:
        atoms = _unit(np.asarray(normalize_dictionary(params["models"][name]["dictionary"])))
        candidates = [("shared", shared_directions[name]), ("specific", specific_directions[name])]
        best_cos = np.full(atoms.shape[0], -np.inf)
        best = np.full(atoms.shape[0], "", dtype=object)
        for kind, directions in candidates:
            if len(directions) == 0:
                continue
            cosines = atoms @ _unit(directions).T
            value, index = cosines.max(axis=1), cosines.argmax(axis=1)
            better = value > best_cos
            best_cos = np.where(better, value, best_cos)
            best = np.where(better, [f"{kind}:{i}" for i in index], best)
        rows.append(np.where(best_cos >= min_cosine, best, ""))
    matches = np.stack(rows).astype(str)  # [M, n]
    labels = np.full(matches.shape[1], "none", dtype=object)
    for c in range(matches.shape[1]):
        column = matches[:, c]
        kinds = [entry.split(":")[0] for entry in column if entry]
        if len(kinds) == len(column) and len(set(column)) == 1 and kinds[0] == "shared":
            labels[c] = "shared"
        elif kinds and set(kinds) == {"specific"}:
            labels[c] = "specific" if len(kinds) == 1 else "packed"
    return {"labels": labels.astype(str), "matches": matches}


def planted_separation(
    entropy: np.ndarray,
    min_cofire_proportion: np.ndarray,
    labels: np.ndarray,
    fired: np.ndarray,
) -> dict:
    """How well firing entropy (and co-firing) separate planted-shared from -specific concepts.

    Args:
      entropy: ``[n]`` firing entropy.
      min_cofire_proportion: ``[n]`` the smallest CFP over models (0 where a model never fires).
      labels: ``[n]`` from :func:`label_planted_concepts`.
      fired: ``[n]`` bool, concepts that fired at least once (never-firing concepts carry no
        evidence and are left out).

    Returns:
      Counts per label, the AUROC of firing entropy for shared vs "specific" (one model), for
      shared vs "specific" + "packed", and the AUROC of the minimum co-fire proportion for
      shared vs "specific" + "packed"; mean entropies per label.
    """
    shared = (labels == "shared") & fired
    specific = (labels == "specific") & fired
    packed = (labels == "packed") & fired
    either = specific | packed
    mean = lambda mask: float(entropy[mask].mean()) if mask.any() else float("nan")
    return {
        "num_shared": int(shared.sum()),
        "num_specific": int(specific.sum()),
        "num_packed": int(packed.sum()),
        "entropy_auroc_shared_vs_specific": auroc(entropy[shared], entropy[specific]),
        "entropy_auroc_shared_vs_specific_and_packed": auroc(entropy[shared], entropy[either]),
        "cofire_auroc_shared_vs_specific_and_packed": auroc(
            min_cofire_proportion[shared], min_cofire_proportion[either]
        ),
        "mean_entropy_shared": mean(shared),
        "mean_entropy_specific": mean(specific),
        "mean_entropy_packed": mean(packed),
    }
