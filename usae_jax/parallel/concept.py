"""Splitting the concept axis over devices: TopK in two stages and a sharded decode.

Every model's encoder kernel ``[d, n]``, BatchNorm parameters and statistics ``[n]``, dictionary
``[n, d]`` and their AdamW moments are split along the ``n`` concepts over the ``"model"`` axis;
batches are split along rows over ``"data"``. Matrix products, BatchNorm and the AuxK threshold
search are partitioned by XLA (GSPMD) from these shardings. Two steps are written per device with
``jax.shard_map`` because their partitioning is the point:

* TopK in two stages: each device keeps the top ``k`` of its own concepts, the ``k x shards``
  candidates are gathered, and the top ``k`` of those are kept. The global top ``k`` is always
  among the candidates, so the result equals the unsharded one.
* The k-sparse decode: each device gathers the selected rows it owns and the partial sums are
  added over ``"model"`` (one all-reduce of ``[B, d]``), so no device ever holds the whole
  dictionary.

Memory per device, float32: parameters and two AdamW moments are ``3 x 4 x (2 d + 4) n / s``
bytes per model for ``s`` concept shards, plus activations of about ``6 x 4 x (B / p) n / s``
bytes (pre-codes, codes, auxiliary codes and their gradients) for ``p`` data shards.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec

from usae_jax.model.sparse_ops import ONE_CPU, UNSHARDED, SparseOps
from usae_jax.parallel.mesh import DATA, MODEL


def two_stage_top_k(mesh: Mesh):
    """``top_k_fn(activations [B, n], k) -> (dense [B, n], values [B, k], indices [B, k])``.

    ``activations`` are split as ``P("data", "model")``; the dense code keeps that layout and
    values/indices are split over ``"data"`` only (every concept shard holds them).
    """

    def per_device(activations, k):
        rows, local_n = activations.shape
        offset = jax.lax.axis_index(MODEL) * local_n
        values, indices = jax.lax.top_k(activations, min(k, local_n))
        candidates = jax.lax.all_gather(values, MODEL, axis=1, tiled=True)
        candidate_ids = jax.lax.all_gather(indices + offset, MODEL, axis=1, tiled=True)
        top_values, position = jax.lax.top_k(candidates, k)
        top_indices = jnp.take_along_axis(candidate_ids, position, axis=1)
        local = top_indices - offset
        owned = (local >= 0) & (local < local_n)
        dense = (
            jnp.zeros_like(activations)
            .at[jnp.arange(rows)[:, None], jnp.where(owned, local, local_n)]
            .set(top_values, mode="drop")
        )
        return dense, top_values, top_indices

    def top_k_fn(activations, k):
        return jax.shard_map(
            lambda a: per_device(a, k),
            mesh=mesh,
            in_specs=PartitionSpec(DATA, MODEL),
            out_specs=(PartitionSpec(DATA, MODEL), PartitionSpec(DATA), PartitionSpec(DATA)),
            check_vma=False,
        )(activations)

    return top_k_fn


def sharded_decode(mesh: Mesh):
    """``decode(values [B, k], indices [B, k], unit_dictionary [n, d]) -> [B, d]``, ``n`` split."""

    def per_device(values, indices, unit_dictionary):
        local_n = unit_dictionary.shape[0]
        local = indices - jax.lax.axis_index(MODEL) * local_n
        owned = (local >= 0) & (local < local_n)
        rows = jnp.take(unit_dictionary, jnp.clip(local, 0, local_n - 1), axis=0)
        partial = jnp.einsum("bk,bkd->bd", jnp.where(owned, values, 0.0), rows)
        return jax.lax.psum(partial, MODEL)

    def decode(values, indices, unit_dictionary):
        return jax.shard_map(
            per_device,
            mesh=mesh,
            in_specs=(PartitionSpec(DATA), PartitionSpec(DATA), PartitionSpec(MODEL, None)),
            out_specs=PartitionSpec(DATA),
            check_vma=False,
        )(values, indices, unit_dictionary)

    return decode


def sharded_ops(mesh: Mesh) -> SparseOps:
    """The sparse operations of a step on ``mesh``: the concept-sharded TopK and decode when
    ``"model"`` has size > 1; otherwise the plain ones, with the host top-half selection when
    the mesh is a single CPU device."""
    if mesh.shape[MODEL] == 1:
        if mesh.devices.size == 1 and mesh.devices.flat[0].platform == "cpu":
            return ONE_CPU
        return UNSHARDED
    return SparseOps(top_k=two_stage_top_k(mesh), decode=sharded_decode(mesh))
