"""The concept explorer without a browser: closed-form measures, documents, files, bad input."""

import json

import numpy as np
import pytest
from PIL import Image

from tests.test_analysis_statistics import identity_usae
from usae_jax.analysis.examples import ImageTokens
from usae_jax.analysis.explorer import build, media
from usae_jax.analysis.explorer.measures import (
    ConceptPass,
    ExplorerConfig,
    concept_pass,
    concept_table,
    nearest_concepts,
    unique_model,
)
from usae_jax.analysis.explorer.site import SCHEMA, ExplorerInputs, explorer_documents, write_site
from usae_jax.analysis.statistics import ConceptStatistics, StatisticsConfig, compute_statistics
from usae_jax.config import TrainConfig, USAEConfig
from usae_jax.data.images import from_samples
from usae_jax.data.loader import StoreSource
from usae_jax.data.source import ArraySource
from usae_jax.data.store import write_store
from usae_jax.train.loop import train


def synthetic_inputs(num_concepts: int, names=("alpha", "beta", "gamma"), seed: int = 0):
    """Random but consistent explorer inputs (no model): ``num_concepts`` concepts, a tenth of
    them dead, a fifth unique to one model."""
    rng = np.random.default_rng(seed)
    M, n, t, rows = len(names), num_concepts, 8, 100_000
    fire = rng.integers(1, 5000, (M, n))
    fire[:, rng.random(n) < 0.1] = 0
    solo = rng.random(n) < 0.2
    fire[1:, solo] = 0
    cofire = np.where(fire.min(axis=0) > 0, (fire.min(axis=0) * rng.random(n)).astype(int), 0)
    top = np.sort(rng.random((M, n, t)) * 3 + 0.2, axis=-1)[..., ::-1] * (fire[..., None] > 0)
    statistics = ConceptStatistics(
        model_names=tuple(names),
        tau=0.1,
        num_rows=rows,
        fire_counts=fire,
        nonzero_counts=fire,
        activation_sum=fire * 0.5,
        squared_activation_sum=fire * 0.4,
        cofire_counts=cofire,
        pairwise_cofire=np.zeros((M, M, n), np.int64),
        energy=rng.random((M, n)) * (fire > 0),
        top_values=top,
        top_rows=rng.integers(0, rows, (M, n, t)),
        r2=np.eye(M),
        r2_per_feature=np.eye(M),
    )
    bins = ExplorerConfig().histogram_bins
    passed = ConceptPass(
        histogram=rng.integers(0, 50, (M, n, bins)) * (fire[..., None] > 0),
        histogram_max=np.maximum(top[:, :, 0], 0.1),
        partners=rng.integers(0, n, (n, 8)),
        partner_counts=np.sort(rng.integers(1, 100, (n, 8)), axis=1)[:, ::-1],
    )
    neighbours = (rng.integers(0, n, (M, n, 8)), rng.random((M, n, 8)).astype(np.float32))
    run = {"title": f"synthetic {n}", "step": 0, "architecture": "usae", "sparsity": "local_topk"}
    return ExplorerInputs(
        run=run,
        statistics=statistics,
        concept_pass=passed,
        neighbours=neighbours,
        labels=[("shared", "specific", "packed", "none")[i % 4] for i in range(n)],
        extra_columns={"splice_effect": rng.random(n).round(3).tolist()},
    )


