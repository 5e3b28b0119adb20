"""The training state pytree and its creation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import struct

from usae_jax.config import TrainConfig
from usae_jax.usae.params import init_params


@struct.dataclass
class TrainState:
    """Everything a run needs to continue exactly where it stopped.

    Attributes:
      step: ``[]`` int32, the number of completed training steps.
      params: ``{"models": {name: {...}}}`` (see :mod:`usae_jax.usae.params`).
      batch_stats: ``{name: {"mean": [n], "var": [n], "count": []}}`` BatchNorm running stats.
      opt_states: ``{name: optax state}``, one AdamW state per model (its own update count).
      tokens_since_fired: ``{name: [n] int32}`` rows encoded by that model's encoder since each
        concept last fired, saturating at ``2**31 - 1`` (drives the dead-latent AuxK and the
        dead-concept metric).
    """

    step: jax.Array
    params: dict
    batch_stats: dict
    opt_states: dict
    tokens_since_fired: dict


def create_train_state(
    config: TrainConfig, optimizers: dict[str, optax.GradientTransformation]
) -> TrainState:
    """A fresh state: parameters from ``config.seed``, optimiser states at update 0."""
    params, batch_stats = init_params(jax.random.key(config.seed), config.usae)
    opt_states = {
        name: optimizers[name].init(params["models"][name]) for name in config.usae.model_names
    }
    n = config.usae.num_concepts
    tokens = {name: jnp.zeros((n,), jnp.int32) for name in config.usae.model_names}
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        opt_states=opt_states,
        tokens_since_fired=tokens,
    )
