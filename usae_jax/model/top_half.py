"""The exact selection of the top-half AuxK rule: the ``keep`` largest entries of each row.

Both selections return the mask of the entries ``lax.top_k(values, keep)`` picks (the official
code's ``torch.topk``): ranked by the IEEE total order
(:func:`~usae_jax.model.batch_topk.total_order_keys`), ties broken by the lowest index. They
differ only in how they find each row's ``keep``-th largest key:

* :func:`top_half_mask`: a radix select in 32 fused counting passes, plain XLA; it runs on any
  device and under any sharding (its counts are reductions XLA partitions).
* :func:`host_top_half_mask`: ``numpy.partition`` (introselect, linear time) in a host callback,
  rows split over a thread pool. Several times faster on a CPU; for a step on one CPU device
  only (:func:`usae_jax.parallel.concept.sharded_ops` picks it), since a callback would gather a
  sharded batch to one device and on an accelerator copy it to the host.
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np

from usae_jax.model.batch_topk import total_order_keys


def _check(values: jax.Array, keep: int) -> None:
    if values.ndim != 2:
        raise ValueError(f"top_half_mask expects [B, n] values, got shape {values.shape}")
    if not jnp.issubdtype(values.dtype, jnp.floating) or values.dtype.itemsize > 4:
        raise TypeError(f"top_half_mask expects float32 or narrower floats, got {values.dtype}")
    if not 0 <= keep <= values.shape[1]:
        raise ValueError(f"keep must be in [0, {values.shape[1]}], got {keep}")


def _mask_at_threshold(keys: jax.Array, threshold: jax.Array, keep: int) -> jax.Array:
    """``[B, n]`` keys, ``[B]`` keep-th largest key per row -> the mask: every key above the
    threshold, and of those equal to it the first ones by index.

    The ranks of tied keys (a cumulative sum along the rows, the costliest pass here) are
    computed only when some row has more keys equal to its threshold than it can keep."""
    above = keys > threshold[:, None]
    tied = keys == threshold[:, None]
    missing = keep - jnp.sum(above, axis=1, dtype=jnp.int32)  # >= 1 unless keep == 0
    crowded_ties = jnp.any(jnp.sum(tied, axis=1, dtype=jnp.int32) > missing)

    def first_ties(above, tied, missing):
        tie_rank = jnp.cumsum(tied, axis=1, dtype=jnp.int32)  # 1, 2, ... along each row's ties
        return above | (tied & (tie_rank <= missing[:, None]))

    return jax.lax.cond(
        crowded_ties, first_ties, lambda above, tied, _: above | tied, above, tied, missing
    )


def top_half_mask(values: jax.Array, keep: int) -> jax.Array:
    """Boolean mask ``[B, n]`` of the entries ``lax.top_k(values, keep)`` selects in each row.

    Exactly ``keep`` entries per row, the same ones ``lax.top_k`` picks: ranked by the IEEE total
    order (``+NaN`` above ``+inf``, ``+0.0`` above ``-0.0``, denormals by value), ties broken by
    the lowest index. Zeros are therefore kept when a row has fewer than ``keep`` larger entries,
    as ``torch.topk`` keeps them in the official code (they add nothing to the auxiliary codes).
    A NaN is kept before any number, as ``lax.top_k`` does (training rejects NaN activations
    before they reach this function).

    Costs 32 fused counting passes and one cumulative sum instead of a sort: the ``keep``-th
    largest key of each row is found bit by bit (a radix select on the total-order keys);
    every entry above it is kept, and of those equal to it, the first ones by index.

    Args:
      values: ``[B, n]`` floating values (float32, or a narrower float, upcast exactly).
      keep: how many entries per row to keep, ``0 <= keep <= n``.
    """
    _check(values, keep)
    keys = total_order_keys(values)

    def next_bit(bit, threshold):
        # invariant: count(keys >= threshold) >= keep; try setting one more bit, highest first
        candidate = threshold | (jnp.uint32(1) << (31 - bit).astype(jnp.uint32))
        enough = jnp.sum(keys >= candidate[:, None], axis=1, dtype=jnp.int32) >= keep
        return jnp.where(enough, candidate, threshold)

    # the keep-th largest key of each row (all ones when keep == 0: nothing is above it)
    threshold = jax.lax.fori_loop(0, 32, next_bit, jnp.zeros((values.shape[0],), jnp.uint32))
    return _mask_at_threshold(keys, threshold, keep)


_WORKERS = max(1, os.cpu_count() or 1)
"""Threads of the host selection (``numpy.partition`` releases the GIL)."""


@functools.cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix="top_half")


def _threshold_and_limit(keys: np.ndarray, keep: int) -> tuple[np.ndarray, np.ndarray]:
    """``[B, n]`` uint32 keys -> ``([B] keep-th largest key, [B] tie limit)`` (``1 <= keep``).

    The mask is then ``keys > threshold | (keys == threshold & column < limit)``: exactly
    ``keep`` entries, ties at the threshold taken by the lowest index. ``limit`` is ``n`` in a
    row whose ties all fit (the usual case: found with one max over the entries
    ``numpy.partition`` put below the threshold); only the rest are searched one by one.
    """
    keys = np.asarray(keys)
    columns = keys.shape[1]
    index = columns - keep

    def rows(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        arranged = np.partition(block, index, axis=1)
        threshold = arranged[:, index]
        limit = np.full(len(block), columns, np.int32)
        if index > 0:  # a tie below the partition point means more ties than places
            for row in np.flatnonzero(arranged[:, :index].max(axis=1) == threshold):
                places = keep - np.count_nonzero(block[row] > threshold[row])
                limit[row] = np.flatnonzero(block[row] == threshold[row])[places - 1] + 1
        return threshold, limit

    blocks = [b for b in np.array_split(keys, _WORKERS) if len(b)]
    if len(blocks) <= 1:
        return rows(keys)
    parts = list(_pool().map(rows, blocks))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def host_top_half_mask(values: jax.Array, keep: int) -> jax.Array:
    """:func:`top_half_mask` with each row's ``keep``-th largest key, and where ties at it
    outnumber the places left, the column of the last tie taken, found on the host by
    ``numpy.partition`` (a callback; same mask, bit for bit). ``[B, n] -> [B, n]`` bool.

    The device part is one elementwise comparison: no counting pass, no cumulative sum.
    For a single CPU device: elsewhere the callback would gather the batch to one device or copy
    it to the host (see the module docstring).
    """
    _check(values, keep)
    keys = total_order_keys(values)
    if keep == 0:
        return jnp.zeros(values.shape, bool)
    rows = values.shape[0]
    threshold, limit = jax.pure_callback(
        functools.partial(_threshold_and_limit, keep=keep),
        (
            jax.ShapeDtypeStruct((rows,), jnp.uint32),
            jax.ShapeDtypeStruct((rows,), jnp.int32),
        ),
        keys,
        vmap_method="sequential",
    )
    column = jax.lax.broadcasted_iota(jnp.int32, values.shape, 1)
    at_threshold = keys == threshold[:, None]
    return (keys > threshold[:, None]) | (at_threshold & (column < limit[:, None]))
