"""Closed-form and reference checks of the pure USAE functions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from usae_jax.losses import (
    auxiliary_codes,
    reconstruction_loss,
    top_half_codes_by_sort,
    top_half_mask,
)
from usae_jax.usae.model import (
    batchnorm,
    decode_dense,
    decode_sparse,
    encode,
    normalize_dictionary,
    top_k_codes,
)
from usae_jax.usae.params import init_batch_stats, init_model_params


def test_top_k_keeps_the_k_largest_per_row():
    x = jnp.array([[0.1, 3.0, 2.0, 0.0], [5.0, 0.0, 1.0, 4.0]])
    dense, values, indices = top_k_codes(x, 2)
    np.testing.assert_array_equal(dense, [[0, 3, 2, 0], [5, 0, 0, 4]])
    np.testing.assert_array_equal(values, [[3, 2], [5, 4]])
    np.testing.assert_array_equal(indices, [[1, 2], [0, 3]])


def test_sparse_decode_equals_dense_decode_and_its_gradients():
    rng = np.random.default_rng(0)
    codes = jax.nn.relu(jnp.asarray(rng.standard_normal((16, 40)), jnp.float32))
    dense, values, indices = top_k_codes(codes, 5)
    unit = normalize_dictionary(jnp.asarray(rng.standard_normal((40, 12)), jnp.float32))
    np.testing.assert_allclose(
        decode_sparse(values, indices, unit), decode_dense(dense, unit), rtol=1e-5, atol=1e-6
    )
    g_sparse = jax.grad(lambda d: jnp.sum(jnp.sin(decode_sparse(values, indices, d))))(unit)
    g_dense = jax.grad(lambda d: jnp.sum(jnp.sin(decode_dense(dense, d))))(unit)
    np.testing.assert_allclose(g_sparse, g_dense, rtol=1e-5, atol=1e-6)


def test_normalized_dictionary_has_unit_rows():
    unit = normalize_dictionary(jnp.array([[3.0, 4.0], [0.0, 2.0]]))
    np.testing.assert_allclose(unit, [[0.6, 0.8], [0.0, 1.0]], rtol=1e-6)


def test_batchnorm_train_and_eval_follow_torch():
    h = jnp.array([[1.0, 2.0], [3.0, 6.0]])
    params = {"scale": jnp.array([1.0, 2.0]), "bias": jnp.array([0.0, 1.0])}
    stats = init_batch_stats(2)
    out, new = batchnorm(params, stats, h, train=True)
    # batch mean [2, 4], biased var [1, 4] -> normalised [-1, 1] per column
    np.testing.assert_allclose(out, [[-1, -1], [1, 3]], rtol=1e-4)
    # running = 0.9 * init + 0.1 * batch, with the unbiased variance [2, 8]
    np.testing.assert_allclose(new["mean"], [0.2, 0.4], rtol=1e-6)
    np.testing.assert_allclose(new["var"], [0.9 + 0.2, 0.9 + 0.8], rtol=1e-6)
    assert int(new["count"]) == 1
    out_eval, same = batchnorm(params, new, h, train=False)
    np.testing.assert_allclose(out_eval[0, 0], (1 - 0.2) / np.sqrt(1.1 + 1e-5), rtol=1e-6)
    assert same is new


def test_encode_is_sparse_nonnegative_and_shaped():
    params = init_model_params(jax.random.key(0), 10, 32)
    x = jax.random.normal(jax.random.key(1), (64, 10))
    encoded, stats = encode(params, init_batch_stats(32), x, top_k=4, train=True)
    assert encoded.pre_codes.shape == encoded.codes.shape == (64, 32)
    assert encoded.top_values.shape == encoded.top_indices.shape == (64, 4)
    assert np.all(np.sum(np.asarray(encoded.codes) > 0, axis=1) <= 4)
    assert np.all(np.asarray(encoded.codes) >= 0)


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
