"""One USAE training step, as pure functions of ``(state, batch)``.

``"random_one"`` (official): the host draws a source model ``i``; ``z = encode_i(x_i)``; for every
model ``j`` ``x̂_j = decode_j(z)``; ``loss = sum_j L(x_j, x̂_j)``; only model ``i``'s parameters,
BatchNorm statistics and optimiser state change. The step is specialised on ``i`` (one
compilation per model), so gradients are computed for model ``i`` alone: the other dictionaries
enter as constants.

``"all"`` (a departure): every model encodes its own rows, all ``M x M`` reconstructions are
summed, every model is updated with the gradient of that sum.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from usae_jax.config import USAEConfig
from usae_jax.losses import auxiliary_codes, loss_for
from usae_jax.train_state import TrainState
from usae_jax.usae.model import (
    Encoded,
    decode_sparse,
    encode,
    normalize_dictionary,
    top_k_codes,
)


class StepMetrics(NamedTuple):
    """Per-step scalars, left on the device until a log step fetches them."""

    loss: jax.Array
    """``[]`` summed loss of the step (before the update)."""

    target_losses: jax.Array
    """``[M]`` loss of each target model (summed over sources for ``"all"``)."""

    l0: jax.Array
    """``[]`` mean number of non-zero codes per row."""


class SparseOps(NamedTuple):
    """The two operations that change when the concept axis is split over devices."""

    top_k: Callable = top_k_codes
    """``(activations [B, n], k) -> (dense [B, n], values [B, k], indices [B, k])``."""

    decode: Callable = decode_sparse
    """``(values [B, k], indices [B, k], unit_dictionary [n, d]) -> [B, d]``."""


UNSHARDED = SparseOps()
"""TopK and decode of a step whose concept axis is not split."""


def _encode(usae: USAEConfig, model_params, stats, x, ops: SparseOps) -> tuple[Encoded, dict]:
    return encode(
        model_params,
        stats,
        x,
        top_k=usae.top_k,
        train=True,
        momentum=usae.batchnorm_momentum,
        eps=usae.batchnorm_eps,
        top_k_fn=ops.top_k,
        compute_dtype=jnp.dtype(usae.compute_dtype),
    )


def _dead_mask(usae: USAEConfig, tokens_since_fired: jax.Array) -> jax.Array:
    return tokens_since_fired >= usae.dead_after_tokens


def update_firing(tokens_since_fired: jax.Array, codes: jax.Array) -> jax.Array:
    """Rows since each concept last fired ``[n]``, after a batch of ``[B, n]`` codes.

    The count saturates at the largest value of its integer type (``2**31 - 1`` rows for int32)
    instead of wrapping negative: at the paper's scale a model encodes about ``2.5e9`` rows, and
    a wrapped count would make a long-dead concept look alive to the dead-latent AuxK and to the
    dead fraction.
    """
    fired = jnp.any(codes > 0, axis=0)
    room = jnp.iinfo(tokens_since_fired.dtype).max - tokens_since_fired  # >= 0: counts are >= 0
    added = tokens_since_fired + jnp.minimum(room, codes.shape[0]).astype(tokens_since_fired.dtype)
    return jnp.where(fired, 0, added)


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
    loss_fn = loss_for(usae)
    aux = auxiliary_codes(
        encoded.pre_codes,
        encoded.codes,
        rule=usae.aux,
        dead_mask=dead_mask,
        dead_k_aux=usae.dead_k_aux,
    )
    losses = []
    compute_dtype = jnp.dtype(usae.compute_dtype)
    for name in usae.model_names:
        unit = normalize_dictionary(dictionaries[name]).astype(compute_dtype)
        x_hat = ops.decode(encoded.top_values, encoded.top_indices, unit)
        losses.append(loss_fn(batch[name], x_hat, aux, unit))
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
            encoded, new_stats = _encode(
                usae, source_params, state.batch_stats[source], batch[source], ops
            )
            dictionaries = {name: models[name]["dictionary"] for name in usae.model_names}
            dictionaries[source] = source_params["dictionary"]
            losses = cross_losses(usae, encoded, dead, dictionaries, batch, ops)
            return jnp.sum(losses), (losses, new_stats, encoded.codes)

        grads, (losses, new_stats, codes) = jax.grad(loss_fn, has_aux=True)(models[source])
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
                encoded, stats[source] = _encode(
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


def update_every_model(optimizers, grads, opt_states, models) -> tuple[dict, dict]:
    """Apply each model's own optimiser to its gradients: ``(new models, new optimiser states)``."""
    new_models, new_opt = {}, {}
    for name, model in models.items():
        updates, new_opt[name] = optimizers[name].update(grads[name], opt_states[name], model)
        new_models[name] = optax.apply_updates(model, updates)
    return new_models, new_opt


def mean_l0(codes: dict[str, jax.Array]) -> jax.Array:
    """Mean number of non-zero codes per row over every model's ``[B, n]`` codes."""
    return jnp.mean(jnp.stack([jnp.sum(c > 0, axis=1).astype(jnp.float32) for c in codes.values()]))


def draw_source(seed: int, step: int, num_models: int) -> int:
    """The source model index of ``step``: a host-side draw from ``(seed, step)`` alone."""
    return int(np.random.default_rng([seed, step]).integers(num_models))
