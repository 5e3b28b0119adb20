"""The crosscoder (Lindsey et al. 2024): one code read from every model at once.

Every model ``m`` (width ``d_m``, any widths) has an affine encoder and an unnormalised decoder
with a bias (:func:`usae_jax.model.params.init_crosscoder_params`)::

    f = relu(sum_m (x_m @ W_m + b_m))          one code [B, n] for the paired row
    x̂_m = f @ D_m + c_m                         D_m [n, d_m] raw, c_m [d_m]

The crosscoder's single encoder bias is the sum of the per-model biases ``b_m`` (equal in the
forward pass; under Adam each ``b_m`` takes its own step, so the sum moves up to ``M`` times as
fast as one bias would: a stated departure that keeps every model's parameters in one place).

Sparsity (``USAEConfig.sparsity``), each scoring concept ``c`` by ``f_c * w_c`` with
``w_c = sum_m ||D_m[c]||`` (the decoder-norm weighting of Lindsey et al. and Minder et al.;
the kept values are the unweighted ``f_c``; no gradient flows through the selection):

* ``"l1"``: every ``f_c`` is kept; the loss adds ``l1_coefficient * mean_rows sum_c f_c w_c``.
* ``"batch_topk"``: the ``B * k`` largest scores of the batch in training, scores above one
  running threshold at inference (:mod:`usae_jax.model.batch_topk`; Minder et al. 2025).
* ``"local_topk"``: the ``k`` largest scores of each row.

Shapes: ``B`` rows, ``d_m`` width of model ``m``, ``n`` concepts, ``k`` kept per row.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from usae_jax.config import USAEConfig
from usae_jax.model.batch_topk import batch_top_k_codes, threshold_codes
from usae_jax.model.usae import Encoded, affine, decode_encoded, decode_sparse, top_k_codes


def decoder_norm_sum(models: dict, names) -> jax.Array:
    """``[n]`` ``w_c = sum_m ||D_m[c]||``, the decoder-norm weight of every concept."""
    return sum(jnp.linalg.norm(models[name]["dictionary"], axis=1) for name in names)


def joint_pre_codes(usae: USAEConfig, models: dict, batch: dict, compute_dtype=None) -> jax.Array:
    """``sum_m (x_m @ W_m + b_m)``: ``{name: [B, d_m]} -> [B, n]`` (float32)."""
    dtype = jnp.dtype(usae.compute_dtype if compute_dtype is None else compute_dtype)
    return sum(affine(models[name], batch[name], dtype) for name in usae.model_names)


def encode_joint(
    usae: USAEConfig,
    models: dict,
    batch: dict[str, jax.Array],
    *,
    train: bool,
    threshold: jax.Array | None = None,
    top_k_fn=top_k_codes,
    compute_dtype=None,
) -> tuple[Encoded, jax.Array]:
    """The crosscoder's one code for a paired batch ``{name: [B, d_m]}``.

    Args:
      train: BatchTopK over the batch (True) or the inference ``threshold`` (False).
      threshold: scalar BatchTopK inference threshold (on the weighted scores).
      top_k_fn: per-row TopK (``(scores [B, n], k) -> (dense, values, indices)``), e.g. the
        concept-sharded two-stage one.

    Returns:
      ``(Encoded, scores [B, n])``: ``pre_codes`` the summed pre-activations, ``codes`` the kept
      ``f`` (with ``[B, k]`` values/indices for ``"local_topk"``, None otherwise), and the
      decoder-norm-weighted scores ``f * w`` the selection read.
    """
    pre = joint_pre_codes(usae, models, batch, compute_dtype)
    acts = jax.nn.relu(pre)
    weights = jax.lax.stop_gradient(decoder_norm_sum(models, usae.model_names))
    scores = acts * weights
    if usae.sparsity == "l1":
        return Encoded(pre, acts, None, None), scores
    if usae.sparsity == "batch_topk":
        if train:
            codes, _, _ = batch_top_k_codes(acts, usae.top_k, scores)
        else:
            codes = threshold_codes(acts, threshold, scores)
        return Encoded(pre, codes, None, None), scores
    if usae.sparsity == "local_topk":
        _, _, indices = top_k_fn(jax.lax.stop_gradient(scores), usae.top_k)
        values = jnp.take_along_axis(acts, indices, axis=1)
        rows = jnp.arange(acts.shape[0])[:, None]
        codes = jnp.zeros_like(acts).at[rows, indices].set(values, unique_indices=True)
        return Encoded(pre, codes, values, indices), scores
    raise ValueError(f"sparsity={usae.sparsity!r} is not a crosscoder rule")


def decode_model(model_params: dict, encoded: Encoded, sparse_decode=decode_sparse) -> jax.Array:
    """One model's reconstruction ``f @ D_m + c_m``: ``[B, d_m]`` (dictionary unnormalised)."""
    return (
        decode_encoded(encoded, model_params["dictionary"], sparse_decode)
        + model_params["decoder_bias"]
    )


def l1_penalty(encoded: Encoded, models: dict, names) -> jax.Array:
    """Scalar ``mean_rows sum_c f_c sum_m ||D_m[c]||`` (gradients reach codes and decoders)."""
    return jnp.mean(jnp.sum(encoded.codes * decoder_norm_sum(models, names), axis=1))
