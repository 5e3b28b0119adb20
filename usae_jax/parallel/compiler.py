"""Compiler options for the training step, chosen by the platform of its mesh.

On XLA:CPU (jaxlib 0.10) the step's matrix products, elementwise ops and reductions go to
YNNPACK fusions by default. Its reduce fusion of the step's BatchNorm backward pass (column
reductions over ``[B, n]`` fused with broadcasts) is slow: 0.24-0.95 s of a 4-4.6 s paper step
in the profiles of ``benchmarks/step_profile.py --xla_defaults --ops=6``. With only the products
handed to YNNPACK (``LIBRARY_FUSION_TYPE_DOT``) XLA's own loop fusions run the rest; paired in
one process (``benchmarks/step_options.py``) the paper step takes 0.89x the time, the small and
default-run sizes about the same (``benchmarks/RESULTS.md``). Same math, float sums in another
order. Other platforms get no options.

The option is an experimental XLA flag: a jaxlib that does not know it (or its value) rejects
it, so it is probed once per process with a trivial compilation and left out if refused.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from usae_jax.parallel.mesh import runs_on_cpu

CPU_STEP_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"}
"""XLA:CPU options of the training step: YNNPACK fusions for products only."""


@functools.cache
def _accepted(options: tuple[tuple[str, str], ...]) -> bool:
    """Whether this jaxlib compiles a trivial CPU function with ``options``."""
    try:
        probe = jax.jit(lambda x: jnp.sum(x * 2.0), compiler_options=dict(options))
        probe.lower(jax.ShapeDtypeStruct((4,), jnp.float32)).compile()
    except Exception:  # noqa: BLE001 - any refusal means: do not use these options
        return False
    return True


def step_compiler_options(mesh: Mesh) -> dict[str, str] | None:
    """``compiler_options`` for ``jax.jit`` of a step on ``mesh``: :data:`CPU_STEP_OPTIONS` on a
    CPU mesh whose jaxlib accepts them, else None."""
    if not runs_on_cpu(mesh):
        return None
    if not _accepted(tuple(sorted(CPU_STEP_OPTIONS.items()))):
        return None
    return dict(CPU_STEP_OPTIONS)
