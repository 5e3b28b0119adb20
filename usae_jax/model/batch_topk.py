"""BatchTopK (Bussmann, Leask, Nanda 2024): keep the ``B * k`` largest scores of a whole batch.

In training a batch of ``B`` rows keeps the ``B * k`` largest entries of its ``[B, n]`` scores
(every row and concept competing together), so rows keep different numbers of concepts, ``k``
on average. At inference no batch is at hand: every entry whose score exceeds one threshold
``theta`` is kept. ``theta`` is estimated during training as a running mean of the smallest
selected score of each batch (:func:`update_threshold`); the estimate lives in the training
state's batch statistics, ``batch_stats[name]["threshold"]`` (a scalar, -1 until the first
training batch; see :func:`usae_jax.model.params.init_batch_stats`).

The scores are the ReLU'd activations themselves (USAE), or for a crosscoder the activations
weighted by the sum of the concept's decoder norms over models (Minder et al. 2025), while the
kept *values* are always the unweighted activations.

The selection is exact (ties broken by the lowest row-major index, as ``lax.top_k`` of the
flattened scores) and written with global counts only, so under ``jit`` with rows and concepts
split over devices XLA partitions it without gathering the batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def total_order_keys(values: jax.Array) -> jax.Array:
    """``uint32`` keys (same shape) whose unsigned order is the IEEE total order of ``values``.

    Positive floats (denormals included) keep their bit pattern with the sign bit set; negative
    ones have every bit flipped. So ``-NaN < -inf < ... < -0.0 < +0.0 < denormals < ... < +inf <
    +NaN``: the order ``lax.top_k`` sorts by. Integer comparisons are unaffected by any
    flush-to-zero of denormals.
    """
    bits = jax.lax.bitcast_convert_type(values.astype(jnp.float32), jnp.uint32)
    negative = (bits >> 31) == 1
    return jnp.where(negative, ~bits, bits | jnp.uint32(0x80000000))


def batch_top_k_mask(scores: jax.Array, keep: int) -> jax.Array:
    """Boolean mask ``[B, n]`` of the ``keep`` largest entries of the whole batch ``scores``.

    The same entries as ``lax.top_k(scores.reshape(-1), keep)`` (ties by the lowest row-major
    index). The ``keep``-th largest key is found bit by bit with 32 global counting passes (a
    radix select), so no sort of the ``B * n`` entries and no gather of a sharded batch.

    Args:
      scores: ``[B, n]`` float32 (or narrower) scores.
      keep: entries to keep, ``0 <= keep <= B * n``.
    """
    if scores.ndim != 2:
        raise ValueError(f"batch_top_k_mask expects [B, n] scores, got shape {scores.shape}")
    if not 0 <= keep <= scores.size:
        raise ValueError(f"keep must be in [0, {scores.size}], got {keep}")
    keys = total_order_keys(scores)

    def next_bit(bit, threshold):
        # invariant: count(keys >= threshold) >= keep; try setting one more bit, highest first
        candidate = threshold | (jnp.uint32(1) << (31 - bit).astype(jnp.uint32))
        enough = jnp.sum(keys >= candidate, dtype=jnp.int32) >= keep
        return jnp.where(enough, candidate, threshold)

    threshold = jax.lax.fori_loop(0, 32, next_bit, jnp.zeros((), jnp.uint32))
    above = keys > threshold
    tied = keys == threshold
    missing = keep - jnp.sum(above, dtype=jnp.int32)
    per_row = jnp.sum(tied, axis=1, dtype=jnp.int32)
    before = jnp.cumsum(per_row) - per_row  # ties in earlier rows
    rank = before[:, None] + jnp.cumsum(tied, axis=1, dtype=jnp.int32)  # 1, 2, ... row-major
    return above | (tied & (rank <= missing))


def batch_top_k_codes(
    activations: jax.Array, k: int, scores: jax.Array | None = None
) -> tuple[jax.Array, None, None]:
    """Training-time BatchTopK: ``activations`` ``[B, n]`` (>= 0) kept where ``scores`` (default:
    the activations) are among the batch's ``B * k`` largest, zeros elsewhere.

    Returns ``(dense [B, n], None, None)``: the signature of a TopK function, with no per-row
    values and indices because rows keep different numbers of concepts (decode densely).
    Gradients reach the kept entries only.
    """
    scores = activations if scores is None else scores
    keep = min(activations.shape[0] * k, activations.size)
    mask = jax.lax.stop_gradient(batch_top_k_mask(jax.lax.stop_gradient(scores), keep))
    return jnp.where(mask, activations, 0.0), None, None


def threshold_codes(
    activations: jax.Array, threshold: jax.Array, scores: jax.Array | None = None
) -> jax.Array:
    """Inference-time BatchTopK: ``activations`` ``[B, n]`` kept where ``scores`` (default: the
    activations) exceed the scalar ``threshold``, zeros elsewhere. A threshold still at -1 (never
    trained) keeps every positive activation."""
    scores = activations if scores is None else scores
    return jnp.where(scores > threshold, activations, 0.0)


def smallest_selected(codes: jax.Array, scores: jax.Array | None = None) -> jax.Array:
    """Scalar: the smallest score among the selected (non-zero) entries of ``codes`` ``[B, n]``
    (0 when nothing was selected), the per-batch statistic the threshold averages."""
    scores = codes if scores is None else scores
    chosen = jnp.where(codes > 0, scores, jnp.inf)
    smallest = jnp.min(chosen)
    return jax.lax.stop_gradient(jnp.where(jnp.isfinite(smallest), smallest, 0.0))


def update_threshold(threshold: jax.Array, batch_min: jax.Array, momentum: float) -> jax.Array:
    """Running threshold: the first batch's ``batch_min`` while ``threshold < 0`` (unset), then
    ``(1 - momentum) * threshold + momentum * batch_min``."""
    blended = (1 - momentum) * threshold + momentum * batch_min
    return jnp.where(threshold < 0, batch_min, blended).astype(jnp.float32)
