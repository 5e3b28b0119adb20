"""Losses: the top-half AuxK selection, closed-form L1/L2 values, the dead-latent rule, and the
AuxK product over concatenated dictionaries."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from usae_jax.model.top_half import top_half_mask
from usae_jax.model.usae import top_k_codes
from usae_jax.train.losses import (
    auxiliary_codes,
    auxiliary_decode,
    reconstruction_loss,
    top_half_codes_by_sort,
)


@pytest.mark.parametrize("rows,concepts", [(7, 10), (33, 64), (5, 255)])
def test_threshold_top_half_equals_top_k_selection(rows, concepts):
    rng = np.random.default_rng(rows)
    pre = jnp.asarray(rng.standard_normal((rows, concepts)) * 2, jnp.float32)
    codes, _, _ = top_k_codes(jax.nn.relu(pre), 3)
    by_threshold = auxiliary_codes(pre, codes, rule="top_half")
    np.testing.assert_array_equal(by_threshold, top_half_codes_by_sort(pre, codes))


def test_top_half_mask_on_a_hand_made_row():
    values = jnp.array([[0.0, 5.0, 1.0, 3.0, 2.0, 0.0]])  # keep 3 largest: 5, 3, 2
    np.testing.assert_array_equal(top_half_mask(values, 3), [[0, 1, 0, 1, 1, 0]])
    # fewer positives than 3: keep them, then the first zeros by index (as lax.top_k does)
    sparse = jnp.array([[0.0, 0.0, 1.0, 0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(top_half_mask(sparse, 3), [[1, 1, 1, 0, 0, 0]])


def test_l1_and_l2_losses_closed_form():
    x = jnp.array([[1.0, 2.0]])
    x_hat = jnp.array([[0.0, 0.0]])
    aux = jnp.array([[1.0, 0.0]])
    unit = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    # residual [1, 2]; predicted residual [1, 0]; aux error [0, 2]
    l1 = reconstruction_loss(x, x_hat, aux, unit, kind="l1_auxk", coefficient=0.1)
    l2 = reconstruction_loss(x, x_hat, aux, unit, kind="l2_auxk", coefficient=0.1)
    np.testing.assert_allclose(l1, 1.5 + 0.1 * 1.0, rtol=1e-6)
    np.testing.assert_allclose(l2, 2.5 + 0.1 * 2.0, rtol=1e-6)


def test_dead_latent_aux_uses_only_dead_concepts():
    pre = jnp.array([[3.0, 2.0, 1.0, -1.0]])
    codes = jnp.array([[3.0, 0.0, 0.0, 0.0]])
    dead = jnp.array([False, False, True, True])
    aux = auxiliary_codes(pre, codes, rule="dead_latents", dead_mask=dead, dead_k_aux=2)
    np.testing.assert_array_equal(aux, [[0.0, 0.0, 1.0, 0.0]])
    none_dead = auxiliary_codes(pre, codes, rule="dead_latents", dead_mask=~dead & False)
    x = jnp.ones((1, 2))
    unit = jnp.eye(4, 2)
    loss = reconstruction_loss(x, x * 0, none_dead, unit, aux_rule="dead_latents")
    np.testing.assert_allclose(loss, 1.0)  # no dead latents: the aux term is 0


def _decode_problem():
    keys = jax.random.split(jax.random.key(3), 7)
    codes = jax.nn.relu(jax.random.normal(keys[0], (9, 16)))
    dictionaries = [jax.random.normal(keys[1 + i], (16, w)) for i, w in enumerate((5, 3, 7))]
    cotangents = [jax.random.normal(keys[4 + i], (9, w)) for i, w in enumerate((5, 3, 7))]
    return codes, dictionaries, cotangents


@pytest.mark.parametrize("argnums", [(0,), (1,), (0, 1), (0, 1, 2)])
def test_concatenated_aux_decode_equals_one_product_per_target(argnums):
    codes, (first, *rest), cotangents = _decode_problem()

    def objective(decoded):
        return sum(jnp.vdot(g, r) for g, r in zip(cotangents, decoded, strict=True))

    def concatenated(c, d, others):
        return objective(auxiliary_decode(c, (d, *others)))

    def per_target(c, d, others):
        return objective([c @ x for x in (d, *others)])

    for got, want in zip(
        auxiliary_decode(codes, (first, *rest)), [codes @ d for d in (first, *rest)], strict=True
    ):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    got = jax.grad(concatenated, argnums)(codes, first, tuple(rest))
    want = jax.grad(per_target, argnums)(codes, first, tuple(rest))
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_concatenated_aux_decode_skips_gradients_of_constant_dictionaries():
    """The official step differentiates the codes and the source dictionary only: one product
    forward, one for the codes' gradient, one for the source dictionary's (per-target autodiff
    needs 1 + 3 + 3 + 1)."""
    codes, (first, *rest), _ = _decode_problem()

    def products(fn):
        lowered = jax.jit(jax.value_and_grad(fn, (0, 1))).lower(codes, first, tuple(rest)).as_text()
        return lowered.count("dot_general")

    def concatenated(c, d, others):
        return sum(jnp.sum(r) for r in auxiliary_decode(c, (d, *others)))

    def per_target(c, d, others):
        return sum(jnp.sum(c @ x) for x in (d, *others))

    assert products(concatenated) == 3
    assert products(per_target) == 7


def test_concatenated_aux_decode_rejects_mismatched_dictionaries():
    codes, (first, second, _), _ = _decode_problem()
    with pytest.raises(ValueError, match="cannot decode"):
        auxiliary_decode(codes, (first, jnp.zeros((15, 3))))
    with pytest.raises(TypeError, match="dtype"):
        auxiliary_decode(codes, (first, second.astype(jnp.bfloat16)))
    with pytest.raises(ValueError, match="at least one"):
        auxiliary_decode(codes, ())