def test_concept_pass_histograms_and_partners_closed_form():
    # Codes are exactly relu(x) (identity encoder, k = n). tau = 0.1. Concept 0 fires on rows
    # 0, 1, 3; concept 1 on rows 0, 3; concept 2 on rows 1, 3 (0.05 on row 2 is below tau).
    usae, params, stats = identity_usae(2, 3)
    x = np.array([[1.0, 0.5, 0], [0.3, 0, 0.6], [0, 0, 0.05], [1.0, 0.5, 0.2]], np.float32)
    source = ArraySource({"m0": x, "m1": x.copy()}, standardise=False)
    config = ExplorerConfig(
        statistics=StatisticsConfig(batch_rows=3), histogram_bins=4, num_cofiring=3
    )
    statistics = compute_statistics(usae, params, stats, source, config.statistics)
    passed = concept_pass(usae, params, stats, source, statistics, config)
    # Bins over (0.1, max]: concept 0 (max 1.0): 0.3 -> bin 0, 1.0 twice -> bin 3.
    np.testing.assert_array_equal(passed.histogram[0], [[1, 0, 0, 2], [0, 0, 0, 2], [1, 0, 0, 1]])
    np.testing.assert_array_equal(passed.histogram[1], passed.histogram[0])
    np.testing.assert_allclose(passed.histogram_max[0], [1.0, 0.5, 0.6])
    # Same row, same model: (0, 1) on rows 0 and 3, (0, 2) on rows 1 and 3, (1, 2) on row 3;
    # summed over the two models. Ties: lower id first; -1 pads.
    np.testing.assert_array_equal(passed.partners, [[1, 2, -1], [0, 2, -1], [0, 1, -1]])
    np.testing.assert_array_equal(passed.partner_counts, [[4, 4, 0], [4, 2, 0], [4, 2, 0]])


def test_nearest_concepts_rank_by_cosine_in_blocks():
    atoms = np.array([[1, 0, 0], [1, 0.1, 0], [0, 1, 0], [-2, 0, 0]], np.float32)
    for block in (1, 3, 100):
        ids, cos = nearest_concepts({"a": atoms, "b": atoms[[3, 2, 1, 0]]}, 2, block=block)
        np.testing.assert_array_equal(ids[0], [[1, 2], [0, 2], [1, 0], [2, 1]])
        np.testing.assert_allclose(cos[0, 0], [1 / np.sqrt(1.01), 0.0], atol=1e-6)
        np.testing.assert_allclose(cos[0, 3, 0], 0.0, atol=1e-6)
        np.testing.assert_array_equal(ids[1, 0], [1, 2])  # b row 0 is -e0: e1 (0), then -0.995
    assert nearest_concepts({"a": atoms}, 10)[0].shape == (1, 4, 3)  # at most n - 1


def test_unique_model_and_table_columns():
    fire = np.array([[100, 5, 0, 96], [0, 5, 0, 4]])
    np.testing.assert_array_equal(unique_model(fire, 0.95), [0, -1, -1, 0])
    np.testing.assert_array_equal(unique_model(fire, 1.0), [0, -1, -1, -1])
    inputs = synthetic_inputs(50)
    table = concept_table(inputs.statistics, ExplorerConfig())
    assert table["firing_rate"].shape == (3, 50)
    fired_somewhere = inputs.statistics.fire_counts.sum(0) > 0
    only_alpha = fired_somewhere & (inputs.statistics.fire_counts[1:].sum(0) == 0)
    np.testing.assert_array_equal(table["unique_to"][only_alpha], 0)


def test_config_and_columns_reject_bad_input(tmp_path):
    with pytest.raises(ValueError, match="histogram_bins"):
        ExplorerConfig(histogram_bins=0)
    with pytest.raises(ValueError, match="unique_share"):
        ExplorerConfig(unique_share=0.4)
    with pytest.raises(ValueError, match="image_concepts"):
        ExplorerConfig(image_concepts=-1)
    path = tmp_path / "columns.json"
    path.write_text(json.dumps({"splice": {"a": [1, None, 3], "b": [0, 0, 0]}, "x": [1, 2, 3]}))
    assert build.read_columns(path, 3) == {
        "splice:a": [1, None, 3],
        "splice:b": [0, 0, 0],
        "x": [1, 2, 3],
    }
    with pytest.raises(ValueError, match="list of 4 values"):
        build.read_columns(path, 4)
    inputs = synthetic_inputs(5)
    bad = ExplorerInputs(**{**inputs.__dict__, "extra_columns": {"splice": [1.0, 2.0]}})
    with pytest.raises(ValueError, match="2 values for 5 concepts"):
        explorer_documents(bad, ExplorerConfig())


