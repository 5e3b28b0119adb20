"""Losses: the top-half AuxK selection, closed-form L1/L2 values, the dead-latent rule."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from usae_jax.model.usae import top_k_codes
from usae_jax.train.losses import (
    auxiliary_codes,
    reconstruction_loss,
    top_half_codes_by_sort,
    top_half_mask,
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
