"""The recipe table's selection and formatting (the training itself is experiments/recipes.py)."""

import jax
import pytest

from usae_jax.config import TrainConfig, USAEConfig
from usae_jax.config_io import replace_fields
from usae_jax.pipelines.recipes import RECIPES, TABLE_STEPS, best_recipe, format_table, meets_aim


def _row(name, shared, specific, entropy, norm):
    models = ("a", "b")
    return {
        "name": name,
        "note": name,
        "shared_mean": dict(zip(models, shared, strict=True)),
        "shared_min": dict(zip(models, shared, strict=True)),
        "specific_mean": dict(zip(models, specific, strict=True)),
        "specific_min": dict(zip(models, specific, strict=True)),
        "entropy_auroc": entropy,
        "norm_entropy_auroc": norm,
        "dead": 0.0,
        "l0": 8.0,
        "ms_per_step": 12.0,
    }


def test_best_recipe_aim_and_table():
    rows = [
        _row("x", (0.99, 0.90), (0.99, 0.99), 0.99, 0.5),
        _row("y", (0.96, 0.96), (0.97, 0.98), 0.5, 0.97),
        _row("z", (0.96, 0.96), (0.97, 0.98), 0.5, 0.90),
    ]
    assert best_recipe(rows)["name"] == "y"  # worst model 0.96 beats 0.90; AUROC breaks the tie
    assert [meets_aim(r) for r in rows] == [False, True, False]
    table = format_table(rows, ("a", "b")).splitlines()
    assert len(table) == 2 + 3 and table[3].startswith("| y (y) | 0.960 / 0.96 | 0.960 / 0.96")


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda r: r.name)
def test_every_recipe_is_a_valid_config(recipe):
    base = TrainConfig(usae=USAEConfig(num_concepts=256, top_k=8), num_steps=10)
    config = replace_fields(base, **recipe.overrides)
    assert config.usae.architecture in ("usae", "sparc", "crosscoder")


def test_best_recipe_preset_is_the_table_row():
    """``--config=crosscoder_batchtopk`` trains exactly the table's best row on its data."""
    from experiments.configs import crosscoder_batchtopk, planted_hard

    config = crosscoder_batchtopk.get_config()
    base = replace_fields(planted_hard.get_config(), num_steps=TABLE_STEPS)
    assert config == replace_fields(base, **crosscoder_batchtopk.RECIPE.overrides)
    assert (config.usae.architecture, config.usae.sparsity) == ("crosscoder", "batch_topk")
    assert config.source_sampling == "all" and config.num_steps == 3000
    assert crosscoder_batchtopk.get_planted() == planted_hard.get_planted()


@pytest.mark.parametrize(
    "overrides",
    [
        dict(
            architecture="crosscoder", sparsity="batch_topk", loss="l2_auxk", source_sampling="all"
        ),
        dict(architecture="sparc", loss="l2_auxk", aux="dead_latents"),
    ],
    ids=["crosscoder", "sparc"],
)
def test_runs_without_the_official_layout_report_without_the_export(
    tiny_planted, tiny_config, tmp_path, overrides
):
    """``experiments.train --config=crosscoder_batchtopk`` crashed at the end: the official
    safetensors export needs per-model BatchNorm, which neither a crosscoder nor SPARC has."""
    from usae_jax.model.interop import export_safetensors
    from usae_jax.pipelines.train_and_report import train_and_report, written_outputs

    config = replace_fields(tiny_config(num_steps=4, checkpoint_every=4), **overrides)
    result, summary = train_and_report(config, tmp_path, tiny_planted.source(), tiny_planted)
    assert set(summary["recovery"]) == set(tiny_planted.activations)
    outputs = written_outputs(tmp_path)
    assert "summary.json" in outputs and "export/" not in outputs
    params, stats = jax.device_get((result.state.params, result.state.batch_stats))
    with pytest.raises(ValueError, match="official per-model layout"):
        export_safetensors(params, stats, tmp_path / "export")
