"""SPARC: affine stream encoders, global TopK and the self + cross reconstruction objective.

SPARC (Nasiri-Sarvi et al. 2025) aligns *streams*, one global embedding per item (an image's
pooled embedding and its caption's, or one sentence through two language models), in one
concept space. Shapes: ``B`` rows (items), ``d_s`` width of stream ``s``, ``n`` concepts, ``k``
kept concepts, ``M`` streams.

* Stream encoders are affine, ``h_s = x_s @ W_s + b_s`` (no BatchNorm; the parameters carry no
  ``"batchnorm"`` entry, see :func:`usae_jax.model.params.init_params`).
* **Global TopK** (``USAEConfig.sparsity == "global_topk"``): ``k`` indices per row are picked
  once from ``sum_s h_s`` and every stream keeps its own ``relu(h_s)`` values on that shared
  support. **Local TopK** (``"local_topk"``): each stream keeps the top ``k`` of its own
  ``relu(h_s)``; trained with the same loss, this is SPARC's per-stream baseline.
* Loss (every stream is encoded and updated every step)::

      sum_s [ E(x_s, dec_s(z_s)) + c * AuxK_s ] + sum_{s != t} E(x_t, dec_t(z_s))

  with ``E`` the configured error (``"l2_auxk"``: mean squared error, ``"l1_auxk"``: mean
  absolute error), ``c = USAEConfig.aux_coefficient`` (1/32 in SPARC) and ``AuxK_s`` Gao et al.'s
  dead-latent term on stream ``s``'s self-reconstruction residual (``usae_jax.train.losses``, rule
  ``"dead_latents"``, dead = not fired in stream ``s`` for ``dead_after_tokens`` rows).

The official SPARC code also learns a pre-bias per stream and uses a per-row normalised MSE; we
keep the spec's plain affine encoder and the library's mean errors (a stated departure).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from usae_jax.config import USAEConfig
from usae_jax.model.usae import Encoded, affine, top_k_codes


def stream_logits(model_params: dict, x: jax.Array, compute_dtype=jnp.float32) -> jax.Array:
    """Affine stream encoder ``x @ W + b``: ``[B, d] -> [B, n]`` (the USAE encoder's
    :func:`~usae_jax.model.usae.affine`, without the BatchNorm)."""
    return affine(model_params, x, compute_dtype)


def global_top_k(logits: dict[str, jax.Array], k: int) -> dict[str, Encoded]:
    """Global TopK over streams: one support per row, each stream's own relu'd values.

    Args:
      logits: ``{stream: [B, n]}`` pre-activations of every stream.
      k: concepts kept per row.

    Returns:
      ``{stream: Encoded}``; every stream has the same ``top_indices`` ``[B, k]`` (the top ``k`` of
      ``sum_s logits[s]``), ``top_values = relu(logits[s])`` at those indices (not sorted, and
      possibly zero) and ``codes`` ``[B, n]`` the dense scatter of those values.
    """
    total = sum(logits.values())
    _, indices = jax.lax.top_k(jax.lax.stop_gradient(total), k)
    rows = jnp.arange(total.shape[0])[:, None]
    out = {}
    for name, h in logits.items():
        values = jax.nn.relu(jnp.take_along_axis(h, indices, axis=1))
        codes = jnp.zeros_like(h).at[rows, indices].set(values, unique_indices=True)
        out[name] = Encoded(h, codes, values, indices)
    return out


def local_top_k(logits: dict[str, jax.Array], k: int) -> dict[str, Encoded]:
    """Per-stream TopK: each stream keeps the top ``k`` of its own ``relu(logits)`` ``[B, n]``."""
    out = {}
    for name, h in logits.items():
        codes, values, indices = top_k_codes(jax.nn.relu(h), k)
        out[name] = Encoded(h, codes, values, indices)
    return out


def encode_streams(
    usae: USAEConfig,
    models: dict,
    batch: dict[str, jax.Array],
    sparsity: str | None = None,
    compute_dtype=None,
) -> dict[str, Encoded]:
    """Encode every stream of ``batch`` ``{stream: [B, d_s]}`` with its affine encoder.

    ``sparsity`` overrides ``usae.sparsity`` ("local_topk" evaluates a global-TopK model with
    per-stream supports, the fair setting for cross-stream retrieval); ``compute_dtype``
    overrides ``usae.compute_dtype`` (evaluation passes float32).
    """
    dtype = jnp.dtype(usae.compute_dtype if compute_dtype is None else compute_dtype)
    logits = {name: stream_logits(models[name], batch[name], dtype) for name in usae.model_names}
    rule = usae.sparsity if sparsity is None else sparsity
    if rule == "global_topk":
        return global_top_k(logits, usae.top_k)
    if rule == "local_topk":
        return local_top_k(logits, usae.top_k)
    raise ValueError(f"unknown sparsity {rule!r}: 'local_topk' or 'global_topk'")
