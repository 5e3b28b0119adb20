"""The training state pytree and its creation: shapes first, then a sharded init.

:func:`abstract_train_state` traces the initialisation with ``jax.eval_shape`` (no memory) and
attaches the mesh's shardings; :func:`init_train_state` runs it as one jitted program with
those ``out_shardings``, so every device materialises only its shard (with concept sharding no
device ever holds the whole state). A resume restores onto the abstract state directly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import struct

from usae_jax.config import TrainConfig
from usae_jax.model.params import init_params
from usae_jax.parallel.mesh import state_shardings


@struct.dataclass
class TrainState:
    """Everything a run needs to continue exactly where it stopped.

    Attributes:
      step: ``[]`` int32, the number of completed training steps.
      params: ``{"models": {name: {...}}}`` (see :mod:`usae_jax.model.params`).
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


def abstract_train_state(config: TrainConfig, optimizers: dict, mesh):
    """``(abstract state, shardings)``: the state's ``jax.ShapeDtypeStruct`` tree, each leaf
    carrying its ``NamedSharding`` on ``mesh`` (a restore target), and the sharding tree."""
    shapes = jax.eval_shape(lambda: create_train_state(config, optimizers))
    shardings = state_shardings(shapes, mesh, config.usae.num_concepts)
    abstract = jax.tree.map(
        lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
        shapes,
        shardings,
    )
    return abstract, shardings


def init_train_state(config: TrainConfig, optimizers: dict, shardings) -> TrainState:
    """A fresh state created directly in ``shardings`` (one jitted program, no host copy)."""
    return jax.jit(lambda: create_train_state(config, optimizers), out_shardings=shardings)()
