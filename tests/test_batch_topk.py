"""BatchTopK: exact batch-wide selection, the running threshold, eval encoding, the USAE loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from usae_jax.config import USAEConfig
from usae_jax.model.batch_topk import (
    batch_top_k_codes,
    batch_top_k_mask,
    smallest_selected,
    threshold_codes,
    update_threshold,
)
from usae_jax.model.inference import encode_eval
from usae_jax.model.params import init_params
from usae_jax.model.sparse_ops import UNSHARDED
from usae_jax.train.usae_step import cross_losses, encode_source


def numpy_batch_top_k(scores: np.ndarray, keep: int) -> np.ndarray:
    """Independent reference: the ``keep`` largest of the flattened batch, lowest index first."""
    flat = scores.ravel()
    order = np.argsort(-flat, kind="stable")[:keep]
    mask = np.zeros(flat.shape, bool)
    mask[order] = True
    return mask.reshape(scores.shape)


def test_closed_form_rows_keep_different_counts():
    scores = jnp.asarray([[5.0, 0.0, 1.0], [4.0, 3.0, 2.0]])
    # B * k = 2 * 2 = 4 largest of the batch: 5, 4, 3, 2 -> row 0 keeps 1, row 1 keeps 3
    codes, values, indices = batch_top_k_codes(scores, 2)
    np.testing.assert_array_equal(codes, [[5.0, 0.0, 0.0], [4.0, 3.0, 2.0]])
    assert values is None and indices is None
    assert float(smallest_selected(codes)) == 2.0


@pytest.mark.parametrize("seed", [0, 1])
def test_mask_equals_numpy_reference_with_ties_and_zeros(seed):
    rng = np.random.default_rng(seed)
    scores = np.maximum(rng.integers(-3, 6, (7, 11)).astype(np.float32), 0)  # many ties and 0s
    for keep in (0, 1, 5, 20, 40, 77):
        got = np.asarray(batch_top_k_mask(jnp.asarray(scores), keep))
        np.testing.assert_array_equal(got, numpy_batch_top_k(scores, keep), err_msg=f"{keep}")
        assert got.sum() == keep


def test_mask_rejects_bad_keep():
    with pytest.raises(ValueError, match="keep must be in"):
        batch_top_k_mask(jnp.zeros((2, 3)), 7)


def test_gradient_reaches_kept_entries_only():
    acts = jnp.asarray([[5.0, 0.5, 1.0], [4.0, 3.0, 2.0]])
    grad = jax.grad(lambda a: jnp.sum(batch_top_k_codes(a, 1)[0] ** 2))(acts)
    np.testing.assert_array_equal(grad, [[10.0, 0.0, 0.0], [8.0, 0.0, 0.0]])


def test_threshold_running_mean_and_scores():
    assert float(update_threshold(jnp.float32(-1), jnp.float32(0.7), 0.1)) == pytest.approx(0.7)
    assert float(update_threshold(jnp.float32(1.0), jnp.float32(0.0), 0.25)) == pytest.approx(0.75)
    acts = jnp.asarray([[1.0, 2.0], [3.0, 0.0]])
    weights = jnp.asarray([10.0, 1.0])
    np.testing.assert_array_equal(threshold_codes(acts, 2.5, acts * weights), [[1, 0], [3, 0]])
    codes, _, _ = batch_top_k_codes(acts, 1, acts * weights)  # scores 10, 2, 30, 0: keep 30, 10
    np.testing.assert_array_equal(codes, [[1.0, 0.0], [3.0, 0.0]])
    assert float(smallest_selected(codes, acts * weights)) == 10.0


def _usae(**overrides):
    return USAEConfig(
        model_names=("a", "b"),
        widths=(5, 3),
        num_concepts=8,
        top_k=2,
        sparsity="batch_topk",
        aux_coefficient=0.0,
        **overrides,
    )


def test_eval_encoding_uses_the_trained_threshold():
    usae = _usae()
    params, stats = init_params(jax.random.key(0), usae)
    assert float(stats["a"]["threshold"]) == -1.0
    stats["a"]["threshold"] = jnp.float32(0.3)
    x = np.random.default_rng(1).standard_normal((6, 5)).astype(np.float32)
    encoded = encode_eval(usae, params["models"]["a"], stats["a"], jnp.asarray(x))
    model, bn = params["models"]["a"], stats["a"]
    h = x @ np.asarray(model["encoder"]["kernel"]) + np.asarray(model["encoder"]["bias"])
    pre = (h - np.asarray(bn["mean"])) / np.sqrt(np.asarray(bn["var"]) + 1e-5)
    relu = np.maximum(pre, 0)
    np.testing.assert_allclose(encoded.codes, np.where(relu > 0.3, relu, 0), rtol=1e-5, atol=1e-6)
    assert encoded.top_indices is None


@pytest.mark.parametrize("prefixes", [(), (3, 6)])
def test_usae_losses_equal_numpy_reference(prefixes):
    """BatchTopK (+ Matryoshka) USAE source-encoding losses against a numpy forward pass."""
    usae = _usae(loss="l2_auxk", matryoshka_prefixes=prefixes)
    params, stats = init_params(jax.random.key(3), usae)
    rng = np.random.default_rng(4)
    batch = {"a": rng.standard_normal((10, 5)), "b": rng.standard_normal((10, 3))}
    batch = {n: x.astype(np.float32) for n, x in batch.items()}
    model = params["models"]["a"]
    encoded, new_stats = encode_source(usae, model, stats["a"], jnp.asarray(batch["a"]), UNSHARDED)
    dead = jnp.zeros((8,), bool)
    dictionaries = {n: params["models"][n]["dictionary"] for n in "ab"}
    got = np.asarray(cross_losses(usae, encoded, dead, dictionaries, batch))

    h = batch["a"] @ np.asarray(model["encoder"]["kernel"]) + np.asarray(model["encoder"]["bias"])
    pre = (h - h.mean(0)) / np.sqrt(h.var(0) + 1e-5)
    relu = np.maximum(pre, 0)
    codes = np.where(numpy_batch_top_k(relu, 10 * 2), relu, 0)
    np.testing.assert_allclose(encoded.codes, codes, rtol=1e-5, atol=1e-6)
    smallest = codes[codes > 0].min()
    assert float(new_stats["threshold"]) == pytest.approx(smallest, rel=1e-6)  # first batch
    want = []
    for n in "ab":
        raw = np.asarray(dictionaries[n], np.float64)
        unit = raw / (np.linalg.norm(raw, axis=1, keepdims=True) + 1e-8)
        total = np.mean((batch[n] - codes @ unit) ** 2)
        for size in prefixes:
            total += np.mean((batch[n] - codes[:, :size] @ unit[:size]) ** 2)
        want.append(total)
    np.testing.assert_allclose(got, want, rtol=1e-5)
