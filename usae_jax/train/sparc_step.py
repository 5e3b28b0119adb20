"""The SPARC training step: every stream encoded and updated, self + cross reconstruction.

Encoders and TopK rules are the model's (:mod:`usae_jax.model.sparc`); the errors and the
dead-latent AuxK term are the losses' (:mod:`usae_jax.train.losses`). Loss (``M`` streams)::

    sum_s [ E(x_s, dec_s(z_s)) + c * AuxK_s ] + sum_{s != t} E(x_t, dec_t(z_s))
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from usae_jax.config import USAEConfig
from usae_jax.model.sparc import encode_streams
from usae_jax.model.usae import Encoded, decode_sparse, normalize_dictionary
from usae_jax.train.losses import auxiliary_codes, mean_error, reconstruction_loss
from usae_jax.train.state import TrainState
from usae_jax.train.updates import StepMetrics, mean_l0, update_every_model, update_firing


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
                row.append(mean_error(batch[target] - x_hat, usae.loss))
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
