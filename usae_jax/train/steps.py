"""The one place that turns a config into its training step functions.

:func:`make_steps` looks up ``(architecture, source sampling)`` in :data:`STEP_BUILDERS` and
returns :class:`Steps`: the pure step bodies (one compilation each) and the host-side rule that
picks the body of a step. The loop jits and runs whatever it gets; it never branches on the
architecture. A new objective or sparsity rule adds its encoder to :mod:`usae_jax.model` and
one builder here.

* ``("usae", "random_one")`` (official): one body per source model; the source of a step is
  drawn on the host from ``(seed, step)`` (:func:`draw_source`), so resume is exact.
* ``("usae", "all")``: one body, every model encodes its own rows every step.
* ``("sparc", *)``: one body, every stream encoded and updated every step (SPARC ignores
  ``source_sampling``); the concept axis must not be split.
* ``("crosscoder", "all")``: one body, the joint code of every model's rows, every model
  updated. ``("crosscoder", "random_one")`` is an error: the code reads every model at once.

Sparsity rules live in the encoders: the USAE bodies take TopK or BatchTopK
(:mod:`usae_jax.model.batch_topk`), the crosscoder body TopK, BatchTopK or L1, SPARC local or
global TopK; Matryoshka prefixes (:mod:`usae_jax.model.matryoshka`) enter the USAE and
crosscoder losses. Which rule goes with which objective is validated by
:class:`usae_jax.config.USAEConfig`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import optax

from usae_jax.config import TrainConfig
from usae_jax.model.sparse_ops import UNSHARDED, SparseOps
from usae_jax.train.crosscoder_step import make_crosscoder_step
from usae_jax.train.sparc_step import make_sparc_step
from usae_jax.train.usae_step import make_all_sources_step, make_source_step

StepFn = Callable
"""``(state: TrainState, batch: {name: [B, d]}) -> (TrainState, StepMetrics)``, pure."""


class Steps(NamedTuple):
    """The step functions of a run."""

    bodies: dict[str | None, StepFn]
    """Pure step bodies keyed by what selects them (a source model name, or None)."""

    key_of: Callable[[int], str | None]
    """``key_of(step)``: the key of the body that runs ``step`` (host-side, from the seed)."""


def draw_source(seed: int, step: int, num_models: int) -> int:
    """The source model index of ``step``: a host-side draw from ``(seed, step)`` alone."""
    return int(np.random.default_rng([seed, step]).integers(num_models))


def _every_step(_: int) -> None:
    return None


def _usae_random_one(config: TrainConfig, optimizers, ops: SparseOps) -> Steps:
    names = config.usae.model_names
    bodies = {name: make_source_step(config.usae, optimizers, name, ops) for name in names}
    return Steps(bodies, lambda step: names[draw_source(config.seed, step, len(names))])


def _usae_all(config: TrainConfig, optimizers, ops: SparseOps) -> Steps:
    return Steps({None: make_all_sources_step(config.usae, optimizers, ops)}, _every_step)


def _sparc(config: TrainConfig, optimizers, ops: SparseOps) -> Steps:
    if ops.splits_concepts:
        raise ValueError("SPARC steps do not support concept_parallel > 1 yet")
    return Steps({None: make_sparc_step(config.usae, optimizers)}, _every_step)


def _crosscoder(config: TrainConfig, optimizers, ops: SparseOps) -> Steps:
    return Steps({None: make_crosscoder_step(config.usae, optimizers, ops)}, _every_step)


def _crosscoder_random_one(config: TrainConfig, optimizers, ops: SparseOps) -> Steps:
    raise ValueError(
        'architecture="crosscoder" reads every model\'s rows for one code: use '
        'source_sampling="all" (random_one has no meaning for it)'
    )


STEP_BUILDERS: dict[tuple[str, str], Callable[..., Steps]] = {
    ("usae", "random_one"): _usae_random_one,
    ("usae", "all"): _usae_all,
    ("sparc", "random_one"): _sparc,
    ("sparc", "all"): _sparc,
    ("crosscoder", "all"): _crosscoder,
    ("crosscoder", "random_one"): _crosscoder_random_one,
}
"""``(architecture, source_sampling) -> builder(config, optimizers, ops) -> Steps``."""


def make_steps(
    config: TrainConfig,
    optimizers: dict[str, optax.GradientTransformation],
    ops: SparseOps = UNSHARDED,
) -> Steps:
    """The step functions of ``config`` (one optimiser per model; ``ops`` from the mesh)."""
    key = (config.usae.architecture, config.source_sampling)
    if key not in STEP_BUILDERS:
        raise ValueError(f"no training step for architecture/source_sampling {key}")
    return STEP_BUILDERS[key](config, optimizers, ops)
