"""Cross-model feature transfer (a feature of model A -> its counterpart in model B).

Evaluated on held-out paired rows (the same sentences through both models) by the Pearson
correlation of the feature's activation in A with its counterpart's activation in B:

* **SAE concept id**: concept ``c`` of A (``z_A(x_A)[c]``, A's encoder) -> the same id in B
  (``z_B(x_B)[c]``, B's encoder; per-stream TopK for both).
* **Procrustes concept** (Atlas-Alignment's best mapping, arXiv:2510.27413): an orthogonal map
  ``R`` from B's activations to A's, fitted on the training rows only; B's counterpart of
  concept ``c`` is ``z_A(x_B R)[c]`` (A's labelled concept space applied to mapped B).
* **Directions**: a concept's decoder direction ``u = D̂_A[c]`` read out linearly, ``x_A u``,
  against the SAE's ``x_B D̂_B[c]`` or Procrustes' ``x_B (R u)``.

Correlations are averaged over the concepts active (> 0) in A on at least ``min_active``
held-out rows; a row-shuffled control gives the chance level.
"""

from __future__ import annotations

import jax
import numpy as np

from usae_jax.config import USAEConfig
from usae_jax.model.sparc import encode_streams
from usae_jax.model.usae import normalize_dictionary


def orthogonal_procrustes(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``R`` minimising ``||source R - target||_F`` with orthonormal columns or rows.

    ``[N, d_s], [N, d_t] -> [d_s, d_t]``: ``R = U V^T`` from ``svd(source^T target)`` (semi-
    orthogonal when the widths differ). Centre both inputs first.
    """
    u, _, vt = np.linalg.svd(
        np.asarray(source, np.float64).T @ np.asarray(target, np.float64), full_matrices=False
    )
    return u @ vt


def column_correlations(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r of matching columns: ``[N, c], [N, c] -> [c]`` (NaN where one is constant)."""
    a = np.asarray(a, np.float64) - np.mean(a, axis=0)
    b = np.asarray(b, np.float64) - np.mean(b, axis=0)
    denominator = np.sqrt(np.sum(a * a, axis=0) * np.sum(b * b, axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, np.sum(a * b, axis=0) / denominator, np.nan)


def _summary(r: np.ndarray, live: np.ndarray) -> dict[str, float]:
    r = np.where(np.isnan(r), 0.0, r)[live]  # a counterpart that never fires correlates 0
    if r.size == 0:
        return {"mean_r": float("nan"), "median_r": float("nan"), "frac_r>0.5": float("nan")}
    return {
        "mean_r": float(np.mean(r)),
        "median_r": float(np.median(r)),
        "frac_r>0.5": float(np.mean(r > 0.5)),
    }


def transfer_report(
    usae: USAEConfig,
    params: dict,
    train: dict[str, np.ndarray],
    test: dict[str, np.ndarray],
    model_a: str,
    model_b: str,
    min_active: int = 5,
    seed: int = 0,
) -> dict:
    """Feature transfer from ``model_a`` to ``model_b`` on ``test`` rows; Procrustes on ``train``.

    Args:
      usae, params: a SPARC-architecture model over both streams.
      train, test: ``{stream: [N, d_stream]}`` standardised paired rows (disjoint items).
      min_active: a concept of A counts when it fires on at least this many test rows.

    Returns:
      ``{"concepts": live count, "sae_concept", "procrustes_concept", "sae_direction",
      "procrustes_direction", "shuffled_control": {mean_r, median_r, frac_r>0.5}}``.
    """
    mean_a, mean_b = train[model_a].mean(0), train[model_b].mean(0)
    r_ba = orthogonal_procrustes(train[model_b] - mean_b, train[model_a] - mean_a)  # [d_b, d_a]
    mapped = ((test[model_b] - mean_b) @ r_ba + mean_a).astype(np.float32)

    encode = jax.jit(encode_streams, static_argnums=(0, 3))
    codes = encode(usae, params["models"], test, "local_topk")
    z_a, z_b = np.asarray(codes[model_a].codes), np.asarray(codes[model_b].codes)
    z_mapped = np.asarray(
        encode(usae, params["models"], {**test, model_a: mapped}, "local_topk")[model_a].codes
    )
    live = np.sum(z_a > 0, axis=0) >= min_active

    unit_a = np.asarray(normalize_dictionary(params["models"][model_a]["dictionary"]))
    unit_b = np.asarray(normalize_dictionary(params["models"][model_b]["dictionary"]))
    read_a = test[model_a] @ unit_a.T  # [N, n]
    read_b_sae = test[model_b] @ unit_b.T
    read_b_procrustes = test[model_b] @ (r_ba @ unit_a.T)  # x_B R u, u = D̂_A[c]
    shuffled = np.random.default_rng(seed).permutation(len(z_b))
    return {
        "concepts": int(np.sum(live)),
        "test_rows": int(len(z_a)),
        "sae_concept": _summary(column_correlations(z_a, z_b), live),
        "procrustes_concept": _summary(column_correlations(z_a, z_mapped), live),
        "sae_direction": _summary(column_correlations(read_a, read_b_sae), live),
        "procrustes_direction": _summary(column_correlations(read_a, read_b_procrustes), live),
        "shuffled_control": _summary(column_correlations(z_a, z_b[shuffled]), live),
    }
