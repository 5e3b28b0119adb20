"""Splicing on planted data, where every measure has a closed form.

Each planted model gets a synthetic linear readout ``y = x R_m`` read as unit-variance Gaussians
(``KL = 0.5 ||(x - x̂) R||²``), and the USAE is the *oracle*: its dictionaries are the planted
directions (shared concepts in every model, private concepts in their own model only, zero rows
elsewhere) and its encoders the pseudo-inverses, so on noiseless data a model's code is exactly
its planted coefficients divided by the store's std. Then self splices are exact, a cross
splice from A into B misses exactly B's private part, mean ablation costs ``0.5 tr(R' Σ_x R)``,
the baseline from another image ``0.5 (tr(R' (Σ_x + Σ_s) R) + ||μ_p R||²)``, and ablating concept
c costs ``0.5 mean(a_c²) ||u_c R||²``. The tests check the sample values to float tolerance and
the population values (from the generator's rates and magnitudes) within 4 standard errors.
"""

import jax.numpy as jnp
import numpy as np
import pytest

from usae_jax.analysis import splice, splice_effects
from usae_jax.config import USAEConfig
from usae_jax.data.synthetic.planted import PlantedConfig, generate_planted

NAMES = ("a", "b", "c")
WIDTHS = (24, 20, 28)
SHARED, PRIVATE, RATE, OUTPUTS, STD, BATCH = 6, 3, 0.2, 5, 2.0, 100
MAG_MEAN, MAG_SQUARE = 1.25, 1.75  # uniform [0.5, 2]: E[m], E[m^2]


@pytest.fixture(scope="module")
def setup():
    config = PlantedConfig(model_names=NAMES, widths=WIDTHS, num_shared=SHARED,
                           num_specific=PRIVATE, rows=4000, noise=0.0, shared_rate=RATE,
                           specific_rate=RATE, seed=3)  # fmt: skip
    planted = generate_planted(config)
    n = SHARED + PRIVATE * len(NAMES)
    usae = USAEConfig(model_names=NAMES, widths=WIDTHS, num_concepts=n, top_k=n)
    params, stats, models, readouts = {"models": {}}, {}, {}, {}
    rng = np.random.default_rng(0)
    for m, (name, width) in enumerate(zip(NAMES, WIDTHS, strict=True)):
        own = range(SHARED + m * PRIVATE, SHARED + (m + 1) * PRIVATE)
        atoms = np.zeros((n, width), np.float32)
        atoms[:SHARED] = planted.shared_directions[name]
        atoms[list(own)] = planted.specific_directions[name]
        present = [*range(SHARED), *own]
        kernel = np.zeros((width, n), np.float32)
        kernel[:, present] = np.linalg.pinv(atoms[present])
        params["models"][name] = {
            "encoder": {"kernel": jnp.asarray(kernel), "bias": jnp.zeros(n)},
            "batchnorm": {"scale": jnp.ones(n), "bias": jnp.zeros(n)},
            "dictionary": jnp.asarray(atoms),
        }
        stats[name] = {"mean": jnp.zeros(n), "var": jnp.full(n, 1 - usae.batchnorm_eps),
                       "count": jnp.zeros(())}  # fmt: skip
        readouts[name] = rng.standard_normal((width, OUTPUTS)).astype(np.float32)
        models[name] = planted_model(name, readouts[name], planted.activations[name])
    rows = planted.activations["a"].shape[0]
    batches = [
        {k: v[i : i + BATCH] for k, v in planted.activations.items()} for i in range(0, rows, BATCH)
    ]
    observed = splice.observe_batches(models, batches)
    return planted, usae, params, stats, models, readouts, observed


def planted_model(name, readout, x):
    """A splice target whose 'rest of the network' is the linear readout, one token per row."""
    readout = jnp.asarray(readout)
    return splice.SpliceModel(
        name=name, kind="gaussian", mean=0.0, std=STD, token_mean=x.mean(axis=0),
        observe=lambda rows: splice.Observation(rows[:, None, :], None, rows @ readout),
        resume=lambda tokens, rest: tokens[:, 0] @ readout,
        inputs=lambda batch: jnp.asarray(batch[name]),
    )  # fmt: skip


def _parts(planted, name):
    shared = planted.shared_codes @ planted.shared_directions[name]
    private = planted.specific_codes[name] @ planted.specific_directions[name]
    return shared.astype(np.float64), private.astype(np.float64)


def _half_sq(readout, error):
    """Per row ``0.5 ||error R||²``: the Gaussian readout's KL."""
    return 0.5 * np.sum((error @ readout) ** 2, axis=1)


def _trace(readout, cov):
    return np.trace(readout.T @ cov @ readout)


def _roll_in_batches(x):
    return np.concatenate([np.roll(x[i : i + BATCH], -1, axis=0) for i in range(0, len(x), BATCH)])


def _moments(directions, rate):
    """Mean [d] and covariance [d, d] of ``a @ directions`` for the planted coefficients."""
    mean_a, var_a = rate * MAG_MEAN, rate * MAG_SQUARE - (rate * MAG_MEAN) ** 2
    d = directions.astype(np.float64)
    return mean_a * d.sum(axis=0), var_a * d.T @ d