def test_row_texts_highlight_the_row_token():
    texts = media.RowTexts(
        [["the", "cat", "sat", "down"], ["a", "dog"]],
        item_index=np.array([0, 0, 0, 0, 1, 1]),
        position=np.array([0, 1, 2, 3, 0, 1]),
    )
    assert texts.context(2, window=1) == {
        "item": 0,
        "tokens": ["cat", "sat", "down"],
        "highlight": 1,
    }
    assert texts.context(5) == {"item": 1, "tokens": ["a", "dog"], "highlight": 1}
    pooled = media.RowTexts.from_sentences(["one two", "three"])
    assert pooled.context(1) == {"item": 1, "tokens": ["three"], "highlight": None}
    with pytest.raises(ValueError, match="maps to item 2"):
        pooled.context(2)


def test_overlay_colours_only_where_the_concept_fires():
    image = np.full((8, 8, 3), 0.5, np.float32)
    heat = np.zeros((2, 2), np.float32)
    heat[1, 1] = 2.0
    pixels = media.overlay(image, heat, 2.0)
    assert pixels.shape == (8, 8, 3) and pixels.dtype == np.uint8
    np.testing.assert_array_equal(pixels[0, 0], [128, 128, 128])  # no heat: the image
    assert np.abs(pixels[7, 7].astype(int) - 128).max() > 20  # peak: jet colour blended in


def test_cam_panels_write_pngs_and_check_shapes(tmp_path):
    report = {
        "models": ["a", "b"],
        "concepts": [
            {"concept": 7, "a": {"final_pre": 1.0}, "b": {"final_pre": 3.0}},
            {"concept": 2, "a": {"final_pre": 0.5}, "b": {"final_pre": 0.5}},
        ],
    }
    images = np.random.default_rng(0).random((2, 2, 16, 16, 3))
    panels = media.cam_panels(report, images, tmp_path, "run", side=32)
    assert [p["label"] for p in panels[7]] == ["run: a", "run: b"]
    assert panels[7][1]["final_pre"] == 3.0
    assert (tmp_path / panels[2][0]["src"]).stat().st_size > 100
    shared = media.cam_panels(report, images[:, :1], tmp_path, "s", side=32)
    assert shared[7][0]["label"] == "s: shared" and shared[7][0]["final_pre"] == 2.0
    with pytest.raises(ValueError, match="do not match 2 concepts"):
        media.cam_panels(report, images[:1], tmp_path, "x", side=32)


def test_site_files_and_json_export_agree(tmp_path):
    inputs = synthetic_inputs(40)
    config = ExplorerConfig(num_examples=3)
    written = write_site(tmp_path, inputs, config)
    index = json.loads((tmp_path / "json" / "index.json").read_text())
    script = (tmp_path / "data" / "index.js").read_text()
    assert script.startswith("window.USAE_EXPLORER_INDEX = ")
    assert json.loads(script[script.index("{") : script.rindex("}") + 1]) == index
    assert index["schema"] == SCHEMA and index["num_concepts"] == 40
    columns = index["concepts"]
    for key in ("id", "energy", "firing_entropy", "cofire_count", "cofire_proportion", "label"):
        assert len(columns[key]) == 40, key
    assert set(columns["firing_rate"]) == {"alpha", "beta", "gamma"}
    assert len(columns["extra"]["splice_effect"]) == 40
    concept = json.loads((tmp_path / "json" / "concepts" / "3.json").read_text())
    page = (tmp_path / "data" / "c" / "3.js").read_text()
    assert json.loads(page[page.index("(") + 1 : page.rindex(")")]) == concept
    alpha = concept["per_model"]["alpha"]
    assert len(alpha["top_examples"]) <= 3
    assert len(alpha["histogram"]["edges"]) == len(alpha["histogram"]["counts"]) + 1
    assert len(alpha["nearest"]) == 8 and concept["extra"]["splice_effect"] is not None
    assert concept["energy"] == columns["energy"][3]
    for name in ("index.html", "concept.html", "assets/explorer.js", "assets/explorer.css"):
        assert (tmp_path / name).stat().st_size > 500, name
    assert written["files"] == 2 * 40 + 2 + 4


