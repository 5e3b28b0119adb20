"""Crosscoder and Matryoshka objectives against closed forms and a numpy reference."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from usae_jax.config import TrainConfig, USAEConfig
from usae_jax.model.crosscoder import encode_joint
from usae_jax.model.inference import encode_eval, encode_models_eval
from usae_jax.model.matryoshka import restrict_to_prefix
from usae_jax.model.params import init_params
from usae_jax.model.usae import Encoded, top_k_codes
from usae_jax.train.crosscoder_step import crosscoder_losses
from usae_jax.train.optim import build_optimizers
from usae_jax.train.steps import make_steps
from usae_jax.train.usae_step import cross_losses, encode_source

WIDTHS = {"a": 5, "b": 3, "c": 4}


def _batch(rows=12, seed=0):
    rng = np.random.default_rng(seed)
    return {n: rng.standard_normal((rows, w)).astype(np.float32) for n, w in WIDTHS.items()}


def _crosscoder(**overrides):
    return USAEConfig(
        model_names=tuple(WIDTHS),
        widths=tuple(WIDTHS.values()),
        num_concepts=8,
        top_k=2,
        architecture="crosscoder",
        loss="l2_auxk",
        aux_coefficient=0.0,
        **overrides,
    )


def _numpy_batch_top_k(scores, keep):
    order = np.argsort(-scores.ravel(), kind="stable")[:keep]
    mask = np.zeros(scores.size, bool)
    mask[order] = True
    return mask.reshape(scores.shape)


def _numpy_crosscoder(usae, params, batch):
    """Independent forward pass and loss of a crosscoder (float64)."""
    models = {n: jax.tree.map(lambda a: np.asarray(a, np.float64), m) for n, m in params.items()}
    pre = sum(
        batch[n] @ models[n]["encoder"]["kernel"] + models[n]["encoder"]["bias"] for n in batch
    )
    f = np.maximum(pre, 0)
    weights = sum(np.linalg.norm(models[n]["dictionary"], axis=1) for n in batch)
    scores = f * weights
    if usae.sparsity == "batch_topk":
        f = np.where(_numpy_batch_top_k(scores, len(f) * usae.top_k), f, 0)
    elif usae.sparsity == "local_topk":
        kth = -np.sort(-scores, axis=1)[:, usae.top_k - 1 : usae.top_k]
        f = np.where(scores >= kth, f, 0)
    losses = []
    for n, x in batch.items():
        dec, bias = models[n]["dictionary"], models[n]["decoder_bias"]
        total = np.mean((x - f @ dec - bias) ** 2)
        for size in usae.matryoshka_prefixes:
            total += np.mean((x - f[:, :size] @ dec[:size] - bias) ** 2)
        losses.append(total)
    penalty = usae.l1_coefficient * np.mean(np.sum(f * weights, axis=1))
    return f, scores, np.asarray(losses), penalty if usae.sparsity == "l1" else 0.0


def _perturbed(params, seed):
    """Non-zero biases and uneven decoder norms, so every term of the forward pass matters."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda a: jnp.asarray(
            a * rng.uniform(0.5, 3.0, a.shape) + 0.05 * rng.standard_normal(a.shape)
        ),
        params,
    )


