"""The training step's XLA:CPU options (usae_jax.parallel.compiler)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from usae_jax.parallel import compiler
from usae_jax.parallel.mesh import create_mesh


def _batchnorm_gradient(h):
    """The shape of the step's BatchNorm backward: column reductions over ``[B, n]``."""

    weights = jnp.sin(jnp.arange(h.size, dtype=jnp.float32)).reshape(h.shape)

    def loss(h):
        mean = jnp.mean(h, axis=0)
        var = jnp.mean(jnp.square(h - mean), axis=0)
        return jnp.sum((h - mean) * jax.lax.rsqrt(var + 1e-5) * weights)

    return jax.grad(loss)(h)


def _ynn_reduce_fusions(hlo: str) -> int:
    """YNNPACK fusions of ``hlo`` whose fused computation contains a reduce."""
    computations = dict(re.findall(r"\n(%[\w.\-]+) [^\n]*\{\n(.*?)\n\}", hlo, re.S))
    count = 0
    for line in hlo.splitlines():
        if "__ynn_fusion" in line and " fusion(" in line:
            called = re.search(r"calls=(%[\w.\-]+)", line).group(1)
            count += " reduce(" in computations.get(called, "")
    return count


def test_cpu_step_options_keep_reductions_out_of_ynnpack():
    options = compiler.step_compiler_options(create_mesh(1, 1))
    if options is None:
        pytest.skip("this jaxlib refuses xla_cpu_experimental_ynn_fusion_type")
    assert options == compiler.CPU_STEP_OPTIONS
    h = jax.ShapeDtypeStruct((256, 64), jnp.float32)
    default = jax.jit(_batchnorm_gradient).lower(h).compile().as_text()
    chosen = jax.jit(_batchnorm_gradient, compiler_options=options).lower(h).compile().as_text()
    assert _ynn_reduce_fusions(chosen) == 0
    if _ynn_reduce_fusions(default) == 0:
        pytest.skip("this jaxlib puts no reduction into YNNPACK by default")
    x = np.random.default_rng(0).normal(size=(256, 64)).astype(np.float32)
    np.testing.assert_allclose(  # the same math, summed in another order
        jax.jit(_batchnorm_gradient, compiler_options=options)(x),
        jax.jit(_batchnorm_gradient)(x),
        rtol=1e-4,
        atol=1e-5,
    )


def test_refused_options_are_left_out(monkeypatch):
    monkeypatch.setattr(
        compiler, "CPU_STEP_OPTIONS", {"xla_cpu_experimental_ynn_fusion_type": "NOT_A_TYPE"}
    )
    assert compiler.step_compiler_options(create_mesh(1, 1)) is None
    monkeypatch.setattr(compiler, "CPU_STEP_OPTIONS", {"xla_no_such_option_anywhere": "1"})
    assert compiler.step_compiler_options(create_mesh(1, 1)) is None
