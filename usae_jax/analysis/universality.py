"""Universality measures derived from concept statistics (spec.md section 5), all plain numpy.

Shapes: ``M`` models, ``n`` concepts.
"""

from __future__ import annotations

import numpy as np

from usae_jax.usae.model import normalize_dictionary


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
    """Map every USAE concept to its best-matching planted concept, by cosine per model.

    For concept c and model m, the candidates are model m's planted shared and model-specific
    unit directions; c takes the kind ("shared" or "specific") of the candidate with the highest
    cosine over all models, or "none" when that cosine is below ``min_cosine``.

    Returns:
      ``{"labels": [n] str array, "best_cosine": [n], "planted_index": [n] index of the
      matched planted concept within its kind, "model": [n] index of the model where it
      matched}``.
    """
    best = None
    for m, name in enumerate(model_names):
        atoms = _unit(np.asarray(normalize_dictionary(params["models"][name]["dictionary"])))
        for kind, directions in (("shared", shared_directions), ("specific", specific_directions)):
            if directions[name].shape[0] == 0:
                continue
            cosines = atoms @ _unit(directions[name]).T  # [n, planted]
            value, index = cosines.max(axis=1), cosines.argmax(axis=1)
            if best is None:
                best = {
                    "best_cosine": value,
                    "labels": np.full(value.shape, kind, dtype=object),
                    "planted_index": index,
                    "model": np.full(value.shape, m),
                }
                continue
            better = value > best["best_cosine"]
            best["best_cosine"] = np.where(better, value, best["best_cosine"])
            best["labels"] = np.where(better, kind, best["labels"])
            best["planted_index"] = np.where(better, index, best["planted_index"])
            best["model"] = np.where(better, m, best["model"])
    best["labels"] = np.where(best["best_cosine"] >= min_cosine, best["labels"], "none")
    best["labels"] = best["labels"].astype(str)
    return best


def planted_entropy_auroc(entropy: np.ndarray, labels: np.ndarray, fired: np.ndarray) -> dict:
    """How well firing entropy separates planted-shared from planted-specific USAE concepts.

    Args:
      entropy: ``[n]`` firing entropy.
      labels: ``[n]`` "shared" / "specific" / "none" from :func:`label_planted_concepts`.
      fired: ``[n]`` bool, concepts that fired at least once (never-firing concepts carry no
        evidence and are left out).
    """
    shared = (labels == "shared") & fired
    specific = (labels == "specific") & fired
    return {
        "auroc": auroc(entropy[shared], entropy[specific]),
        "num_shared": int(shared.sum()),
        "num_specific": int(specific.sum()),
        "mean_entropy_shared": float(entropy[shared].mean()) if shared.any() else float("nan"),
        "mean_entropy_specific": (
            float(entropy[specific].mean()) if specific.any() else float("nan")
        ),
    }
