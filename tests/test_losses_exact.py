"""Both top-half selections (the radix select and the host one) equal ``lax.top_k``'s, ties and
special values included, alone and inside the auxiliary codes."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from usae_jax.model.top_half import host_top_half_mask, top_half_mask
from usae_jax.train.losses import auxiliary_codes, top_half_codes_by_sort

NAN = np.float32("nan")
TINY = np.float32(1e-45)  # the smallest positive denormal


def _top_k_mask(values: np.ndarray, keep: int) -> np.ndarray:
    """The reference: the entries ``lax.top_k`` selects, as a boolean mask ``[B, n]``."""
    _, indices = jax.lax.top_k(jnp.asarray(values), keep)
    mask = np.zeros(values.shape, bool)
    np.put_along_axis(mask, np.asarray(indices), True, axis=1)
    return mask


@pytest.fixture(params=["radix", "host"])
def select(request):
    """The selection under test: the radix select, or the host one (jitted, as steps run it)."""
    if request.param == "radix":
        return top_half_mask
    return jax.jit(host_top_half_mask, static_argnums=1)


def _check(values, keep: int, select) -> np.ndarray:
    values = np.asarray(values, np.float32)
    mask = np.asarray(select(jnp.asarray(values), keep))
    np.testing.assert_array_equal(mask, _top_k_mask(values, keep))
    assert np.all(mask.sum(axis=1) == keep)
    return mask


def test_ties_keep_exactly_keep_entries_first_by_index(select):
    np.testing.assert_array_equal(_check([[1, 1, 1, 1, 0, 0]], 3, select), [[1, 1, 1, 0, 0, 0]])
    np.testing.assert_array_equal(_check([[2, 1, 1, 1, 0, 0]], 2, select), [[1, 1, 0, 0, 0, 0]])
    np.testing.assert_array_equal(_check([[0, 1, 2, 1, 1, 0]], 3, select), [[0, 1, 1, 1, 0, 0]])


def test_all_zero_rows_and_rows_with_few_positives(select):
    _check(np.zeros((3, 8)), 4, select)
    _check(
        [[0, 0, 0, 5, 0, 0, 0, 2], [0, 3, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0]], 4, select
    )
    _check([[0.0, -0.0, 0.0, -0.0, 1.0, -0.0]], 3, select)  # +0 ranks above -0, as in lax.top_k


def test_denormals_are_ordered_by_value(select):
    # ``values > 0`` on a denormal can read as false where denormals are flushed; bit patterns
    # order them correctly whatever the floating-point mode
    row = np.array([[0, TINY, 3 * TINY, 0, 1e-40, 2 * TINY, 0, 0]], np.float32)
    np.testing.assert_array_equal(_check(row, 3, select), [[0, 0, 1, 0, 1, 1, 0, 0]])
    _check(row, 5, select)


def test_nan_ranks_above_every_number_as_in_top_k(select):
    row = np.array([[1, NAN, 2, 0, np.inf, NAN, 0, 3]], np.float32)
    np.testing.assert_array_equal(_check(row, 2, select), [[0, 1, 0, 0, 0, 1, 0, 0]])
    np.testing.assert_array_equal(_check(row, 3, select), [[0, 1, 0, 0, 1, 1, 0, 0]])
    _check(row, 4, select)
    _check(np.full((2, 6), NAN), 3, select)


def test_negative_values_and_edge_keeps(select):
    row = np.array([[-1, -3, 0.5, -2, -1, 4]], np.float32)
    for keep in range(row.shape[1] + 1):
        _check(row, keep, select)


@pytest.mark.parametrize("rows,concepts,levels", [(9, 10, 3), (17, 64, 5), (5, 255, None)])
def test_random_rows_with_many_ties(rows, concepts, levels, select):
    rng = np.random.default_rng(concepts)
    values = rng.standard_normal((rows, concepts))
    if levels is not None:  # few distinct values: ties everywhere
        values = np.round(values * levels / 2) / levels
    values = np.maximum(values, 0).astype(np.float32)
    _check(values, concepts // 2, select)
    _check(values, 1, select)


def test_auxiliary_codes_equal_the_top_k_reference_with_ties_and_zeros(select):
    # chosen codes leave exact zeros behind; five unchosen values tie for the four places
    pre = jnp.array(
        [[3.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 2.0], [0.0, 0.0, 5.0, -1.0, 0.0, 0.0, 0.0, 0.0]]
    )
    codes = jnp.array(
        [[3.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0], [0.0, 0.0, 5.0, 0.0, 0.0, 0.0, 0.0, 0.0]]
    )
    aux = auxiliary_codes(pre, codes, rule="top_half", top_half=select)
    np.testing.assert_array_equal(aux, top_half_codes_by_sort(pre, codes))
    np.testing.assert_array_equal(np.count_nonzero(aux, axis=1), [4, 0])


def test_auxiliary_codes_keep_denormals_and_nan_as_top_k_does(select):
    pre = np.array(
        [[TINY, 0, 3 * TINY, 0, 0, 0, 0, 0], [NAN, 1, 0, 0, 2, 0, 0, 0]], np.float32
    )  # 2 of 8 positive per row: top_k's half also selects zeros, which change no code
    codes = np.zeros_like(pre)
    codes[1, 4] = 2.0  # chosen by the encoder's TopK: leaves a zero behind
    aux = auxiliary_codes(jnp.asarray(pre), jnp.asarray(codes), rule="top_half", top_half=select)
    aux = np.asarray(aux)
    np.testing.assert_array_equal(aux, top_half_codes_by_sort(jnp.asarray(pre), codes))


def test_bad_arguments_raise(select):
    with pytest.raises(ValueError, match="keep"):
        select(jnp.zeros((2, 4)), 5)
    with pytest.raises(ValueError, match=r"\[B, n\]"):
        select(jnp.zeros((4,)), 2)
    with pytest.raises(TypeError, match="float32"):
        select(jnp.zeros((2, 4), jnp.int32), 2)


@pytest.mark.parametrize("crowded_rows", [0, 1, 7])
def test_rows_with_few_candidates_skip_the_search_and_stay_exact(crowded_rows, select):
    """No row with more than n/2 non-zero candidates: the radix select is skipped (lax.cond);
    one or more such rows: it runs for the batch. Both equal the top_k reference."""
    n = 64
    pre = np.array(jax.random.normal(jax.random.key(3), (16, n)))
    pre[:, n // 4 :] = -np.abs(pre[:, n // 4 :])  # n/4 candidates at most per row
    pre[:crowded_rows] = np.abs(pre[:crowded_rows]) + 0.1  # every entry a candidate
    pre = jnp.asarray(pre)
    codes = jnp.where(pre > 1.0, pre, 0.0)
    got = jax.jit(functools.partial(auxiliary_codes, top_half=select))(pre, codes)
    want = top_half_codes_by_sort(pre, codes)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    kept = np.sum(np.asarray(got) != 0, axis=1)
    assert np.all(kept[:crowded_rows] == n // 2)
    assert np.all(kept[crowded_rows:] <= n // 4)
    assert np.all(
        kept[crowded_rows:] == np.sum(np.asarray(jax.nn.relu(pre) - codes)[crowded_rows:] > 0, 1)
    )
