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

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from usae_jax.config import USAEConfig
from usae_jax.model.usae import Encoded, decode_sparse, normalize_dictionary, top_k_codes
from usae_jax.train.losses import auxiliary_codes, reconstruction_loss
from usae_jax.train.state import TrainState
from usae_jax.train.steps import StepMetrics, mean_l0, update_every_model, update_firing


def stream_logits(model_params: dict, x: jax.Array) -> jax.Array:
    """Affine stream encoder ``x @ W + b``: ``[B, d] -> [B, n]``."""
    encoder = model_params["encoder"]
    return x @ encoder["kernel"] + encoder["bias"]


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
        codes = jnp.zeros_like(h).at[rows, indices].set(values)
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
    usae: USAEConfig, models: dict, batch: dict[str, jax.Array], sparsity: str | None = None
) -> dict[str, Encoded]:
    """Encode every stream of ``batch`` ``{stream: [B, d_s]}`` with its affine encoder.

    ``sparsity`` overrides ``usae.sparsity`` ("local_topk" evaluates a global-TopK model with
    per-stream supports, the fair setting for cross-stream retrieval).
    """
    logits = {name: stream_logits(models[name], batch[name]) for name in usae.model_names}
    rule = usae.sparsity if sparsity is None else sparsity
    if rule == "global_topk":
        return global_top_k(logits, usae.top_k)
    if rule == "local_topk":
        return local_top_k(logits, usae.top_k)
    raise ValueError(f"unknown sparsity {rule!r}: 'local_topk' or 'global_topk'")


def _error(x: jax.Array, x_hat: jax.Array, kind: str) -> jax.Array:
    difference = x - x_hat
    return jnp.mean(jnp.abs(difference) if kind == "l1_auxk" else jnp.square(difference))


def sparc_loss_matrix(
    usae: USAEConfig,
    models: dict,
    encoded: dict[str, Encoded],
    dead_masks: dict[str, jax.Array],
    batch: dict[str, jax.Array],
) -> jax.Array:
    """The SPARC loss terms as an ``[M, M]`` matrix (row = encoded stream, column = target).

    Entry ``(s, s)`` is the self reconstruction error plus ``c * AuxK_s``; entry ``(s, t)`` the
    error of decoding stream ``s``'s code with ``t``'s dictionary against ``x_t``. The SPARC loss
    is the sum of all entries.

    Args:
      encoded: ``{stream: Encoded}`` from :func:`encode_streams`.
      dead_masks: ``{stream: [n] bool}`` dead concepts of each stream.
      batch: ``{stream: [B, d_s]}`` targets.
    """
    names = usae.model_names
    units = {name: normalize_dictionary(models[name]["dictionary"]) for name in names}
    rows = []
    for source in names:
        enc = encoded[source]
        row = []
        for target in names:
            x_hat = decode_sparse(enc.top_values, enc.top_indices, units[target])
            if target == source:
                aux = auxiliary_codes(
                    enc.pre_codes,
                    enc.codes,
                    rule="dead_latents",
                    dead_mask=dead_masks[source],
                    dead_k_aux=usae.dead_k_aux,
                )
                row.append(
                    reconstruction_loss(
                        batch[target],
                        x_hat,
                        aux,
                        units[target],
                        kind=usae.loss,
                        aux_rule="dead_latents",
                        coefficient=usae.aux_coefficient,
                    )
                )
            else:
                row.append(_error(batch[target], x_hat, usae.loss))
        rows.append(jnp.stack(row))
    return jnp.stack(rows)


def make_sparc_step(
    usae: USAEConfig, optimizers: dict[str, optax.GradientTransformation]
) -> Callable[[TrainState, dict], tuple[TrainState, StepMetrics]]:
    """The SPARC training step (pure; jit it): every stream encoded, every stream updated.

    ``StepMetrics.target_losses`` ``[M]`` sums the loss matrix's columns (the terms decoded into
    each stream); ``l0`` is the mean count of non-zero codes per row and stream (at most ``k``).
    """
    names = usae.model_names

    def step(state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, StepMetrics]:
        dead = {n: state.tokens_since_fired[n] >= usae.dead_after_tokens for n in names}

        def loss_fn(models):
            encoded = encode_streams(usae, models, batch)
            matrix = sparc_loss_matrix(usae, models, encoded, dead, batch)
            return jnp.sum(matrix), (matrix, {n: encoded[n].codes for n in names})

        models = state.params["models"]
        grads, (matrix, codes) = jax.grad(loss_fn, has_aux=True)(models)
        new_models, new_opt = update_every_model(optimizers, grads, state.opt_states, models)
        new_state = state.replace(
            step=state.step + 1,
            params={**state.params, "models": new_models},
            opt_states=new_opt,
            tokens_since_fired={
                n: update_firing(state.tokens_since_fired[n], codes[n]) for n in names
            },
        )
        return new_state, StepMetrics(jnp.sum(matrix), jnp.sum(matrix, axis=0), mean_l0(codes))

    return step
