"""Cross-stream alignment of sparse codes: Jaccard overlap and cross-stream retrieval.

Inputs are codes ``[N, n]`` of ``N`` paired items (row ``r`` of every stream is the same item),
from any encoding. Two encodings of a SPARC model are reported (spec section 4):

* ``"shared_support"``: the model's own rule (global TopK: one support for all streams). The
  Jaccard overlap is then 1 by construction for a global-TopK model (minus relu zeros), so it
  says nothing about alignment; it is reported only to make that visible.
* ``"per_stream"``: every stream encoded by its own encoder with its own TopK (no information
  crosses streams). This is the fair setting, used for local and global models alike.
"""

from __future__ import annotations

import itertools

import jax
import numpy as np

from usae_jax.config import USAEConfig
from usae_jax.model.sparc import encode_streams


def jaccard(codes_a: np.ndarray, codes_b: np.ndarray) -> np.ndarray:
    """Per-item Jaccard overlap of the active (> 0) concepts: ``[N, n], [N, n] -> [N]``.

    Items where neither stream has an active concept count as 0.
    """
    a, b = np.asarray(codes_a) > 0, np.asarray(codes_b) > 0
    union = np.sum(a | b, axis=1)
    return np.sum(a & b, axis=1) / np.maximum(union, 1)


def partner_ranks(query: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Rank (1 = best) of the true partner of every query under cosine similarity.

    Args:
      query: ``[N, n]`` codes of stream A; item ``r`` is the query.
      keys: ``[N, n]`` codes of stream B; item ``r`` is the true partner of query ``r``.

    Returns:
      ``[N]`` int ranks: 1 + the number of keys strictly more similar than the partner (ties
      resolved in the partner's favour would flatter all-zero codes, so ties count against it).
    """
    q = np.asarray(query, np.float64)
    k = np.asarray(keys, np.float64)
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    k = k / np.maximum(np.linalg.norm(k, axis=1, keepdims=True), 1e-12)
    sims = q @ k.T
    true = np.diag(sims)[:, None]
    others = np.ones_like(sims, bool)
    np.fill_diagonal(others, False)
    return 1 + np.sum((sims >= true) & others, axis=1)


def retrieval(query: np.ndarray, keys: np.ndarray) -> dict[str, float]:
    """``recall@1``, ``recall@5``, ``mean_rank`` (and ``chance_mean_rank``) of A -> B retrieval."""
    ranks = partner_ranks(query, keys)
    return {
        "recall@1": float(np.mean(ranks <= 1)),
        "recall@5": float(np.mean(ranks <= 5)),
        "mean_rank": float(np.mean(ranks)),
        "chance_mean_rank": (len(ranks) + 1) / 2,
    }


def stream_codes(
    usae: USAEConfig, params: dict, batch: dict[str, np.ndarray], sparsity: str
) -> dict[str, np.ndarray]:
    """Codes ``{stream: [N, n]}`` of a SPARC-architecture model under ``sparsity``."""
    encoded = jax.jit(encode_streams, static_argnums=(0, 3))(
        usae, params["models"], batch, sparsity
    )
    return {name: np.asarray(enc.codes) for name, enc in encoded.items()}


def pair_report(codes: dict[str, np.ndarray]) -> dict:
    """Jaccard and retrieval (both directions) for every pair of streams, and their means."""
    pairs = {}
    for a, b in itertools.combinations(sorted(codes), 2):
        forward, backward = retrieval(codes[a], codes[b]), retrieval(codes[b], codes[a])
        pairs[f"{a}|{b}"] = {
            "jaccard": float(np.mean(jaccard(codes[a], codes[b]))),
            f"{a}->{b}": forward,
            f"{b}->{a}": backward,
            "recall@1": (forward["recall@1"] + backward["recall@1"]) / 2,
            "mean_rank": (forward["mean_rank"] + backward["mean_rank"]) / 2,
        }
    return {
        "pairs": pairs,
        "jaccard": float(np.mean([p["jaccard"] for p in pairs.values()])),
        "recall@1": float(np.mean([p["recall@1"] for p in pairs.values()])),
        "mean_rank": float(np.mean([p["mean_rank"] for p in pairs.values()])),
        "items": int(len(next(iter(codes.values())))),
    }


def alignment_report(usae: USAEConfig, params: dict, batch: dict[str, np.ndarray]) -> dict:
    """``{"per_stream": ..., "shared_support": ...}`` pair reports on held-out paired rows.

    ``per_stream`` (fair: each stream its own encoder and TopK) is the number to compare across
    models; ``shared_support`` uses ``usae.sparsity`` (for a local-TopK model both are equal).
    """
    return {
        "per_stream": pair_report(stream_codes(usae, params, batch, "local_topk")),
        "shared_support": pair_report(stream_codes(usae, params, batch, usae.sparsity)),
    }
