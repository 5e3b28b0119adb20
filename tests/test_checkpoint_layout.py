"""Checkpoints: old layout still loads, parameters are their own item, one restore path for
analysis, shapes-first sharded init and resume, the step registry, writers, config fields."""

import dataclasses
import json
import logging
import os
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from tests.conftest import make_tiny_config
from usae_jax.analysis.load import load_run
from usae_jax.config import OptimConfig, TrainConfig, USAEConfig
from usae_jax.config_io import bind_models, check_unique_fields
from usae_jax.parallel.mesh import MODEL, make_training_mesh
from usae_jax.train.checkpoint import Checkpointer
from usae_jax.train.loop import train
from usae_jax.train.optim import build_optimizers
from usae_jax.train.state import abstract_train_state, create_train_state, init_train_state
from usae_jax.train.steps import STEP_BUILDERS, make_steps
from usae_jax.train.writers import TensorBoardWriter, read_jsonl, tensorboard_writer

CHECKPOINT_V0 = Path(__file__).parent / "data" / "checkpoint_v0"


def _expected_v0():
    flat = np.load(CHECKPOINT_V0 / "expected.npz")
    params = {"models": {}}
    stats = {}
    for name in ("a", "b"):
        params["models"][name] = {
            "encoder": {k: flat[f"{name}/encoder/{k}"] for k in ("kernel", "bias")},
            "batchnorm": {k: flat[f"{name}/batchnorm/{k}"] for k in ("scale", "bias")},
            "dictionary": flat[f"{name}/dictionary"],
        }
        stats[name] = {k: flat[f"{name}/stats/{k}"] for k in ("mean", "var", "count")}
    return params, stats


def _assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_checkpoint_written_before_the_restructure_still_loads(tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(CHECKPOINT_V0, workdir)
    config, params, stats, step = load_run(workdir)
    assert step == 3 and config.usae.model_names == ("a", "b")
    expected_params, expected_stats = _expected_v0()
    _assert_trees_equal(params, expected_params)
    _assert_trees_equal(stats, expected_stats)
    # ...and resumes: the training loop restores the whole old state onto the sharded layout.
    checkpointer = Checkpointer(workdir, 1, json.loads((workdir / "config.json").read_text()))
    optimizers, _ = build_optimizers(config, 3, 4)
    abstract, _ = abstract_train_state(config, optimizers, make_training_mesh(config))
    state, meta = checkpointer.restore(abstract)
    checkpointer.close()
    assert int(state.step) == 3 and meta["step"] == 3
    _assert_trees_equal(jax.device_get(state.params), expected_params)


def test_new_checkpoints_keep_parameters_and_statistics_as_their_own_item(
    tiny_planted, tmp_path, caplog
):
    config = make_tiny_config(data_parallel=1, num_steps=2, checkpoint_every=2)
    result = train(config, tmp_path, tiny_planted.source(), plots=False)
    step_dir = tmp_path / "checkpoints" / "2"
    assert {"model", "train", "meta"} <= set(os.listdir(step_dir))
    assert not (tmp_path / "r2_matrix.png").exists()  # plots=False draws nothing
    with caplog.at_level(logging.WARNING):
        _, params, stats, step = load_run(tmp_path)
    # reading the model item alone names no other item as unrestorable (orbax warned 6 times)
    assert not [r for r in caplog.records if "could not be restored" in r.getMessage()]
    assert step == 2
    with pytest.raises(FileNotFoundError, match="no training run in .*config.json does not exist"):
        load_run(tmp_path / "checkpoints")  # a folder that is not a run
    _assert_trees_equal(params, jax.device_get(result.state.params))
    _assert_trees_equal(stats, jax.device_get(result.state.batch_stats))


def _largest_shard_fraction(state) -> float:
    """Largest fraction of any concept-sized array that one device holds."""
    worst = 0.0
    for leaf in jax.tree.leaves(state):
        if leaf.ndim == 0 or 32 not in leaf.shape:
            continue
        for shard in leaf.addressable_shards:
            worst = max(worst, shard.data.size / leaf.size)
    return worst


def test_concept_sharded_state_is_born_and_restored_in_shards(tiny_planted, tmp_path):
    config = make_tiny_config(data_parallel=2, concept_parallel=4, num_steps=2, checkpoint_every=2)
    mesh = make_training_mesh(config)
    optimizers, _ = build_optimizers(config, 2, 8)
    abstract, shardings = abstract_train_state(config, optimizers, mesh)
    kernel = abstract.params["models"]["alpha"]["encoder"]["kernel"]
    assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, MODEL)
    fresh = init_train_state(config, optimizers, shardings)
    assert _largest_shard_fraction(fresh) == pytest.approx(1 / 4)
    result = train(config, tmp_path, tiny_planted.source(), plots=False)
    assert _largest_shard_fraction(result.state) == pytest.approx(1 / 4)
    checkpointer = Checkpointer(tmp_path, 2, json.loads((tmp_path / "config.json").read_text()))
    restored, _ = checkpointer.restore(abstract)
    checkpointer.close()
    assert _largest_shard_fraction(restored) == pytest.approx(1 / 4)
    _assert_trees_equal(jax.device_get(restored.params), jax.device_get(result.state.params))