@pytest.mark.parametrize(
    "sparsity,prefixes",
    [("l1", ()), ("batch_topk", ()), ("local_topk", ()), ("batch_topk", (3, 5))],
)
def test_crosscoder_losses_equal_numpy_reference(sparsity, prefixes):
    usae = _crosscoder(sparsity=sparsity, matryoshka_prefixes=prefixes, l1_coefficient=0.3)
    params, _ = init_params(jax.random.key(1), usae)
    models = _perturbed(params["models"], 2)
    batch = _batch()
    losses, penalty, encoded, scores = crosscoder_losses(
        usae, models, {n: jnp.asarray(x) for n, x in batch.items()}, jnp.zeros((8,), bool)
    )
    f, want_scores, want_losses, want_penalty = _numpy_crosscoder(usae, models, batch)
    np.testing.assert_allclose(encoded.codes, f, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(losses, want_losses, rtol=1e-5)
    np.testing.assert_allclose(penalty, want_penalty, rtol=1e-5)


def test_crosscoder_init_is_tied_and_eval_reads_every_model():
    usae = _crosscoder(sparsity="batch_topk")
    params, stats = init_params(jax.random.key(0), usae)
    model = params["models"]["b"]
    np.testing.assert_allclose(np.linalg.norm(model["dictionary"], axis=1), 0.1, rtol=1e-5)
    np.testing.assert_array_equal(model["encoder"]["kernel"], model["dictionary"].T)
    assert "batchnorm" not in model and model["decoder_bias"].shape == (3,)
    for name in WIDTHS:
        stats[name]["threshold"] = jnp.float32(0.05)
    batch = {n: jnp.asarray(x) for n, x in _batch().items()}
    encoded = encode_models_eval(usae, params, stats, batch)
    _, scores = encode_joint(usae, params["models"], batch, train=False, threshold=0.05)
    acts = np.maximum(np.asarray(encoded["a"].pre_codes), 0)
    np.testing.assert_allclose(encoded["c"].codes, np.where(scores > 0.05, acts, 0), atol=1e-7)
    with pytest.raises(ValueError, match="cannot be encoded alone"):
        encode_eval(usae, params["models"]["a"], stats["a"], batch["a"])


def test_restrict_to_prefix_closed_form():
    codes = jnp.asarray([[0.0, 2.0, 0.0, 3.0]])
    dense = restrict_to_prefix(Encoded(codes, codes, None, None), 2)
    np.testing.assert_array_equal(dense.codes, [[0.0, 2.0, 0.0, 0.0]])
    sparse = restrict_to_prefix(
        Encoded(codes, codes, jnp.asarray([[3.0, 2.0]]), jnp.asarray([[3, 1]])), 2
    )
    np.testing.assert_array_equal(sparse.top_values, [[0.0, 2.0]])
    np.testing.assert_array_equal(sparse.codes, [[0.0, 2.0, 0.0, 0.0]])


def test_matryoshka_usae_topk_losses_equal_numpy_reference():
    usae = USAEConfig(
        model_names=("a", "b"),
        widths=(5, 3),
        num_concepts=8,
        top_k=3,
        loss="l1_auxk",
        aux_coefficient=0.0,
        matryoshka_prefixes=(2, 4, 7),
    )
    params, stats = init_params(jax.random.key(5), usae)
    batch = {n: x for n, x in _batch(seed=6).items() if n in "ab"}
    encoded, _ = encode_source(usae, params["models"]["b"], stats["b"], jnp.asarray(batch["b"]))
    dictionaries = {n: params["models"][n]["dictionary"] for n in "ab"}
    got = cross_losses(usae, encoded, jnp.zeros((8,), bool), dictionaries, batch)
    codes = np.asarray(top_k_codes(jax.nn.relu(encoded.pre_codes), 3)[0], np.float64)
    want = []
    for n in "ab":
        raw = np.asarray(dictionaries[n], np.float64)
        unit = raw / (np.linalg.norm(raw, axis=1, keepdims=True) + 1e-8)
        want.append(sum(np.mean(np.abs(batch[n] - codes[:, :m] @ unit[:m])) for m in (2, 4, 7, 8)))
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_family_combinations_are_validated():
    with pytest.raises(ValueError, match="sparsity"):
        _crosscoder(sparsity="global_topk")
    with pytest.raises(ValueError, match="sparsity"):
        USAEConfig(sparsity="l1")
    with pytest.raises(ValueError, match="matryoshka_prefixes"):
        _crosscoder(matryoshka_prefixes=(4, 4))
    with pytest.raises(ValueError, match="matryoshka_prefixes"):
        _crosscoder(matryoshka_prefixes=(8,))
    with pytest.raises(ValueError, match="matryoshka_prefixes"):
        USAEConfig(architecture="sparc", matryoshka_prefixes=(4,), num_concepts=8, top_k=2)
    config = TrainConfig(usae=_crosscoder(), num_steps=1)
    optimizers, _ = build_optimizers(config, 1, 1)
    with pytest.raises(ValueError, match='source_sampling="all"'):
        make_steps(config, optimizers)
    make_steps(dataclasses.replace(config, source_sampling="all"), optimizers)
