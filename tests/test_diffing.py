"""Model-diffing measures: relative decoder norms for M models and latent scaling."""

import jax
import jax.numpy as jnp
import numpy as np

from usae_jax.analysis.diffing import CLASSES, classify, model_diffing
from usae_jax.analysis.explorer.measures import diffing_columns
from usae_jax.config import USAEConfig
from usae_jax.model.params import init_params


def _names(classes):
    return [CLASSES[i] for i in classes]


def test_classes_closed_form_two_and_three_models():
    two = np.array([[0.5, 0.95, 0.2, 0.0, 0.3], [0.5, 0.05, 0.8, 0.0, 0.7]])
    classes, owner = classify(two)
    assert _names(classes) == ["shared", "exclusive", "in_between", "unused", "shared"]
    assert owner.tolist() == [-1, 0, -1, -1, -1]
    three = np.array([[1 / 3, 0.5, 0.02, 0.5], [1 / 3, 0.5, 0.96, 0.3], [1 / 3, 0.0, 0.02, 0.2]])
    classes, owner = classify(three)
    assert _names(classes) == ["shared", "partial", "exclusive", "in_between"]
    assert owner.tolist() == [-1, -1, 1, -1]


def test_latent_scaling_flags_a_decoder_that_data_contradicts():
    """Two concepts with decoders in model a only; model b's activations carry concept 0 (an
    artefactual exclusivity) but not concept 1."""
    rng = np.random.default_rng(0)
    rows = 4000
    f = rng.exponential(1.0, (rows, 2)) * (rng.random((rows, 2)) < 0.1)
    e = np.eye(3)
    x_a = f[:, :1] * e[0] + f[:, 1:] * e[1]
    x_b = 0.8 * f[:, :1] * e[2]
    usae = USAEConfig(
        model_names=("a", "b"),
        widths=(3, 3),
        num_concepts=2,
        top_k=1,
        architecture="crosscoder",
        sparsity="l1",
    )
    params, stats = init_params(jax.random.key(0), usae)
    models = params["models"]
    models["a"] = {
        **models["a"],
        "encoder": {"kernel": jnp.asarray(e[:, :2]), "bias": jnp.zeros(2)},
    }
    models["a"]["dictionary"] = jnp.asarray(e[:2])
    models["b"] = {**models["b"], "encoder": {"kernel": jnp.zeros((3, 2)), "bias": jnp.zeros(2)}}
    models["b"]["dictionary"] = jnp.zeros((2, 3))
    for name in models:
        models[name]["decoder_bias"] = jnp.zeros(3)
    diffing = model_diffing(usae, params, stats, {"a": x_a, "b": x_b})
    assert _names(diffing.classes) == ["exclusive", "exclusive"]
    # numpy closed form: v = d + sum f e / sum f^2, e the residual (model b decodes nothing)
    v_b = (f.T @ x_b) / (f**2).sum(axis=0)[:, None]
    nu_b = np.linalg.norm(v_b, axis=1) / 1.0  # model a's fit is its own unit row exactly
    np.testing.assert_allclose(diffing.latent_scaling[1], nu_b, rtol=1e-4)
    np.testing.assert_allclose(diffing.latent_scaling[0], 1.0, rtol=1e-5)
    assert diffing.latent_scaling[1, 0] > 0.75 and diffing.latent_scaling[1, 1] < 0.2
    assert diffing.artefact.tolist() == [True, False]
    assert diffing.summary() == {
        "classes": {"unused": 0, "shared": 0, "in_between": 0, "partial": 0, "exclusive": 2},
        "exclusive_to": {"a": 2, "b": 0},
        "artefacts": 1,
    }
    columns = diffing_columns(diffing)
    assert columns["relative_norm:b"] == [0.0, 0.0] and columns["diffing_artefact"] == [1.0, 0.0]


def test_usae_strength_is_the_mean_code_on_own_rows():
    usae = USAEConfig(model_names=("a", "b", "c"), widths=(4, 3, 5), num_concepts=6, top_k=2)
    params, stats = init_params(jax.random.key(1), usae)
    rng = np.random.default_rng(2)
    batch = {n: rng.standard_normal((64, w)) for n, w in zip("abc", (4, 3, 5), strict=True)}
    diffing = model_diffing(usae, params, stats, batch)
    used = diffing.strength.sum(axis=0) > 0
    np.testing.assert_allclose(diffing.relative_norm[:, used].sum(axis=0), 1.0, rtol=1e-6)
    assert diffing.latent_scaling.shape == (3, 6)
    assert len(diffing.per_concept()["class"]) == 6