def test_sharded_init_equals_the_plain_init(tiny_planted):
    config = make_tiny_config(data_parallel=1)
    optimizers, _ = build_optimizers(config, 8, 8)
    _, shardings = abstract_train_state(config, optimizers, make_training_mesh(config))

    _assert_trees_equal(
        jax.device_get(init_train_state(config, optimizers, shardings)),
        jax.device_get(create_train_state(config, optimizers)),
    )


def test_step_registry_picks_bodies_from_the_config():
    config = make_tiny_config()
    optimizers, _ = build_optimizers(config, 8, 8)
    steps = make_steps(config, optimizers)
    assert set(steps.bodies) == set(config.usae.model_names)
    assert steps.key_of(0) in config.usae.model_names
    every = make_steps(dataclasses.replace(config, source_sampling="all"), optimizers)
    assert list(every.bodies) == [None] and every.key_of(5) is None
    sparc = dataclasses.replace(
        config, usae=dataclasses.replace(config.usae, architecture="sparc", aux="dead_latents")
    )
    assert list(make_steps(sparc, optimizers).bodies) == [None]
    assert {arch for arch, _ in STEP_BUILDERS} == {"usae", "sparc", "crosscoder"}


def test_recipes_bind_models_from_the_source():
    recipe = TrainConfig(usae=USAEConfig(num_concepts=8, top_k=2), num_steps=1)
    bound = bind_models(recipe, ("a", "b"), (4, 6))
    assert bound.usae.model_names == ("a", "b") and bound.usae.widths == (4, 6)
    assert bind_models(bound, ("a", "b"), (4, 6)) is bound
    with pytest.raises(ValueError, match="width 5"):
        bind_models(bound, ("a", "b"), (4, 5))
    with pytest.raises(ValueError, match="do not match"):
        bind_models(bound, ("b", "a"), (6, 4))


def test_config_field_names_are_unique_across_the_nested_configs():
    check_unique_fields(USAEConfig, OptimConfig, TrainConfig)

    @dataclasses.dataclass(frozen=True)
    class Clash:
        top_k: int = 1

    with pytest.raises(TypeError, match="top_k"):
        check_unique_fields(USAEConfig, Clash)


def test_tensorboard_writer_is_an_option(tiny_planted, tmp_path):
    pytest.importorskip("tensorboardX")
    config = make_tiny_config(data_parallel=1, num_steps=2, checkpoint_every=2, log_every=1)
    train(config, tmp_path, tiny_planted.source(), make_writer=tensorboard_writer, plots=False)
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl") if "loss" in r] == [1, 2]
    writer = TensorBoardWriter(tmp_path / "tb")
    writer.write(3, {"loss": 1.5, "dead": {"a": 0.1}, "r2": [[1.0, 0.5]], "source": "a"})
    writer.close()