def test_store_backed_run_gets_crops_of_the_sample_images(tmp_path):
    # A store "extracted" from the offline sample set (1 view, 32 px, 2 x 2 grid; random
    # activations): the explorer rebuilds the images from the manifest and draws crops.
    pytest.importorskip("skimage")  # the sample set: the `extract` extra
    pytest.importorskip("sklearn")
    sample = from_samples(32, views=1, seed=0)
    rng = np.random.default_rng(0)
    rows = 4 * len(sample)
    arrays = {"a": rng.standard_normal((rows, 6)), "b": rng.standard_normal((rows, 5))}
    meta = {"images": {**sample.description, "first_id": sample.ids[0]}}
    store = write_store(tmp_path / "store", arrays, (2, 2), sample.ids, meta=meta)
    usae = USAEConfig(model_names=("a", "b"), widths=(6, 5), num_concepts=8, top_k=2)
    config = TrainConfig(usae=usae, batch_rows=16, num_steps=3, eval_rows=16, progress_bar=False)
    train(config, tmp_path / "run", StoreSource(store))
    tokens = build.store_image_tokens(store)
    assert tokens.grid == (2, 2) and tokens.image(1).shape == (32, 32, 3)
    np.testing.assert_allclose(tokens.image(1), sample.load(1) / 255.0)
    result = build.build_explorer(
        tmp_path / "run", StoreSource(store), tmp_path / "site", ExplorerConfig(), tokens=tokens
    )
    concept = max(range(8), key=lambda c: len(list((tmp_path / "site" / "img").glob(f"c{c}_*"))))
    document = json.loads((tmp_path / "site" / "json" / "concepts" / f"{concept}.json").read_text())
    crops = [image for m in ("a", "b") for image in document["per_model"][m]["images"]]
    assert crops and all((tmp_path / "site" / image["src"]).is_file() for image in crops)
    assert result["files"] > 2 * 8 + 6
    index = json.loads((tmp_path / "site" / "json" / "index.json").read_text())
    assert {"relative_norm:a", "latent_scaling:b", "diffing_class"} <= set(
        index["concepts"]["extra"]
    )
    with pytest.raises(ValueError, match="not the store's images"):
        build.store_image_tokens(store, images=_image_list(tmp_path))
    assert (
        build.store_image_tokens(write_store(tmp_path / "s2", arrays, (2, 2), sample.ids)) is None
    )


def _image_list(tmp_path):
    """A list file naming one image that is not in the store."""
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "other.png")
    (tmp_path / "list.txt").write_text("other.png\n")
    return str(tmp_path / "list.txt")


def test_image_panels_find_interleaved_rows_and_cells(tmp_path):
    # Two images of a 2 x 2 grid whose rows are interleaved (row r: image r % 2, cell r // 2).
    # Concept 0 fires only at row 5 = image 1, cell 2 (value 2), for both models.
    usae, params, stats = identity_usae(2, 2)
    x = np.zeros((8, 2), np.float32)
    x[5, 0] = 2.0
    source = ArraySource({"m0": x, "m1": x.copy()}, standardise=False)
    statistics = compute_statistics(usae, params, stats, source, StatisticsConfig(num_top=2))
    tokens = ImageTokens(
        np.arange(8) % 2, (2, 2), np.full((2, 8, 8, 3), 0.5, np.float32), np.arange(8) // 2
    )
    panels = media.image_panels(
        usae, params, stats, source, tokens, statistics, [0], tmp_path, num_images=2, side=16
    )
    assert panels[0]["m0"] == [{"src": "img/c0_m0_0.png", "image": 1, "max": 2.0}]
    pixels = np.asarray(Image.open(tmp_path / "img" / "c0_m1_0.png"))
    assert pixels.shape == (16, 16, 3)
    assert np.abs(pixels[12, 4].astype(int) - 128).max() > 20  # cell 2: bottom left
    np.testing.assert_array_equal(pixels[2, 13], [128, 128, 128])  # cell 1: no heat
