"""Hungarian matching, the random-atom baseline, the controls' data, and image heatmaps."""

import numpy as np
import pytest

from tests.test_analysis_statistics import identity_usae
from usae_jax.analysis import baseline as compare
from usae_jax.analysis import controls, examples, figures
from usae_jax.analysis import universality as uni
from usae_jax.analysis.statistics import StatisticsConfig, compute_statistics
from usae_jax.data.source import ArraySource


def test_hungarian_matching_recovers_a_permutation():
    rng = np.random.default_rng(0)
    atoms = rng.standard_normal((6, 5))
    permutation = np.array([3, 0, 5, 1, 4, 2])
    candidate = 2.5 * atoms[permutation]  # scaled: cosine ignores norms
    matching = compare.match_dictionaries(atoms, candidate, 0.5)
    np.testing.assert_array_equal(matching.candidate_of, np.argsort(permutation))
    np.testing.assert_allclose(matching.cosine, 1.0)
    assert matching.matched.all()
    # A flipped copy has cosine -1: assigned, not a match. Fewer candidates: some get none.
    flipped = compare.match_dictionaries(atoms[:1], -atoms[:1], 0.5)
    assert flipped.cosine[0] == pytest.approx(-1.0) and not flipped.matched[0]
    partial = compare.match_dictionaries(atoms, candidate[:4], 0.5)
    assert (partial.candidate_of == -1).sum() == 2 and partial.matched.sum() == 4


def test_random_atoms_keep_mean_and_variance_and_rarely_match():
    rng = np.random.default_rng(1)
    dictionary = 0.3 + 2.0 * rng.standard_normal((200, 64))
    random = compare.random_atoms_like(dictionary, seed=2)
    assert random.mean() == pytest.approx(dictionary.mean(), abs=0.05)
    assert random.std() == pytest.approx(dictionary.std(), rel=0.05)
    unit = dictionary - dictionary.mean()
    assert compare.match_dictionaries(unit, random - random.mean()).matched.mean() < 0.05


def test_compare_reports_universal_and_unique_concepts():
    eye = np.eye(4)
    usae = {"a": eye, "b": eye}
    saes = {"a": eye[[1, 0, 2, 3]], "b": np.stack([eye[0], -eye[1], eye[2], -eye[3]])}
    fire = np.array([[10, 10, 9, 0], [10, 10, 0, 5]])
    entropy = np.array([1.0, 1.0, 0.0, 0.0])
    report = compare.compare_with_independent(usae, saes, fire, entropy)
    assert report["num_universal"] == 2
    assert report["a"]["universal_matched_fraction"] == 1.0
    assert report["b"]["universal_found"] == [0] and report["b"]["universal_missed"] == [1]
    assert report["a"]["unique_concepts"] == [2] and report["a"]["unique_matched_fraction"] == 1.0
    assert report["b"]["unique_missed"] == [3]


def test_control_data_break_pairing_and_keep_scale():
    rng = np.random.default_rng(0)
    arrays = {"a": rng.standard_normal((500, 3)), "b": 3 + 2 * rng.standard_normal((500, 4))}
    shuffled = controls.broken_pairing(arrays, "b", seed=0)
    assert shuffled["a"] is arrays["a"]
    assert not np.array_equal(shuffled["b"], arrays["b"])
    np.testing.assert_allclose(np.sort(shuffled["b"], 0), np.sort(arrays["b"], 0))
    noise = controls.noise_replacement(arrays, "b", seed=0)["b"]
    assert noise.mean() == pytest.approx(3.0, abs=0.2) and noise.std() == pytest.approx(2, rel=0.1)


def test_top_image_heatmaps_on_tiny_synthetic_images(tmp_path):
    # 3 images of a 2x2 token grid (rows of image i are 4i..4i+3, cells in order). Concept 0
    # fires in cell 3 of image 1 (value 2) and cell 0 of image 2 (value 1), for both models.
    usae, params, stats = identity_usae(2, 2)
    x = np.zeros((12, 2), np.float32)
    x[4 + 3, 0], x[8 + 0, 0] = 2.0, 1.0
    source = ArraySource({"m0": x, "m1": x.copy()}, standardise=False)
    statistics = compute_statistics(usae, params, stats, source, StatisticsConfig(num_top=3))
    images = np.random.default_rng(0).random((3, 8, 8, 3)).astype(np.float32)
    tokens = examples.ImageTokens(np.repeat(np.arange(3), 4), (2, 2), images)
    assert examples.top_images(statistics, tokens, concept=0, model=0, count=2) == [1, 2]
    heat = examples.concept_heatmap(usae, params, stats, source, tokens, 0, image_id=1)
    np.testing.assert_allclose(heat["m1"], [[0, 0], [0, 2]])
    assert examples.top_examples(statistics, 0)["m0"] == {"rows": [7, 8], "values": [2.0, 1.0]}
    panels = {
        name: [
            (
                i,
                tokens.image(i),
                examples.concept_heatmap(usae, params, stats, source, tokens, 0, i)[name],
            )
            for i in (1, 2)
        ]
        for name in usae.model_names
    }
    path = figures.plot_concept_images(panels, (2, 2), 0, tmp_path / "c.png", crop_patches=1)
    assert (tmp_path / "c.png").stat().st_size > 5000, path
    assert examples.crop_window((8, 8), (2, 2), peak=3, patches=1) == (slice(4, 8), slice(4, 8))


def test_planted_labels_per_model_and_specific_found_fraction():
    e = np.eye(3, dtype=np.float32)
    models = {
        "a": {"dictionary": np.stack([e[0], e[1], e[1], e[2]])},
        "b": {"dictionary": np.stack([e[0], e[1], e[2], e[0]])},
    }
    labels = uni.label_planted_concepts(
        {"models": models},
        ("a", "b"),
        shared_directions={"a": e[:1], "b": e[:1]},
        specific_directions={"a": e[1:2], "b": e[2:3]},
    )
    assert labels["labels"].tolist() == ["shared", "specific", "packed", "none"]
    assert labels["matches"][:, 2].tolist() == ["specific:0", "specific:0"]
    # Model a's specific concept 0 sits on rows 1 and 2; a match on either row finds it.
    found = compare._planted_specific_found(labels["matches"][0], np.array([1, 0, 1, 0], bool))
    assert found == 1.0
    assert compare._planted_specific_found(labels["matches"][0], np.zeros(4, bool)) == 0.0
