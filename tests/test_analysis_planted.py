"""End to end on small planted-concept data: train briefly, analyse, check what must show.

Firing entropy separates planted shared from model-specific concepts, the independent SAEs find
the model-specific concepts, the broken-pairing control co-fires far less than the real run, the
report and its figures are written, and ``experiments/analyze.py`` runs on ``.npy`` files.
"""

import json

import numpy as np
import pytest
from absl.testing import flagsaver

from usae_jax.analysis.baseline import BaselineConfig
from usae_jax.analysis.controls import ControlConfig
from usae_jax.analysis.report import AnalysisConfig, analyze
from usae_jax.analysis.statistics import StatisticsConfig
from usae_jax.config import OptimConfig, TrainConfig, USAEConfig
from usae_jax.data.synthetic.planted import PlantedConfig, generate_planted
from usae_jax.train.loop import train

PLANTED = PlantedConfig(widths=(24, 16, 32), num_shared=12, num_specific=6, rows=4096, seed=3)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    planted = generate_planted(PLANTED)
    config = TrainConfig(
        usae=USAEConfig(
            model_names=PLANTED.model_names, widths=PLANTED.widths, num_concepts=64, top_k=4
        ),
        optim=OptimConfig(learning_rate=1e-2),
        batch_rows=256,
        num_steps=1200,
        checkpoint_every=1200,
        data_parallel=1,
        progress_bar=False,
    )
    train(config, workdir, planted.source())
    return workdir, planted


@pytest.mark.slow
def test_analysis_of_a_planted_run(trained_run):
    workdir, planted = trained_run
    analysis = AnalysisConfig(
        statistics=StatisticsConfig(batch_rows=1024),
        baseline=BaselineConfig(num_steps=400),
        controls=ControlConfig(num_steps=400, kinds=("real", "shuffled")),
        num_example_concepts=4,
    )
    results = analyze(workdir, planted.activations, analysis, planted)
    p = results["planted"]
    assert p["num_shared"] >= 8 and p["num_specific"] + p["num_packed"] >= 8, p
    assert p["entropy_auroc_shared_vs_specific"] >= 0.9, p
    assert p["cofire_auroc_shared_vs_specific_and_packed"] >= 0.9, p
    baseline = results["independent_saes"]
    for name in PLANTED.model_names:
        assert baseline[name]["planted_specific_found_fraction"] >= 0.8, baseline[name]
        # In 16-32 dimensions random atoms often reach cos > 0.5 by chance (about half the
        # concepts of the 16-wide model); the trained SAEs still match more.
        chance = baseline[name]["random_atoms_matched_fraction"]
        assert baseline[name]["matched_fraction"] > chance, baseline[name]
    controls = results["controls"]
    real, shuffled = controls["real"], controls["shuffled"]
    assert shuffled["cofire_tokens_per_row"] < 0.25 * real["cofire_tokens_per_row"], controls
    assert shuffled["mean_cross_r2"] < real["mean_cross_r2"] - 0.1, controls
    out = workdir / "analysis"
    for png in results["figures"]:
        assert (out / png).stat().st_size > 10_000, png
    report = (out / "report.md").read_text()
    for section in (
        "Reconstruction: R² matrix",
        "Universality vs importance",
        "Independent SAEs",
        "Controls",
    ):
        assert f"## {section}" in report
    assert json.loads((out / "analysis.json").read_text())["step"] == 1200


@pytest.mark.slow
def test_analyze_entry_point_on_npy_files(trained_run, tmp_path):
    from experiments import analyze as entry

    workdir, planted = trained_run
    paths = {}  # the parsed value of --npy=name=path,...
    for name, array in planted.activations.items():
        np.save(tmp_path / f"{name}.npy", array)
        paths[name] = str(tmp_path / f"{name}.npy")
    with flagsaver.flagsaver(
        workdir=str(workdir),
        out=str(tmp_path / "out"),
        npy=paths,
        baseline=False,
        controls=False,
        max_rows=2048,
        example_concepts=2,
        compilation_cache="",
    ):
        entry.FLAGS.mark_as_parsed()
        entry.main([])
    result = json.loads((tmp_path / "out" / "analysis.json").read_text())
    assert result["num_rows"] == 2048 and "controls" not in result
    assert len(result["per_concept"]["firing_entropy"]) == 64
    assert set(result["per_concept"]["cofire_proportion"]) == set(PLANTED.model_names)
    diffing = result["model_diffing"]
    assert sum(diffing["classes"].values()) == 64
    assert set(diffing["per_concept"]["latent_scaling"]) == set(PLANTED.model_names)
    assert (tmp_path / "out" / "report.md").stat().st_size > 1000


@pytest.mark.slow
def test_report_draws_image_heatmaps_when_tokens_are_images(trained_run, tmp_path):
    from usae_jax.analysis.examples import ImageTokens

    workdir, planted = trained_run
    # Pretend the 4096 rows are 256 images of a 4 x 4 token grid, 16 x 16 pixels each.
    images = np.random.default_rng(0).random((256, 16, 16, 3)).astype(np.float32)
    tokens = ImageTokens(np.repeat(np.arange(256), 16), (4, 4), images)
    analysis = AnalysisConfig(baseline=None, controls=None, num_example_concepts=2)
    results = analyze(workdir, planted.activations, analysis, planted, tokens, tmp_path)
    drawn = [f for f in results["figures"] if f.endswith("_images.png")]
    assert len(drawn) == 2, results["figures"]
    for name in drawn:
        assert (tmp_path / name).stat().st_size > 10_000
    assert drawn[0] in (tmp_path / "report.md").read_text()
