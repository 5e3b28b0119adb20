"""The USAE forward pass as pure functions: encode (Linear -> BatchNorm -> ReLU -> TopK), decode.

Shapes: ``B`` rows, ``d`` model width, ``n`` concepts, ``k`` kept concepts per row.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

DICTIONARY_EPS = 1e-8
"""Added to each dictionary row's norm before dividing (official value)."""


class Encoded(NamedTuple):
    """An encoding of ``B`` rows into ``n`` concepts."""

    pre_codes: jax.Array
    """``[B, n]`` BatchNorm outputs before the ReLU (the AuxK rule reads these)."""

    codes: jax.Array
    """``[B, n]`` dense sparse code: the kept values of ``relu(pre_codes)``, zeros elsewhere."""

    top_values: jax.Array | None
    """``[B, k]`` the kept values (>= 0), in descending order; None for rules that keep a
    varying number per row (BatchTopK, L1), which decode ``codes`` densely."""

    top_indices: jax.Array | None
    """``[B, k]`` int32 concept index of each kept value (None with ``top_values``)."""


def batchnorm(
    params: dict,
    stats: dict,
    h: jax.Array,
    *,
    train: bool,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> tuple[jax.Array, dict]:
    """BatchNorm over the concept axis with torch ``BatchNorm1d`` semantics.

    Args:
      params: ``{"scale": [n], "bias": [n]}``.
      stats: ``{"mean": [n], "var": [n], "count": []}`` running statistics.
      h: ``[B, n]`` inputs.
      train: normalise with the batch statistics (biased variance) and return updated running
        statistics (unbiased variance, ``new = (1 - momentum) old + momentum batch``); otherwise
        normalise with the running statistics and return them unchanged.

    Returns:
      ``([B, n] normalised, new stats)``. Under ``jit`` with the batch sharded over devices the
      means are global, so the result equals the single-device one.
    """
    if train:
        rows = h.shape[0]
        mean = jnp.mean(h, axis=0)
        var = jnp.mean(jnp.square(h - mean), axis=0)
        unbiased = var * (rows / max(rows - 1, 1))
        new_stats = {
            "mean": (1 - momentum) * stats["mean"] + momentum * jax.lax.stop_gradient(mean),
            "var": (1 - momentum) * stats["var"] + momentum * jax.lax.stop_gradient(unbiased),
            "count": stats["count"] + 1,
        }
    else:
        mean, var, new_stats = stats["mean"], stats["var"], stats
    normalised = (h - mean) * jax.lax.rsqrt(var + eps)
    return normalised * params["scale"] + params["bias"], new_stats


def top_k_codes(activations: jax.Array, k: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Keep the ``k`` largest entries of each row of ``activations`` ``[B, n]``.

    Returns ``(dense [B, n], values [B, k], indices [B, k])``. Gradients reach the kept entries
    only, exactly as ``torch.topk`` followed by ``scatter``.
    """
    values, indices = jax.lax.top_k(activations, k)
    rows = jnp.arange(activations.shape[0])[:, None]
    dense = jnp.zeros_like(activations).at[rows, indices].set(values, unique_indices=True)
    return dense, values, indices


def encode(
    model_params: dict,
    stats: dict,
    x: jax.Array,
    *,
    top_k: int,
    train: bool,
    momentum: float = 0.1,
    eps: float = 1e-5,
    top_k_fn=None,
    compute_dtype=jnp.float32,
) -> tuple[Encoded, dict]:
    """Encode ``x`` ``[B, d]`` with one model's encoder; returns ``(Encoded, new stats)``.

    ``top_k_fn(activations, k) -> (dense, values, indices)`` replaces :func:`top_k_codes`, e.g.
    by the two-stage selection of :mod:`usae_jax.parallel.concept` (see
    :class:`usae_jax.model.sparse_ops.SparseOps`).
    """
    pre_codes, new_stats = pre_activations(
        model_params,
        stats,
        x,
        train=train,
        momentum=momentum,
        eps=eps,
        compute_dtype=compute_dtype,
    )
    with jax.named_scope("top_k"):
        codes, values, indices = (top_k_fn or top_k_codes)(jax.nn.relu(pre_codes), top_k)
    return Encoded(pre_codes, codes, values, indices), new_stats


def affine(model_params: dict, x: jax.Array, compute_dtype=jnp.float32) -> jax.Array:
    """The encoder's affine map ``x @ W + b``: ``[B, d] -> [B, n]`` (float32 result).

    ``compute_dtype=jnp.bfloat16`` runs the product on bfloat16 inputs with float32
    accumulation; the bias and everything after stay float32.
    """
    encoder = model_params["encoder"]
    kernel = encoder["kernel"]
    return (
        jnp.matmul(
            x.astype(compute_dtype),
            kernel.astype(compute_dtype),
            preferred_element_type=jnp.float32,
        )
        + encoder["bias"]
    )


def pre_activations(
    model_params: dict,
    stats: dict,
    x: jax.Array,
    *,
    train: bool,
    momentum: float = 0.1,
    eps: float = 1e-5,
    compute_dtype=jnp.float32,
) -> tuple[jax.Array, dict]:
    """``BatchNorm(x @ W + b)``: ``[B, d] -> [B, n]``, plus the new BatchNorm statistics.

    ``compute_dtype`` as in :func:`affine`; BatchNorm and everything after stay float32.
    """
    h = affine(model_params, x, compute_dtype)
    return batchnorm(model_params["batchnorm"], stats, h, train=train, momentum=momentum, eps=eps)


def normalize_dictionary(dictionary: jax.Array) -> jax.Array:
    """Row-normalised dictionary ``D / (||D||_row + 1e-8)``: ``[n, d] -> [n, d]``.

    Recomputed at every use and differentiated through, as the official code does.
    """
    norms = jnp.sqrt(jnp.sum(jnp.square(dictionary), axis=1, keepdims=True))
    return dictionary / (norms + DICTIONARY_EPS)


def decode_dense(codes: jax.Array, unit_dictionary: jax.Array) -> jax.Array:
    """Reference decode ``codes @ D̂``: ``[B, n] x [n, d] -> [B, d]`` (costs ``2 B n d`` FLOPs)."""
    return codes @ unit_dictionary


def decode_sparse(values: jax.Array, indices: jax.Array, unit_dictionary: jax.Array) -> jax.Array:
    """k-sparse decode by gathering ``k`` dictionary rows per input row.

    ``sum_k values[b, k] * D̂[indices[b, k]]``: ``[B, k], [B, k], [n, d] -> [B, d]``; the same
    math as :func:`decode_dense` on the dense code, at ``2 B k d`` instead of ``2 B n d`` FLOPs.
    """
    rows = jnp.take(unit_dictionary, indices, axis=0)
    return jnp.einsum(
        "bk,bkd->bd", values.astype(rows.dtype), rows, preferred_element_type=jnp.float32
    )


def decode_encoded(encoded: Encoded, atoms: jax.Array, sparse_decode=decode_sparse) -> jax.Array:
    """``[B, d]`` reconstruction from an encoding and dictionary rows ``atoms`` ``[n, d]``.

    k-sparse (``sparse_decode``, e.g. the concept-sharded one) when the encoding has per-row
    ``top_values``/``top_indices``; otherwise the dense ``codes @ atoms`` (BatchTopK, L1).
    """
    if encoded.top_indices is None:
        return jnp.matmul(
            encoded.codes.astype(atoms.dtype), atoms, preferred_element_type=jnp.float32
        )
    return sparse_decode(encoded.top_values, encoded.top_indices, atoms)


def decode(encoded: Encoded, dictionary: jax.Array) -> jax.Array:
    """Reconstruct one USAE/SPARC model's activations ``[B, d]`` from an encoding and its raw
    dictionary (used row-normalised)."""
    return decode_encoded(encoded, normalize_dictionary(dictionary))
