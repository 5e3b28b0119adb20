"""What every training step shares: its metrics and the per-model bookkeeping.

The step bodies (:mod:`usae_jax.train.usae_step`, :mod:`usae_jax.train.sparc_step`) compute
their losses; the update of each model with its own optimiser, the firing counters and the
mean L0 are the same for all of them and live here.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


class StepMetrics(NamedTuple):
    """Per-step scalars, left on the device until a log step fetches them."""

    loss: jax.Array
    """``[]`` summed loss of the step (before the update)."""

    target_losses: jax.Array
    """``[M]`` loss of each target model (summed over sources for ``"all"``)."""

    l0: jax.Array
    """``[]`` mean number of non-zero codes per row."""


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
