"""The real-network pipeline end to end on tiny random CNNs and a handful of synthetic images:
gather-free image set -> extract (train and held-out stores) -> train -> held-out analysis ->
CAM -> explorer; the held-out split; resuming; and the pieces it added (view source, CAM pixel
normalisation of BGR CNNs, a given standardisation)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from usae_jax.analysis.baseline import BaselineConfig, match_dictionaries, train_independent_saes
from usae_jax.analysis.cam.optimize import CAMConfig, normalise_pixels
from usae_jax.analysis.controls import ControlConfig
from usae_jax.analysis.explorer.measures import ExplorerConfig
from usae_jax.analysis.report import AnalysisConfig
from usae_jax.analysis.statistics import StatisticsConfig
from usae_jax.backbones import cnn, efficientnet_lite, open_nsfw
from usae_jax.config import OptimConfig, TrainConfig, USAEConfig
from usae_jax.data import images as image_sources
from usae_jax.data.source import ArraySource, Standardisation
from usae_jax.data.store import read_manifest
from usae_jax.model.params import init_params
from usae_jax.pipelines import real_networks as rn
from usae_jax.pipelines.real_networks_summary import compare_budgets

TINY_EFFNET = efficientnet_lite.EfficientNetLiteConfig(
    stages=((1, 3, 1, 1, 16), (2, 5, 2, 2, 24), (1, 3, 2, 3, 8)), num_classes=5, image_size=32
)
TINY_RESNET = open_nsfw.ResNetConfig(stem=8, stages=((1, 4, 8), (2, 4, 12)), image_size=32)
BACKBONES = {
    "tiny_effnet": lambda: efficientnet_lite.efficientnet_lite_backbone(TINY_EFFNET, None, {}),
    "tiny_resnet": lambda: open_nsfw.open_nsfw_backbone(TINY_RESNET, None, {}),
}
NAMES = ("effnet", "resnet")


def tiny_config(**overrides) -> rn.RealNetworksConfig:
    fields = dict(
        budget="tiny",
        networks=(
            rn.Network(name="effnet", spec="tiny_effnet", layer="blocks.2"),
            rn.Network(name="resnet", spec="tiny_resnet", layer="stage1"),
        ),
        image_size=32,
        grid=4,
        train_views=2,
        held_out_views=2,
        batch_images=4,
        chunk_images=8,
        train=TrainConfig(
            usae=USAEConfig(num_concepts=16, top_k=4),
            batch_rows=32,
            num_steps=12,
            checkpoint_every=12,
            log_every=6,
            eval_rows=64,
            progress_bar=False,
        ),
        analysis=AnalysisConfig(
            statistics=StatisticsConfig(batch_rows=64),
            baseline=BaselineConfig(num_steps=4, sae_seed=1),
            controls=ControlConfig(num_steps=4),
            num_example_concepts=1,
        ),
        analysis_train_rows=96,
        cam=CAMConfig(image_size=32, steps=2, jitter=1.0),
        cam_universal=1,
        cam_unique=1,
        explorer=ExplorerConfig(image_concepts=2, image_px=32, num_images=2),
        screenshot=False,
    )
    return rn.RealNetworksConfig(**(fields | overrides))


def _image_set(folder):
    """Six smooth random colour images: four for training, two held out."""
    rng = np.random.default_rng(0)
    names = []
    os.makedirs(folder / "images")
    for i in range(6):
        small = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((60, 48), Image.BICUBIC)
        image.save(folder / "images" / f"photo{i}.png")
        names.append(f"images/photo{i}.png")
    (folder / "train.txt").write_text("\n".join(names[:4]) + "\n")
    (folder / "held_out.txt").write_text("\n".join(names[4:]) + "\n")
    return names


def _load(spec):
    return BACKBONES[spec]()


def _refuse(spec):
    raise AssertionError(f"a finished run loaded backbone {spec}")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    base = tmp_path_factory.mktemp("real_networks")
    names = _image_set(base / "photos")
    lines = []
    summary = rn.run(
        tiny_config(), base / "run", images=base / "photos", backbone_loader=_load,
        log=lines.append,
    )  # fmt: skip
    return base, names, summary, lines


@pytest.mark.slow
def test_pipeline_end_to_end(finished):
    base, _, summary, lines = finished
    run = base / "run"
    assert lines[0] == "[1/6] images: complete, skipped"  # a gathered set was given
    assert [line for line in lines if line.endswith(": running")] == [
        f"[{i + 1}/6] {s}: running" for i, s in enumerate(rn.STAGES) if s != "images"
    ]
    held = summary["held_out"]
    assert held["rows"] == 2 * 2 * 16  # held-out images x views x grid cells
    for key in ("r2_scalar_centring", "r2_per_feature_centring"):
        assert np.isfinite(held[key]).all() and np.shape(held[key]) == (2, 2)
    assert set(summary["controls"]) >= {"real", "shuffled", "noise"}
    assert set(summary["margins"]) == {"real_minus_shuffled", "real_minus_noise"}
    assert summary["controls"]["analysed_on"] == "separate evaluation rows"
    for name in NAMES:
        assert 0 <= summary["independent_saes"][name]["matched_fraction"] <= 1
    assert summary["training"]["steps"] == 12
    assert set(summary["stages"]) == set(rn.STAGES) - {"images"}
    assert all(s["seconds"] >= 0 and s["peak_rss_mb_after"] > 0 for s in summary["stages"].values())
    assert (run / "explorer" / "index.html").exists() and summary["explorer"]["files"] > 0
    assert json.loads((run / "summary.json").read_text())["held_out"] == held
    analysis = json.loads((run / "analysis" / "analysis.json").read_text())
    assert analysis["baselines_trained_on"] == "separate rows"
    assert (run / "analysis" / "independent_saes_4_steps_seed1").is_dir()
    assert "held-out R²" in lines[-1] and "controls" in lines[-1]
    table = compare_budgets({"a": summary, "b": summary})
    assert "| co-fires per token | " in table and "+0.000" in table


@pytest.mark.slow
def test_held_out_split_respected(finished):
    base, names, summary, _ = finished
    stores = {s: read_manifest(base / "run" / "store" / s)["image_ids"] for s in rn.SPLITS}
    assert {rn.base_image(i) for i in stores["train"]} == set(names[:4])
    assert {rn.base_image(i) for i in stores["held_out"]} == set(names[4:])
    assert summary["stores"]["train"]["rows"] == 4 * 2 * 16
    # The analysis read exactly the held-out store's rows.
    assert summary["held_out"]["rows"] == summary["stores"]["held_out"]["rows"]


@pytest.mark.slow
def test_resume_skips_finished_stages(finished, tmp_path):
    base, _, first, _ = finished
    run = base / "run"
    checkpoint_times = {p: p.stat().st_mtime for p in (run / "usae").rglob("*") if p.is_file()}
    lines = []
    again = rn.run(tiny_config(), run, images=base / "photos", backbone_loader=_refuse,
                   log=lines.append)  # fmt: skip
    assert again["this_invocation"]["skipped"] == list(rn.STAGES)
    assert sum(line.endswith("complete, skipped") for line in lines) == 6
    assert {p: p.stat().st_mtime for p in checkpoint_times} == checkpoint_times
    assert again["held_out"] == first["held_out"] and again["stages"] == first["stages"]
    # A removed analysis reruns, and every stage after it too; the earlier ones stay skipped.
    os.remove(run / "analysis" / "analysis.json")
    lines = []
    third = rn.run(tiny_config(), run, images=base / "photos", backbone_loader=_load,
                   log=lines.append)  # fmt: skip
    assert third["this_invocation"]["skipped"] == ["images", "extract", "train"]
    np.testing.assert_allclose(
        third["held_out"]["r2_scalar_centring"], first["held_out"]["r2_scalar_centring"], 1e-5
    )


def test_overlapping_split_is_refused(tmp_path):
    photos = tmp_path / "photos"
    _image_set(photos)
    with open(photos / "held_out.txt", "a") as handle:
        handle.write("images/photo0.png\n")  # also a training image
    with pytest.raises(ValueError, match="in both splits"):
        rn.run(tiny_config(), tmp_path / "run", images=photos, backbone_loader=_refuse,
               log=lambda line: None)  # fmt: skip
    assert not (tmp_path / "run" / "store").exists()  # refused before any extraction


def test_views_are_seeded(tmp_path):
    photos = tmp_path / "photos"
    _image_set(photos)
    a = image_sources.views_from_list(photos / "train.txt", 32, views=3, seed=0)
    b = image_sources.views_from_list(photos / "train.txt", 32, views=3, seed=0)
    c = image_sources.views_from_list(photos / "train.txt", 32, views=3, seed=1)
    assert a.ids[:3] == ["images/photo0.png#0", "images/photo0.png#1", "images/photo0.png#2"]
    np.testing.assert_array_equal(a.load_many(range(12)), b.load_many(range(12)))
    np.testing.assert_array_equal(a.load(0), c.load(0))  # view 0 is the centre crop
    assert not np.array_equal(a.load(1), c.load(1))


@pytest.mark.parametrize(
    "style",
    [
        dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),  # EfficientNet: ImageNet
        dict(mean=(104.0, 117.0, 123.0), std=(1.0, 1.0, 1.0), pixel_scale=1.0, bgr=True),  # Caffe
    ],
    ids=["imagenet", "caffe_bgr"],
)
def test_cam_pixels_match_backbone_preprocessing(style):
    backbone = cnn.ConvBackbone(
        name="stub", identity={}, image_size=8, layer_shapes={"x": (1, 1, 3)},
        forward=lambda state, pixels: {"x": pixels}, params=None, **style,
    )  # fmt: skip
    images = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    ours = normalise_pixels(backbone, jnp.asarray(images, jnp.float32) / 255.0)
    np.testing.assert_allclose(ours, backbone.preprocess(images), rtol=1e-5, atol=1e-4)


def test_array_source_takes_a_given_standardisation():
    arrays = {"a": np.arange(12.0).reshape(6, 2)}
    given = Standardisation(mean={"a": 1.0}, std={"a": 2.0}, epsilon=0.0)
    rows = ArraySource(arrays, standardisation=given).rows(np.arange(6))["a"]
    np.testing.assert_allclose(rows, (arrays["a"] - 1.0) / 2.0)
    with pytest.raises(ValueError, match="no statistics"):
        ArraySource({"b": arrays["a"]}, standardisation=given)


def test_independent_sae_seed_breaks_the_shared_start(tmp_path):
    """With the USAE's seed the first model's SAE starts from the USAE's first dictionary, so a
    barely trained pair matches by construction; ``sae_seed`` removes that."""
    usae = USAEConfig(model_names=("a", "b"), widths=(48, 8), num_concepts=8, top_k=2)
    config = TrainConfig(usae=usae, optim=OptimConfig(learning_rate=1e-7), batch_rows=32,
                         num_steps=1, checkpoint_every=1, progress_bar=False)  # fmt: skip
    rng = np.random.default_rng(0)
    arrays = {"a": rng.normal(size=(64, 48)), "b": rng.normal(size=(64, 8))}
    start, _ = init_params(jax.random.key(config.seed), usae)
    matched = {}
    for seed in (None, 7):
        saes = train_independent_saes(config, arrays, tmp_path / str(seed), 1, seed)
        matched[seed] = match_dictionaries(start["models"]["a"]["dictionary"], saes["a"]).matched
    assert matched[None].all()
    assert not matched[7].any()  # random 48-d atoms: chance cosines stay below 0.5
