"""The USAE training steps, as pure functions of ``(state, batch)``.

``"random_one"`` (official): the host draws a source model ``i``; ``z = encode_i(x_i)``; for every
model ``j`` ``x̂_j = decode_j(z)``; ``loss = sum_j L(x_j, x̂_j)``; only model ``i``'s parameters,
BatchNorm statistics and optimiser state change. The step is specialised on ``i`` (one
compilation per model), so gradients are computed for model ``i`` alone: the other dictionaries
enter as constants.

``"all"`` (a departure): every model encodes its own rows, all ``M x M`` reconstructions are
summed, every model is updated with the gradient of that sum.

Both take any sparsity rule of the USAE encoder: per-row TopK (``"local_topk"``) or BatchTopK
(``"batch_topk"``, whose step also updates the model's running inference threshold in its batch
statistics), and add the Matryoshka prefix errors when ``matryoshka_prefixes`` is set.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from usae_jax.config import USAEConfig
from usae_jax.model.batch_topk import batch_top_k_codes, smallest_selected, update_threshold
from usae_jax.model.matryoshka import restrict_to_prefix
from usae_jax.model.sparse_ops import UNSHARDED, SparseOps
from usae_jax.model.usae import Encoded, decode_encoded, encode, normalize_dictionary
from usae_jax.train.losses import auxiliary_decode, configured_auxiliary_codes, loss_for, mean_error
from usae_jax.train.state import TrainState
from usae_jax.train.updates import StepMetrics, mean_l0, update_every_model, update_firing


def encode_source(
    usae: USAEConfig, model_params: dict, stats: dict, x: jax.Array, ops: SparseOps = UNSHARDED
) -> tuple[Encoded, dict]:
    """Training-mode encoding of one model's rows ``x`` ``[B, d]`` under its sparsity rule:
    ``(Encoded, new batch statistics)`` (BatchTopK also advances the running threshold)."""
    with jax.named_scope("encode"):
        batch_topk = usae.sparsity == "batch_topk"
        encoded, new_stats = encode(
            model_params,
            stats,
            x,
            top_k=usae.top_k,
            train=True,
            momentum=usae.batchnorm_momentum,
            eps=usae.batchnorm_eps,
            top_k_fn=batch_top_k_codes if batch_topk else ops.top_k,
            compute_dtype=jnp.dtype(usae.compute_dtype),
        )
        if batch_topk:
            smallest = smallest_selected(encoded.codes)
            threshold = update_threshold(stats["threshold"], smallest, usae.batch_topk_momentum)
            new_stats = {**new_stats, "threshold": threshold}
    return encoded, new_stats


def target_loss(
    usae: USAEConfig,
    encoded: Encoded,
    atoms: jax.Array,
    x: jax.Array,
    residual_hat: jax.Array,
    aux_active: jax.Array,
    ops: SparseOps = UNSHARDED,
    bias: jax.Array | float = 0.0,
) -> jax.Array:
    """Scalar loss of decoding ``encoded`` into one target ``x`` ``[B, d]`` with dictionary rows
    ``atoms`` ``[n, d]`` (plus ``bias``): the configured loss with its auxiliary term (the
    auxiliary codes decoded into this target, ``residual_hat`` ``[B, d]``, from
    :func:`~usae_jax.train.losses.auxiliary_decode`), plus the error of every Matryoshka prefix
    reconstruction."""
    with jax.named_scope("decode"):
        x_hat = decode_encoded(encoded, atoms, ops.decode) + bias
    with jax.named_scope("loss"):
        loss = loss_for(usae)(x, x_hat, residual_hat, aux_active)
    for size in usae.matryoshka_prefixes:
        with jax.named_scope("decode"):
            prefix = decode_encoded(restrict_to_prefix(encoded, size), atoms, ops.decode) + bias
        loss = loss + mean_error(x - prefix, usae.loss)
    return loss


def _dead_mask(usae: USAEConfig, tokens_since_fired: jax.Array) -> jax.Array:
    return tokens_since_fired >= usae.dead_after_tokens


def cross_losses(
    usae: USAEConfig,
    encoded: Encoded,
    dead_mask: jax.Array,
    dictionaries: dict[str, jax.Array],
    batch: dict[str, jax.Array],
    ops: SparseOps = UNSHARDED,
) -> jax.Array:
    """Losses ``[M]`` of decoding one encoding into every model's space.

    Args:
      encoded: the source encoding of ``B`` rows.
      dead_mask: ``[n]`` dead concepts of the source encoder (used by the dead-latent AuxK).
      dictionaries: ``{name: [n, d_name]}`` raw dictionaries.
      batch: ``{name: [B, d_name]}`` targets.
    """
    with jax.named_scope("auxk_select"):
        aux = configured_auxiliary_codes(usae, encoded, dead_mask, ops.top_half)
    compute_dtype = jnp.dtype(usae.compute_dtype)
    units = [
        normalize_dictionary(dictionaries[name]).astype(compute_dtype) for name in usae.model_names
    ]
    with jax.named_scope("auxk_product"):
        residual_hats = auxiliary_decode(aux, units)  # one product for every target
    active = jnp.any(aux != 0)
    losses = [
        target_loss(usae, encoded, unit, batch[name], residual_hat, active, ops)
        for name, unit, residual_hat in zip(usae.model_names, units, residual_hats, strict=True)
    ]
    return jnp.stack(losses)


def make_source_step(
    usae: USAEConfig,
    optimizers: dict[str, optax.GradientTransformation],
    source: str,
    ops: SparseOps = UNSHARDED,
) -> Callable[[TrainState, dict], tuple[TrainState, StepMetrics]]:
    """The official step with ``source`` as the encoding model (pure; jit it)."""

    def step(state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, StepMetrics]:
        models = state.params["models"]
        dead = _dead_mask(usae, state.tokens_since_fired[source])

        def loss_fn(source_params):
            encoded, new_stats = encode_source(
                usae, source_params, state.batch_stats[source], batch[source], ops
            )
            dictionaries = {name: models[name]["dictionary"] for name in usae.model_names}
            dictionaries[source] = source_params["dictionary"]
            losses = cross_losses(usae, encoded, dead, dictionaries, batch, ops)
            return jnp.sum(losses), (losses, new_stats, encoded.codes)

        grads, (losses, new_stats, codes) = jax.grad(loss_fn, has_aux=True)(models[source])
        with jax.named_scope("optimizer"):
            updates, new_opt = optimizers[source].update(
                grads, state.opt_states[source], models[source]
            )
            new_models = {**models, source: optax.apply_updates(models[source], updates)}
        new_state = state.replace(
            step=state.step + 1,
            params={**state.params, "models": new_models},
            batch_stats={**state.batch_stats, source: new_stats},
            opt_states={**state.opt_states, source: new_opt},
            tokens_since_fired={
                **state.tokens_since_fired,
                source: update_firing(state.tokens_since_fired[source], codes),
            },
        )
        l0 = jnp.mean(jnp.sum(codes > 0, axis=1).astype(jnp.float32))
        return new_state, StepMetrics(jnp.sum(losses), losses, l0)

    return step


def make_all_sources_step(
    usae: USAEConfig,
    optimizers: dict[str, optax.GradientTransformation],
    ops: SparseOps = UNSHARDED,
) -> Callable[[TrainState, dict], tuple[TrainState, StepMetrics]]:
    """The "all sources per step" departure (pure; jit it)."""
    names = usae.model_names

    def step(state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, StepMetrics]:
        def loss_fn(models):
            dictionaries = {name: models[name]["dictionary"] for name in names}
            total_losses, stats, codes = 0.0, {}, {}
            for source in names:
                encoded, stats[source] = encode_source(
                    usae, models[source], state.batch_stats[source], batch[source], ops
                )
                dead = _dead_mask(usae, state.tokens_since_fired[source])
                total_losses = total_losses + cross_losses(
                    usae, encoded, dead, dictionaries, batch, ops
                )
                codes[source] = encoded.codes
            return jnp.sum(total_losses), (total_losses, stats, codes)

        models = state.params["models"]
        grads, (losses, new_stats, codes) = jax.grad(loss_fn, has_aux=True)(models)
        with jax.named_scope("optimizer"):
            new_models, new_opt = update_every_model(optimizers, grads, state.opt_states, models)
        new_state = state.replace(
            step=state.step + 1,
            params={**state.params, "models": new_models},
            batch_stats=new_stats,
            opt_states=new_opt,
            tokens_since_fired={
                name: update_firing(state.tokens_since_fired[name], codes[name]) for name in names
            },
        )
        return new_state, StepMetrics(jnp.sum(losses), losses, mean_l0(codes))

    return step
