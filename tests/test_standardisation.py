"""Standardisation: the official formula everywhere, and NaN input reported at its row and model.

The official code standardises each model's activations with one scalar mean and one scalar
``torch.std`` (unbiased, ``ddof=1``) and divides by ``std + 1e-5``. With few values the unbiased
and population std differ visibly (``sqrt(n / (n - 1))``) and with a small std the ``1e-5``
matters, so the tiny arrays below tell the formulas apart.
"""

import json
import os

import numpy as np
import pytest

from usae_jax.analysis.load import store_context
from usae_jax.data import store as st
from usae_jax.data import text
from usae_jax.data.loader import StoreSource
from usae_jax.data.source import STD_EPSILON, ArraySource, Standardisation

GRID = (1, 2)


def official(x: np.ndarray) -> np.ndarray:
    """The official formula in numpy: ``(x - mean) / (unbiased std + 1e-5)`` over all values."""
    x = np.asarray(x, np.float64)
    return (x - x.mean()) / (x.std(ddof=1) + 1e-5)


def tiny_arrays() -> dict[str, np.ndarray]:
    """Two models, 4 paired rows: a plain one and one whose std (~3e-5) is near the epsilon."""
    return {
        "a": np.array([[0.0, 2.0], [4.0, 6.0], [1.0, 3.0], [5.0, 9.0]], np.float32),
        "b": np.array([[0.0, 3e-5, -4e-5], [1e-5, -2e-5, 5e-5]] * 2, np.float32),
    }


def test_closed_form_on_two_by_two():
    # x = [[0, 2], [4, 6]]: mean 3, unbiased std sqrt((9 + 1 + 1 + 9) / 3) = sqrt(20 / 3).
    source = ArraySource({"a": np.array([[0.0, 2.0], [4.0, 6.0]], np.float32)})
    scale = np.sqrt(20 / 3) + 1e-5
    want = (np.array([[0.0, 2.0], [4.0, 6.0]]) - 3.0) / scale
    np.testing.assert_allclose(source.rows(np.arange(2))["a"], want, rtol=1e-6)
    assert source.standardisation.std["a"] == pytest.approx(np.sqrt(20 / 3), rel=1e-12)
    assert source.standardisation.epsilon == STD_EPSILON == 1e-5


def test_array_source_matches_torch_unbiased_std_plus_epsilon():
    torch = pytest.importorskip("torch")
    arrays = tiny_arrays()
    source = ArraySource(arrays)
    got = source.rows(np.arange(4))
    for name, x in arrays.items():
        t = torch.from_numpy(x.astype(np.float64))
        want = ((t - t.mean()) / (torch.std(t) + 1e-5)).numpy()
        np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got[name], official(x), rtol=1e-5, atol=1e-6)


def test_store_statistics_and_loader_use_the_official_formula(tmp_path):
    arrays = tiny_arrays()
    store = st.write_store(tmp_path, arrays, GRID, ["i0", "i1"])
    assert store.manifest["std_epsilon"] == 1e-5
    for name, x in arrays.items():
        assert store.models[name]["std"] == pytest.approx(np.std(x, dtype=np.float64, ddof=1))
    got = StoreSource(tmp_path).rows(np.arange(4))
    for name, x in arrays.items():
        np.testing.assert_allclose(got[name], official(x), rtol=1e-5, atol=1e-6)
    # The CAM / transfer context divides by the same number the loader does.
    manifest = json.loads((tmp_path / st.MANIFEST).read_text())
    for model in manifest["models"]:
        model["backbone"] = {"key": "toy"}  # what an extraction records
    st.write_manifest(os.fspath(tmp_path), manifest)
    context = store_context(tmp_path)
    for name, x in arrays.items():
        scale = np.std(x, dtype=np.float64, ddof=1) + 1e-5
        assert context["models"][name]["std"] == pytest.approx(scale, rel=1e-7)


def test_text_store_statistics_use_the_official_formula(tmp_path):
    arrays = tiny_arrays()
    specs = [st.ModelSpec(name=n, width=x.shape[1]) for n, x in arrays.items()]
    writer = st.StoreWriter(tmp_path, specs, (1,), {})
    writer.append([f"s{i}" for i in range(4)], arrays)
    store = text.finish_store(writer, list(arrays))
    for name, x in arrays.items():
        assert store.models[name]["std"] == pytest.approx(np.std(x, dtype=np.float64, ddof=1))
        np.testing.assert_allclose(
            StoreSource(tmp_path).rows(np.arange(4))[name], official(x), rtol=1e-5, atol=1e-6
        )


def test_store_written_before_the_epsilon_keeps_its_own_formula(tmp_path):
    arrays = tiny_arrays()
    st.write_store(tmp_path, arrays, GRID, ["i0", "i1"])
    manifest = json.loads((tmp_path / st.MANIFEST).read_text())
    del manifest["std_epsilon"]
    st.write_manifest(os.fspath(tmp_path), manifest)
    source = StoreSource(tmp_path)
    assert source.standardisation.epsilon == 0.0
    x, std = arrays["a"], manifest["models"][0]["std"]
    np.testing.assert_allclose(source.rows(np.arange(4))["a"], (x - x.mean()) / std, rtol=1e-5)


def test_nan_input_names_its_row_and_model_when_standardising():
    arrays = {name: np.array(x) for name, x in tiny_arrays().items()}
    arrays["b"][2, 1] = np.nan
    with pytest.raises(ValueError, match=r"model 'b' .*first at row 2"):
        ArraySource(arrays)


def test_nan_in_a_sampled_fit_reports_the_sources_row():
    x = np.random.default_rng(0).normal(size=(100, 3))
    x[30, 0] = np.inf
    with pytest.raises(ValueError, match=r"'m' .*first at row 30"):
        Standardisation.fit({"m": x}, max_rows=10)  # stride 10: row 30 is sampled
    with pytest.raises(ValueError, match=r"'m' .*first at row 300"):
        Standardisation.fit({"m": x}, max_rows=None, row_ids=np.arange(100) * 10)


def test_nan_in_a_batch_reports_the_sources_row_not_the_batch_position(tmp_path):
    arrays = {name: np.array(x) for name, x in tiny_arrays().items()}
    arrays["a"][3, 0] = np.nan
    with pytest.raises(ValueError, match=r"'a' .*first at row 3"):
        ArraySource(arrays, standardise=False).rows(np.array([1, 3]))
    # A store whose statistics were fitted elsewhere: the loader finds the bad row.
    specs = [st.ModelSpec(name=n, width=x.shape[1]) for n, x in arrays.items()]
    writer = st.StoreWriter(tmp_path, specs, GRID, {})
    writer.append(["i0", "i1"], arrays)
    writer.finish({"a": 0.0, "b": 0.0}, {"a": 1.0, "b": 1.0})
    with pytest.raises(ValueError, match=r"'a' .*first at row 3"):
        StoreSource(tmp_path).rows(np.array([1, 3]))


def test_writing_a_store_with_nan_names_its_row_and_model(tmp_path):
    arrays = {name: np.array(x) for name, x in tiny_arrays().items()}
    arrays["a"][3, 1] = np.nan
    with pytest.raises(ValueError, match=r"'a' .*first at row 3"):
        st.write_store(tmp_path, arrays, GRID, ["i0", "i1"])


def test_fit_needs_two_values():
    with pytest.raises(ValueError, match="at least 2 values"):
        Standardisation.fit({"m": np.ones((1, 1))})