def _close(sample_values, expected, label):
    """Population value within 4 standard errors of the sample mean of per-row values."""
    mean = sample_values.mean()
    error = sample_values.std(ddof=1) / np.sqrt(len(sample_values))
    assert abs(mean - expected) < 4 * error + 1e-9, (label, mean, expected, error)


def test_splice_measures_equal_their_closed_forms(setup):
    planted, usae, params, stats, models, readouts, observed = setup
    table = splice.run_splice(usae, params, stats, models, observed)
    assert len(table) == 6
    for row in table:
        a, b = row["source"], row["target"]
        x = planted.activations[b].astype(np.float64)
        r = readouts[b].astype(np.float64)
        shared, private = _parts(planted, b)
        expected = {
            "clean": np.zeros(len(x)),
            "self": np.zeros(len(x)),
            "cross": _half_sq(r, private),
            "mean": _half_sq(r, x - x.mean(axis=0)),
            "baseline": _half_sq(r, x - _roll_in_batches(shared)),
        }
        for label, values in expected.items():
            got = row[label]["kl"]
            assert got == pytest.approx(values.mean(), rel=2e-4, abs=1e-5), (a, b, label)
        assert row["self"]["kl_recovered"] == pytest.approx(1.0, abs=1e-5)
        assert row["self"]["agreement"] == 1.0 and row["clean"]["agreement"] == 1.0
        assert row["mean"]["kl_recovered"] == 0.0
        ratio = 1 - expected["cross"].mean() / expected["mean"].mean()
        assert row["cross"]["kl_recovered"] == pytest.approx(ratio, abs=1e-4)
        assert row["baseline"]["kl_recovered"] < 0  # worse than the mean: another image
        # population values from the generator's rates and magnitudes
        mu_s, cov_s = _moments(planted.shared_directions[b], RATE)
        mu_p, cov_p = _moments(planted.specific_directions[b], RATE)
        _close(expected["cross"], 0.5 * (_trace(r, cov_p) + np.sum((mu_p @ r) ** 2)), "cross")
        _close(expected["mean"], 0.5 * _trace(r, cov_s + cov_p), "mean")
        base = 0.5 * (_trace(r, 2 * cov_s + cov_p) + np.sum((mu_p @ r) ** 2))
        _close(expected["baseline"], base, "baseline")


def test_concept_ablation_effects_equal_their_closed_form(setup):
    planted, usae, params, stats, models, readouts, observed = setup
    concepts = [0, 2, 5, SHARED, SHARED + PRIVATE]  # three shared, a's and b's first private
    effects = splice_effects.concept_effects(usae, params, stats, models, observed, concepts)
    codes = {n: np.zeros((planted.shared_codes.shape[0], usae.num_concepts)) for n in NAMES}
    for m, name in enumerate(NAMES):
        codes[name][:, :SHARED] = planted.shared_codes
        own = slice(SHARED + m * PRIVATE, SHARED + (m + 1) * PRIVATE)
        codes[name][:, own] = planted.specific_codes[name]
    for i, a in enumerate(NAMES):
        for j, b in enumerate(NAMES):
            atoms = np.asarray(params["models"][b]["dictionary"], np.float64)
            r = readouts[b].astype(np.float64)
            for k, c in enumerate(concepts):
                expected = 0.5 * np.mean(codes[a][:, c] ** 2) * np.sum((atoms[c] @ r) ** 2)
                got = effects["real"][i, j, k]
                assert got == pytest.approx(expected, rel=2e-4, abs=1e-6), (a, b, c)
    # a's private concept has no row in b: no effect there; a random direction of equal norm has
    assert effects["real"][0, 1, 3] < 1e-6 and effects["control"][0, 0, 3] > 1e-3
    agreement = splice_effects.effect_agreement(effects, NAMES, {"shared": [0, 1, 2]})
    assert len(agreement["shared"]["pairs"]) == 3 * 3


def test_concept_groups_and_bad_inputs():
    counts = np.array([[10, 0, 5, 0], [10, 7, 0, 0], [10, 0, 5, 0]])
    groups = splice_effects.concept_groups(counts, splice_effects.EffectConfig(per_group=2))
    assert groups == {"universal": [0], "unique": [1]}
    with pytest.raises(ValueError, match="unique_max"):
        splice_effects.EffectConfig(unique_max=0.9, universal_min=0.5)
    with pytest.raises(ValueError, match="kind"):
        splice.divergence("poisson", jnp.zeros((2, 3)), jnp.zeros((2, 3)))
    model = planted_model("a", np.ones((2, 1), np.float32), np.ones((4, 2), np.float32))
    one = {"a": model.observe(jnp.ones((1, 2)))}
    usae = USAEConfig(model_names=("a",), widths=(2,), num_concepts=4, top_k=1)
    with pytest.raises(ValueError, match=">= 2 images"):
        splice.splice_batch(usae, {}, {}, {"a": model}, one, splice.SpliceTotals())
