"""The CAM report's "best natural image": the CAM objective's largest value over a store's images.

No backbone is needed: the objective on natural images reads the stored tokens, so a tiny store
and a random USAE give a brute-force reference.
"""

import json

import jax
import numpy as np
import pytest

from usae_jax.analysis import load as trained
from usae_jax.analysis.cam import optimize as cam
from usae_jax.analysis.cam import output as cam_output
from usae_jax.config import USAEConfig
from usae_jax.data import store as st
from usae_jax.data.loader import StoreSource
from usae_jax.model.inference import encode_eval
from usae_jax.model.params import init_params

GRID = (2, 3)  # 6 tokens per image
IMAGES = 11
CONCEPTS = [5, 1, 9]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    path = tmp_path_factory.mktemp("natural") / "store"
    rng = np.random.default_rng(0)
    rows = IMAGES * 6
    arrays = {
        "a": rng.normal(1.0, 2.0, (rows, 4)).astype(np.float32),
        "b": rng.normal(0.0, 0.5, (rows, 3)).astype(np.float32),
    }
    ids = [f"img{i}" for i in range(IMAGES)]
    store = st.write_store(path, arrays, GRID, ids, chunk_images=4)
    usae = USAEConfig(model_names=("a", "b"), widths=(4, 3), num_concepts=12, top_k=3)
    params, stats = init_params(jax.random.key(1), usae)
    return store, usae, params, stats


def brute_force(store, usae, params, stats):
    """Per model: ``[images, C]`` token-mean pre-activation, one image at a time."""
    source = StoreSource(store)
    out = {}
    for name in usae.model_names:
        per_image = []
        for i in range(IMAGES):
            x = source.rows(np.arange(i * 6, (i + 1) * 6))[name]
            pre = np.asarray(encode_eval(usae, params["models"][name], stats[name], x).pre_codes)
            per_image.append(pre[:, CONCEPTS].mean(axis=0))
        out[name] = np.stack(per_image)
    return out


def test_natural_image_maxima_match_brute_force(setup):
    store, usae, params, stats = setup
    want = brute_force(store, usae, params, stats)
    # batch_images=4 splits the 11 images unevenly: the running maximum crosses batches.
    got = trained.natural_image_maxima(
        usae, params, stats, StoreSource(store), 6, CONCEPTS, batch_images=4
    )
    for name in usae.model_names:
        np.testing.assert_allclose(got[name]["value"], want[name].max(axis=0), rtol=1e-5)
        np.testing.assert_array_equal(got[name]["image"], want[name].argmax(axis=0))


def test_natural_image_maxima_rejects_partial_images(setup):
    store, usae, params, stats = setup
    with pytest.raises(ValueError, match="whole images"):
        trained.natural_image_maxima(usae, params, stats, StoreSource(store), 5, CONCEPTS)


def test_cam_report_stores_the_best_natural_image(setup):
    store, usae, params, stats = setup
    natural = trained.natural_image_maxima(usae, params, stats, StoreSource(store), 6, CONCEPTS)
    count, models = len(CONCEPTS), len(usae.model_names)
    result = cam.CAMResult(
        images=np.zeros((count, models, 4, 4, 3), np.float32),
        concepts=np.asarray(CONCEPTS),
        model_names=usae.model_names,
        start=np.zeros((count, models)),
        final=np.ones((count, models)),
        final_codes=np.ones((count, models)),
        history=np.zeros((1, count, models)),
        seconds=1.0,
    )
    ids = store.manifest["image_ids"]
    report = json.loads(json.dumps(cam_output.cam_report(result, cam.CAMConfig(), natural, ids)))
    want = brute_force(store, usae, params, stats)
    for i, row in enumerate(report["concepts"]):
        assert row["concept"] == CONCEPTS[i]
        for name in usae.model_names:
            assert row[name]["best_natural_pre"] == pytest.approx(want[name][:, i].max(), rel=1e-5)
            assert row[name]["best_natural_image"] == f"img{int(want[name][:, i].argmax())}"
    assert "best_natural_pre" in report["natural_images"]
    # Without natural maxima the report is as before.
    plain = cam_output.cam_report(result, cam.CAMConfig())
    assert "best_natural_pre" not in plain["concepts"][0]["a"] and "natural_images" not in plain
