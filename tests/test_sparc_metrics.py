"""Alignment and transfer metrics: closed-form values on tiny inputs."""

import numpy as np

from usae_jax.analysis.sparc.alignment import jaccard, pair_report, partner_ranks, retrieval
from usae_jax.analysis.sparc.compare import split_rows
from usae_jax.analysis.sparc.crossmodel import column_correlations, orthogonal_procrustes


def test_jaccard_closed_form():
    a = np.array([[1.0, 2.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 3.0]])
    b = np.array([[0.5, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 1.0]])
    np.testing.assert_allclose(jaccard(a, b), [1 / 3, 0.0, 1.0])


def test_partner_ranks_and_retrieval_closed_form():
    query = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    keys = np.array([[1.0, 0.1, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])  # items 1, 2 swapped
    # query 1's partner has similarity 0: beaten by key 2 (1.0) and key 0 (0.0995) -> rank 3;
    # query 2's partner also 0: beaten by key 1 (1.0), tied with key 0 (0.0) -> rank 3
    np.testing.assert_array_equal(partner_ranks(query, keys), [1, 3, 3])
    result = retrieval(query, keys)
    assert result["recall@1"] == 1 / 3 and result["mean_rank"] == 7 / 3
    assert result["chance_mean_rank"] == 2.0
    # all-zero codes tie with everything: ties count against the partner (no free recall@1)
    np.testing.assert_array_equal(partner_ranks(np.zeros((3, 2)), np.zeros((3, 2))), [3, 3, 3])
    report = pair_report({"a": query, "b": keys})
    assert report["pairs"]["a|b"]["recall@1"] == 1 / 3 and report["items"] == 3


def test_procrustes_recovers_a_rotation_and_correlations_are_pearson():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 6))
    rotation, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    np.testing.assert_allclose(orthogonal_procrustes(x, x @ rotation), rotation, atol=1e-10)
    wide = orthogonal_procrustes(x, rng.standard_normal((200, 9)))
    np.testing.assert_allclose(wide @ wide.T, np.eye(6), atol=1e-10)  # semi-orthogonal
    a = np.stack([x[:, 0], x[:, 1], np.ones(200)], axis=1)
    b = np.stack([2 * x[:, 0] + 1, -x[:, 1], x[:, 2]], axis=1)
    r = column_correlations(a, b)
    np.testing.assert_allclose(r[:2], [1.0, -1.0])
    assert np.isnan(r[2])  # a constant column has no correlation


def test_split_rows_is_disjoint_and_complete():
    train, test = split_rows(100, 0.2, seed=3)
    assert len(test) == 20 and len(train) == 80
    assert set(train).isdisjoint(test) and set(train) | set(test) == set(range(100))
