"""Closed-form checks of the concept statistics and universality measures on hand-made cases."""

import numpy as np
import pytest

from usae_jax.analysis import universality as uni
from usae_jax.analysis.statistics import StatisticsConfig, compute_statistics, statistics_summary
from usae_jax.config import USAEConfig
from usae_jax.data.source import ArraySource


def identity_usae(num_models: int, n: int):
    """A USAE whose code is exactly relu(x): identity encoder, BatchNorm a no-op in eval mode."""
    usae = USAEConfig(
        model_names=tuple(f"m{i}" for i in range(num_models)),
        widths=(n,) * num_models,
        num_concepts=n,
        top_k=n,
    )
    model = {
        "encoder": {"kernel": np.eye(n, dtype=np.float32), "bias": np.zeros(n, np.float32)},
        "batchnorm": {"scale": np.ones(n, np.float32), "bias": np.zeros(n, np.float32)},
        "dictionary": 2.0 * np.eye(n, dtype=np.float32),
    }
    stats = {
        "mean": np.zeros(n, np.float32),
        "var": np.full(n, 1 - 1e-5, np.float32),
        "count": np.zeros((), np.int32),
    }
    names = usae.model_names
    return usae, {"models": {m: model for m in names}}, {m: stats for m in names}


def test_firing_entropy_closed_form():
    counts = np.array([[5, 3, 0, 2], [0, 3, 0, 2], [0, 3, 0, 0]])
    entropy = uni.firing_entropy(counts)
    np.testing.assert_allclose(entropy[:3], [0.0, 1.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(entropy[3], np.log(2) / np.log(3))


def test_cofire_proportion_and_matrix():
    fire = np.array([[4, 0], [2, 3]])
    cfp = uni.cofire_proportion(np.array([2, 0]), fire)
    np.testing.assert_allclose(cfp, [[0.5, np.nan], [1.0, 0.0]])
    np.testing.assert_allclose(uni.mean_cofire_proportion(np.array([2, 0]), fire), [0.5, 0.5])
    pairs = np.zeros((2, 2, 2))
    pairs[0, 0], pairs[1, 1], pairs[0, 1], pairs[1, 0] = [4, 0], [2, 3], [2, 0], [2, 0]
    np.testing.assert_allclose(uni.cofiring_matrix(pairs), [[1.0, 0.5], [0.4, 1.0]])


def test_energy_share_and_pearson_and_auroc():
    np.testing.assert_allclose(uni.energy_share(np.array([[1.0, 3.0]])), [[0.25, 0.75]])
    x = np.array([1.0, 2.0, 3.0, 4.0])
    assert uni.pearson_r(x, 3 * x + 1) == pytest.approx(1.0)
    assert uni.pearson_r(x, -x) == pytest.approx(-1.0)
    # deviations (-1, 0, 1) and (-1, 1, 0): r = 1 / sqrt(2 * 2) = 0.5.
    assert uni.pearson_r([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    assert uni.auroc([2, 3], [1, 2]) == pytest.approx((1 + 0.5 + 1 + 1) / 4)


def test_universality_vs_importance_uses_positive_concepts_only():
    cofires = np.array([10, 100, 1000, 0, 5])
    energy = np.array([1.0, 10.0, 100.0, 3.0, 0.0])
    result = uni.universality_vs_importance(cofires, energy, min_cofires=100)
    assert result["concepts_used"] == 3
    assert result["pearson_r"] == pytest.approx(1.0)
    assert result["concepts_used_min_cofires"] == 2


def test_statistics_on_a_hand_made_dataset():
    # 3 models, 3 concepts, code = relu(x). Concept 0 fires on rows 0-1 for every model; concept 1
    # only for model 0 (rows 0-3); concept 2 fires for models 0 and 1 on row 4, and is 0.05
    # (non-zero, below tau) for model 2 on row 4.
    usae, params, stats = identity_usae(3, 3)
    x = np.zeros((3, 5, 3), np.float32)
    x[:, 0:2, 0] = 1.0
    x[0, 0:4, 1] = 0.5
    x[0:2, 4, 2] = 2.0
    x[2, 4, 2] = 0.05
    source = ArraySource({f"m{i}": x[i] for i in range(3)}, standardise=False)
    result = compute_statistics(
        usae, params, stats, source, StatisticsConfig(batch_rows=2, num_top=2)
    )
    np.testing.assert_array_equal(result.fire_counts, [[2, 4, 1], [2, 0, 1], [2, 0, 0]])
    np.testing.assert_array_equal(result.nonzero_counts, [[2, 4, 1], [2, 0, 1], [2, 0, 1]])
    np.testing.assert_array_equal(result.cofire_counts, [2, 0, 0])
    np.testing.assert_array_equal(result.pairwise_cofire[0, 1], [2, 0, 1])
    np.testing.assert_array_equal(result.pairwise_cofire[1, 2], [2, 0, 0])
    np.testing.assert_allclose(result.mean_activation[0], [0.4, 0.4, 0.4], rtol=1e-5)
    np.testing.assert_allclose(uni.firing_entropy(result.fire_counts)[:2], [1.0, 0.0], atol=1e-9)
    # Energy: per batch |mean code| * ||D̂_c|| (= 1), averaged with batch weights 2, 2, 1.
    # Model 0, concept 0: batch means 1, 0, 0 -> (2 * 1) / 5 = 0.4.
    np.testing.assert_allclose(result.energy[:, 0], [0.4, 0.4, 0.4], rtol=1e-5)
    np.testing.assert_allclose(result.total_energy[0], 1.2, rtol=1e-5)
    np.testing.assert_array_equal(result.top_rows[0, 0], [0, 1])
    np.testing.assert_array_equal(result.top_rows[1, 2, :1], [4])
    # Decoding relu(x) with unit atoms reconstructs x exactly (x >= 0 everywhere).
    np.testing.assert_allclose(np.diag(result.r2), 1.0, atol=1e-5)
    summary = statistics_summary(result)
    # "Dead on the data": never non-zero (never above tau) on the analysed rows.
    assert summary["dead_on_data"]["m1"] == pytest.approx(1 / 3)
    assert summary["dead_on_data_above_tau"]["m2"] == pytest.approx(2 / 3)
    assert summary["dead_on_data"]["m2"] == pytest.approx(1 / 3)
    # Activations of other models (or in another order) are refused with the two lists named.
    swapped = ArraySource({f"m{i}": x[i] for i in (1, 0, 2)}, standardise=False)
    with pytest.raises(ValueError, match=r"\('m1', 'm0', 'm2'\) differ from the USAE's"):
        compute_statistics(usae, params, stats, swapped)


def test_cross_r2_closed_form_both_centrings():
    # Code = relu(x) = x and unit atoms, so encoding model i and decoding into model j predicts
    # x_j by x_i. x_0 = [[2, 0], [0, 0]], x_1 = [[2, 0], [0, 2]]: both predictions miss one entry
    # by 2, so mean((x_j - x_i)^2) = 4 / 4 = 1.
    # Scalar centring: x_1 has mean 1 and mean((x_1 - 1)^2) = 1 -> R²[0, 1] = 1 - 1/1 = 0;
    #   x_0 has mean 0.5, mean((x_0 - 0.5)^2) = (2.25 + 3 * 0.25) / 4 = 0.75 -> R²[1, 0] = -1/3.
    # Per-feature centring: x_1's columns (2, 0), (0, 2) have variances 1, 1 -> R²[0, 1] = 0;
    #   x_0's columns (2, 0), (0, 0) have variances 1, 0 (mean 0.5) -> R²[1, 0] = 1 - 1/0.5 = -1.
    usae, params, stats = identity_usae(2, 2)
    x0 = np.array([[2.0, 0.0], [0.0, 0.0]], np.float32)
    x1 = np.array([[2.0, 0.0], [0.0, 2.0]], np.float32)
    source = ArraySource({"m0": x0, "m1": x1}, standardise=False)
    result = compute_statistics(usae, params, stats, source, StatisticsConfig(num_top=1))
    np.testing.assert_allclose(result.r2, [[1.0, 0.0], [-1 / 3, 1.0]], atol=1e-5)
    np.testing.assert_allclose(result.r2_per_feature, [[1.0, 0.0], [-1.0, 1.0]], atol=1e-5)
    summary = statistics_summary(result)
    np.testing.assert_allclose(summary["r2_scalar_centring"], result.r2)
    np.testing.assert_allclose(summary["r2_per_feature_centring"], result.r2_per_feature)
