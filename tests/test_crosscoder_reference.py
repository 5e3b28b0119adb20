"""Our crosscoders match dictionary_learning's (the science-of-finetuning fork, Minder et al.
2025) on a fixture made by running it: tests/reference/make_crosscoder_fixture.py.

Their crosscoders need equal widths and stack models as layers ``[B, L, D]``; ours take any
widths. Their parameters map onto ours as: encoder weight ``[L, D, n]`` -> each model's kernel,
the one encoder bias ``[n]`` -> model 0's bias (model 1's is 0: ours sums the per-model
biases), decoder weight ``[L, n, D]`` -> each dictionary, decoder bias ``[L, D]`` -> each
``decoder_bias``. Their MSE is ``mean_{b,l} sum_d e^2`` where ours is ``sum_m mean_{b,d} e^2``,
so theirs is ``D / L`` times ours; with ``l1_coefficient = penalty * L / D`` their loss and
gradients are ``D / L`` times ours.
"""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from usae_jax.config import USAEConfig
from usae_jax.model.batch_topk import smallest_selected, update_threshold
from usae_jax.model.crosscoder import decode_model, encode_joint
from usae_jax.train.crosscoder_step import crosscoder_losses

FIXTURE = Path(__file__).parent / "fixtures" / "crosscoder_reference.npz"
NAMES = ("m0", "m1")


@pytest.fixture(scope="module")
def ref():
    return dict(np.load(FIXTURE))


def _models(ref, prefix):
    models = {}
    for layer, name in enumerate(NAMES):
        bias = (
            ref[f"{prefix}_encoder_bias"]
            if layer == 0
            else np.zeros_like(ref[f"{prefix}_encoder_bias"])
        )
        models[name] = {
            "encoder": {
                "kernel": jnp.asarray(ref[f"{prefix}_encoder_weight"][layer]),
                "bias": jnp.asarray(bias),
            },
            "dictionary": jnp.asarray(ref[f"{prefix}_decoder_weight"][layer]),
            "decoder_bias": jnp.asarray(ref[f"{prefix}_decoder_bias"][layer]),
        }
    return models


def _usae(ref, sparsity, **overrides):
    d, n = ref["x"].shape[2], ref["l1_encoder_weight"].shape[2]
    return USAEConfig(
        model_names=NAMES,
        widths=(d, d),
        num_concepts=n,
        top_k=int(ref["top_k"]),
        architecture="crosscoder",
        sparsity=sparsity,
        loss="l2_auxk",
        aux_coefficient=0.0,
        **overrides,
    )


def _batch(x):
    return {name: jnp.asarray(x[:, layer]) for layer, name in enumerate(NAMES)}


def test_l1_crosscoder_forward_loss_and_gradients(ref):
    rows, layers, d = ref["x"].shape
    scale = d / layers
    usae = _usae(ref, "l1", l1_coefficient=float(ref["l1_penalty"]) / scale)
    models = _models(ref, "l1")
    batch = _batch(ref["x"])
    encoded, scores = encode_joint(usae, models, batch, train=True)
    np.testing.assert_allclose(encoded.codes, ref["l1_codes"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scores, ref["l1_scaled_codes"], rtol=1e-5, atol=1e-6)
    for layer, name in enumerate(NAMES):
        np.testing.assert_allclose(
            decode_model(models[name], encoded), ref["l1_x_hat"][:, layer], rtol=1e-5, atol=1e-5
        )

    def loss(models):
        losses, penalty, _, _ = crosscoder_losses(usae, models, batch, jnp.zeros(8, bool))
        return jnp.sum(losses) + penalty, (losses, penalty)

    (total, (losses, penalty)), grads = jax.value_and_grad(loss, has_aux=True)(models)
    np.testing.assert_allclose(scale * jnp.sum(losses), ref["l1_mse"], rtol=1e-5)
    np.testing.assert_allclose(penalty / usae.l1_coefficient, ref["l1_sparsity"], rtol=1e-5)
    np.testing.assert_allclose(scale * total, ref["l1_loss"], rtol=1e-5)
    for layer, name in enumerate(NAMES):
        g = jax.tree.map(lambda a: scale * np.asarray(a), grads[name])
        np.testing.assert_allclose(
            g["encoder"]["kernel"], ref["l1_grad_encoder_weight"][layer], rtol=1e-4, atol=1e-6
        )
        np.testing.assert_allclose(
            g["encoder"]["bias"], ref["l1_grad_encoder_bias"], rtol=1e-4, atol=1e-6
        )
        np.testing.assert_allclose(
            g["dictionary"], ref["l1_grad_decoder_weight"][layer], rtol=1e-4, atol=1e-6
        )
        np.testing.assert_allclose(
            g["decoder_bias"], ref["l1_grad_decoder_bias"][layer], rtol=1e-4, atol=1e-6
        )


def test_batch_topk_crosscoder_selection_threshold_and_inference(ref):
    usae = _usae(ref, "batch_topk")
    models = _models(ref, "top")
    batch = _batch(ref["x"])
    encoded, scores = encode_joint(usae, models, batch, train=True)
    np.testing.assert_allclose(scores, ref["top_scores"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(encoded.codes, ref["top_codes"], rtol=1e-5, atol=1e-6)
    for layer, name in enumerate(NAMES):
        np.testing.assert_allclose(
            decode_model(models[name], encoded), ref["top_x_hat"][:, layer], rtol=1e-5, atol=1e-5
        )
    # their threshold_beta 0.999 is our momentum 0.001; the first batch sets it outright
    first = update_threshold(jnp.float32(-1), smallest_selected(encoded.codes, scores), 0.001)
    np.testing.assert_allclose(first, ref["top_threshold_first"], rtol=1e-6)
    second, scores2 = encode_joint(usae, models, _batch(ref["top_second_batch"]), train=True)
    threshold = update_threshold(first, smallest_selected(second.codes, scores2), 0.001)
    np.testing.assert_allclose(threshold, ref["top_threshold_second"], rtol=1e-6)
    inference, _ = encode_joint(usae, models, batch, train=False, threshold=threshold)
    np.testing.assert_allclose(inference.codes, ref["top_inference_codes"], rtol=1e-5, atol=1e-6)
