"""The crosscoder training step: one code from every model, every model updated each step.

The encoder and sparsity rules are the model's (:mod:`usae_jax.model.crosscoder`). Loss, with
``E`` the configured error (``"l2_auxk"``: mean squared, ``"l1_auxk"``: mean absolute) and
``f`` the joint code::

    sum_m [ E(x_m, f D_m + c_m) + sum_i E(x_m, f[:, :m_i] D_m[:m_i] + c_m) + aux_m ]
      + l1_coefficient * mean_rows sum_c f_c sum_m ||D_m[c]||          (sparsity "l1" only)

with the Matryoshka prefixes ``m_i`` (``matryoshka_prefixes``; none by default) and ``aux_m``
the configured auxiliary term on model ``m``'s residual (TopK rules only: with ReLU codes there
is no unchosen code to revive). Lindsey et al. sum squared norms over features instead of
taking means; the scale is absorbed by ``l1_coefficient``. Only ``source_sampling="all"`` makes
sense: the code needs every model's rows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from usae_jax.config import USAEConfig
from usae_jax.model.batch_topk import smallest_selected, update_threshold
from usae_jax.model.crosscoder import encode_joint, l1_penalty
from usae_jax.model.sparse_ops import UNSHARDED, SparseOps
from usae_jax.train.losses import auxiliary_decode, configured_auxiliary_codes
from usae_jax.train.state import TrainState
from usae_jax.train.updates import StepMetrics, mean_l0, update_every_model, update_firing
from usae_jax.train.usae_step import target_loss


def crosscoder_losses(
    usae: USAEConfig,
    models: dict,
    batch: dict[str, jax.Array],
    dead_mask: jax.Array,
    threshold: jax.Array | None = None,
    ops: SparseOps = UNSHARDED,
):
    """``(per-model losses [M], L1 penalty [], Encoded, scores [B, n])`` of one training batch.

    Args:
      models: ``{name: crosscoder params}``.
      batch: ``{name: [B, d_name]}`` paired rows.
      dead_mask: ``[n]`` dead concepts (for the dead-latent auxiliary rule).
    """
    encoded, scores = encode_joint(
        usae, models, batch, train=True, threshold=threshold, top_k_fn=ops.top_k
    )
    if usae.sparsity == "l1":
        aux = jnp.zeros_like(encoded.codes)
        usae_no_aux = dataclasses.replace(usae, aux_coefficient=0.0)
    else:
        aux = configured_auxiliary_codes(usae, encoded, dead_mask, ops.top_half)
        usae_no_aux = usae
    if usae.sparsity == "l1":  # no auxiliary term: nothing to decode
        residual_hats = tuple(jnp.zeros_like(batch[name]) for name in usae.model_names)
    else:  # one product for every model
        residual_hats = auxiliary_decode(aux, [models[n]["dictionary"] for n in usae.model_names])
    active = jnp.any(aux != 0)
    losses = [
        target_loss(
            usae_no_aux,
            encoded,
            models[name]["dictionary"],
            batch[name],
            residual_hat,
            active,
            ops,
            models[name]["decoder_bias"],
        )
        for name, residual_hat in zip(usae.model_names, residual_hats, strict=True)
    ]
    penalty = 0.0
    if usae.sparsity == "l1":
        penalty = usae.l1_coefficient * l1_penalty(encoded, models, usae.model_names)
    return jnp.stack(losses), jnp.asarray(penalty, jnp.float32), encoded, scores


def make_crosscoder_step(
    usae: USAEConfig,
    optimizers: dict[str, optax.GradientTransformation],
    ops: SparseOps = UNSHARDED,
) -> Callable[[TrainState, dict], tuple[TrainState, StepMetrics]]:
    """The crosscoder step (pure; jit it). ``StepMetrics.target_losses`` ``[M]`` holds each
    model's reconstruction terms; ``loss`` adds the L1 penalty. BatchTopK updates the one
    running threshold, stored in every model's ``batch_stats[name]["threshold"]``."""
    names = usae.model_names
    first = names[0]

    def step(state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, StepMetrics]:
        dead = state.tokens_since_fired[first] >= usae.dead_after_tokens
        threshold = state.batch_stats[first].get("threshold")

        def loss_fn(models):
            losses, penalty, encoded, scores = crosscoder_losses(
                usae, models, batch, dead, threshold, ops
            )
            return jnp.sum(losses) + penalty, (losses, encoded.codes, scores)

        models = state.params["models"]
        (loss, (losses, codes, scores)), grads = jax.value_and_grad(loss_fn, has_aux=True)(models)
        new_models, new_opt = update_every_model(optimizers, grads, state.opt_states, models)
        stats = state.batch_stats
        if usae.sparsity == "batch_topk":
            smallest = smallest_selected(codes, scores)
            new = update_threshold(threshold, smallest, usae.batch_topk_momentum)
            stats = {name: {**stats[name], "threshold": new} for name in names}
        fired = update_firing(state.tokens_since_fired[first], codes)
        new_state = state.replace(
            step=state.step + 1,
            params={**state.params, "models": new_models},
            batch_stats=stats,
            opt_states=new_opt,
            tokens_since_fired=dict.fromkeys(names, fired),
        )
        return new_state, StepMetrics(loss, losses, mean_l0({first: codes}))

    return step
