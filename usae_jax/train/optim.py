"""Per-model optimisers: AdamW, the official warmup-cosine schedule and torch-style clipping.

Each model has its own optax state. Its schedule is driven by that state's own update count, so
it advances only on the steps where the model is updated, as in the official loop.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from usae_jax.config import OptimConfig, TrainConfig


def official_schedule(
    base_lr: float, final_lr: float, total_iters: int, warmup_iters: int, start_lr: float
) -> optax.Schedule:
    """Learning rate of a model's ``u``-th update (``u = 0, 1, ...``), as the official code sets it.

    The official ``CosineScheduler`` table is ``linspace(start, base, warmup_iters)`` followed by
    ``final + (base - final) (1 + cos(pi i / (total - warmup))) / 2`` for ``i < total - warmup``,
    and ``final`` past its end. It is stepped *after* each optimiser step, so update 0 uses the
    optimiser's construction learning rate (``base``) and update ``u >= 1`` uses ``table[u]``.
    """
    warmup_iters = min(warmup_iters, total_iters)
    decay_iters = total_iters - warmup_iters
    warmup_step = (base_lr - start_lr) / (warmup_iters - 1) if warmup_iters > 1 else 0.0

    def schedule(count):
        u = jnp.asarray(count, jnp.float32)
        warmup = start_lr + warmup_step * u  # linspace(start, base, warmup_iters)[u]
        cosine_arg = math.pi * (u - warmup_iters) / max(decay_iters, 1)
        cosine = final_lr + 0.5 * (base_lr - final_lr) * (1 + jnp.cos(cosine_arg))
        value = jnp.where(u < warmup_iters, warmup, cosine)
        value = jnp.where(u >= total_iters, final_lr, value)
        return jnp.where(u == 0, base_lr, value)

    return schedule


class ClipState(NamedTuple):
    """Clipping keeps no state."""


def clip_by_global_norm_torch(max_norm: float) -> optax.GradientTransformation:
    """``torch.nn.utils.clip_grad_norm_``: scale by ``min(1, max_norm / (norm + 1e-6))``.

    Differs from ``optax.clip_by_global_norm`` only by torch's ``1e-6`` in the denominator, which
    matters for bit-level parity with the official code.
    """

    def init_fn(params):
        del params
        return ClipState()

    def update_fn(updates, state, params=None):
        del params
        norm = optax.tree.norm(updates)
        scale = jnp.minimum(1.0, max_norm / (norm + 1e-6))
        return jax.tree.map(lambda g: g * scale, updates), state

    return optax.GradientTransformation(init_fn, update_fn)


def schedule_for(config: OptimConfig, total_steps: int, warmup_steps: int, num_models: int):
    """The schedule of each model's updates for a run of ``total_steps`` steps.

    ``config.horizon == "official"`` spans all steps of the run (each model only walks about
    ``1 / num_models`` of it); ``"per_model"`` divides both lengths by ``num_models``.
    """
    if config.horizon == "per_model":
        total_steps = max(1, math.ceil(total_steps / num_models))
        warmup_steps = math.ceil(warmup_steps / num_models)
    return official_schedule(
        config.learning_rate, config.final_lr, total_steps, warmup_steps, config.warmup_start_lr
    )


def make_optimizer(config: OptimConfig, schedule: optax.Schedule) -> optax.GradientTransformation:
    """Clip (torch semantics) then AdamW with torch's update rule and the given schedule."""
    parts = []
    if config.clip_norm is not None:
        parts.append(clip_by_global_norm_torch(config.clip_norm))
    parts.append(
        optax.adamw(
            learning_rate=schedule,
            b1=config.b1,
            b2=config.b2,
            eps=config.eps,
            weight_decay=config.weight_decay,
        )
    )
    return optax.chain(*parts)


def current_learning_rate(schedule: optax.Schedule, opt_state) -> jax.Array:
    """The learning rate the next update of this optimiser state will use."""
    counts = [
        leaf.count
        for leaf in jax.tree.leaves(
            opt_state, is_leaf=lambda node: isinstance(node, optax.ScaleByScheduleState)
        )
        if isinstance(leaf, optax.ScaleByScheduleState)
    ]
    return schedule(counts[0])


def build_optimizers(config: TrainConfig, total_steps: int, steps_per_epoch: int):
    """One optimiser per model; warmup defaults to one epoch of steps."""
    warmup = config.optim.warmup_steps
    warmup = steps_per_epoch if warmup is None else warmup
    schedule = schedule_for(config.optim, total_steps, warmup, config.usae.num_models)
    optimizer = make_optimizer(config.optim, schedule)
    return {name: optimizer for name in config.usae.model_names}, schedule
