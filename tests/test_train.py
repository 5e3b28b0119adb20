"""The training step and loop: locality of updates, sharding, compilations, resume, bad input."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests.conftest import TINY_PLANTED, make_tiny_config
from usae_jax.config import USAEConfig
from usae_jax.data.source import ArraySource
from usae_jax.data.synthetic.planted import generate_planted
from usae_jax.parallel.mesh import make_training_mesh, shard_rows, state_shardings
from usae_jax.pipelines.train_and_report import OUTPUTS
from usae_jax.train.checkpoint import CheckpointError
from usae_jax.train.loop import (
    NonFiniteLossError,
    StepRunner,
    train,
)
from usae_jax.train.optim import build_optimizers
from usae_jax.train.state import create_train_state
from usae_jax.train.writers import JsonlWriter, read_jsonl

PLANTED = TINY_PLANTED
_config = make_tiny_config


@pytest.fixture(scope="module")
def planted():
    return generate_planted(PLANTED)


def _leaves_equal(a, b) -> bool:
    return all(
        np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def test_step_changes_only_the_source_model(planted):
    config = _config(data_parallel=1)
    optimizers, _ = build_optimizers(config, 8, 8)
    mesh = make_training_mesh(config)
    fresh = create_train_state(config, optimizers)
    shardings = state_shardings(fresh, mesh, config.usae.num_concepts)
    runner = StepRunner(config, optimizers, mesh, shardings)
    state = jax.device_put(fresh, shardings)
    before = jax.device_get(state)
    source = runner.source_of(0)
    batch = shard_rows(planted.source().batch(0, 64, 0), mesh)
    after = jax.device_get(runner(state, batch, 0)[0])
    for name in config.usae.model_names:
        same = [
            _leaves_equal(before.params["models"][name], after.params["models"][name]),
            _leaves_equal(before.opt_states[name], after.opt_states[name]),
            _leaves_equal(before.batch_stats[name], after.batch_stats[name]),
        ]
        assert same == ([False] * 3 if name == source else [True] * 3), name


def test_sharded_equals_single_device_and_compiles_once_per_model(planted, tmp_path):
    assert jax.device_count() == 8, "tests expect 8 fake CPU devices (tests/conftest.py)"
    single = train(_config(data_parallel=1), tmp_path / "one", planted.source())
    sharded = train(_config(data_parallel=8), tmp_path / "eight", planted.source())
    one, eight = jax.device_get((single.state, sharded.state))
    for name in PLANTED.model_names:
        a, b = one.params["models"][name], eight.params["models"][name]
        # The encoder bias feeds BatchNorm, so its true gradient is 0 and its updates are AdamW-
        # scaled rounding noise that depends on the reduction order (see test_parity.py); the
        # running mean inherits that. Everything else must agree to float32 rounding.
        np.testing.assert_allclose(a["dictionary"], b["dictionary"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            a["encoder"]["kernel"], b["encoder"]["kernel"], rtol=1e-5, atol=1e-6
        )
        for part in ("scale", "bias"):
            np.testing.assert_allclose(
                a["batchnorm"][part], b["batchnorm"][part], rtol=1e-5, atol=1e-6
            )
        np.testing.assert_allclose(
            one.batch_stats[name]["var"], eight.batch_stats[name]["var"], rtol=1e-5
        )
    picks = {sharded_source(s) for s in range(8)}
    assert sharded.compilations == len(picks) <= 3
    assert single.compilations == len(picks)


def sharded_source(step):
    from usae_jax.train.steps import draw_source

    return draw_source(0, step, len(PLANTED.model_names))


def test_resumed_run_equals_uninterrupted(planted, tmp_path):
    config = _config(data_parallel=2)
    whole = train(config, tmp_path / "whole", planted.source())
    first = train(config, tmp_path / "split", planted.source(), stop_after=3)
    assert int(first.state.step) == 3
    resumed = train(config, tmp_path / "split", planted.source())
    assert _leaves_equal(jax.device_get(whole.state), jax.device_get(resumed.state))
    records = read_jsonl(tmp_path / "split" / "metrics.jsonl")
    steps = [record["step"] for record in records if "loss" in record]
    assert steps == [2, 4, 6, 8], steps  # the interrupted run's lines from step 3 on are redone
    assert [r["step"] for r in records if "r2" in r] == [4]  # R² at each checkpoint
    assert len(records[-1]["final"]["r2"]) == 3


def test_all_sources_option_updates_every_model(planted, tmp_path):
    result = train(_config(source_sampling="all", data_parallel=1), tmp_path, planted.source())
    assert result.compilations == 1
    for name in PLANTED.model_names:
        assert int(result.state.batch_stats[name]["count"]) == 8


def test_nan_activations_are_rejected(planted, tmp_path):
    arrays = {name: np.array(x) for name, x in planted.activations.items()}
    arrays["beta"][7, 2] = np.nan
    with pytest.raises(ValueError, match="non-finite.*'beta'"):
        train(_config(), tmp_path, ArraySource(arrays, standardise=False))


def test_non_finite_loss_names_the_step_range(planted, tmp_path):
    arrays = {name: x * 1e30 for name, x in planted.activations.items()}
    config = _config(usae=dataclasses.replace(_config().usae, loss="l2_auxk"), data_parallel=1)
    with pytest.raises(NonFiniteLossError, match="between steps 0 and 2"):
        train(config, tmp_path, ArraySource(arrays, standardise=False))


def test_width_mismatch_and_bad_configs_are_clear_errors(planted, tmp_path):
    wrong = dataclasses.replace(_config().usae, widths=(12, 9, 16))
    with pytest.raises(ValueError, match="'beta'.*width 8.*config says 9"):
        train(_config(usae=wrong), tmp_path, planted.source())
    with pytest.raises(ValueError, match="model_names"):
        USAEConfig(model_names=("a", "a"), widths=(4, 4))
    with pytest.raises(ValueError, match="top_k=40"):
        USAEConfig(model_names=("a",), widths=(4,), num_concepts=32, top_k=40)
    with pytest.raises(ValueError, match="empty"):
        ArraySource({})
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        ArraySource.from_npy({"a": tmp_path / "missing.npy"})


def test_corrupt_or_foreign_checkpoint_is_a_clear_error(planted, tmp_path):
    config = _config(data_parallel=1, num_steps=2, checkpoint_every=2)
    train(config, tmp_path, planted.source())
    written = (tmp_path / "config.json").read_text()
    with pytest.raises(CheckpointError, match="different configuration"):
        train(dataclasses.replace(config, seed=5), tmp_path, planted.source())
    assert (tmp_path / "config.json").read_text() == written  # the run's record is kept
    for root, _, files in os.walk(tmp_path / "checkpoints" / "2" / "model"):
        for file in files:
            with open(os.path.join(root, file), "r+b") as handle:
                handle.truncate(3)
    with pytest.raises(CheckpointError, match="unreadable"):
        train(config, tmp_path, planted.source())


def test_train_entry_point_runs_and_writes_outputs(tmp_path):
    workdir = tmp_path / "run"
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.train",
            f"--workdir={workdir}",
            "--steps=30",
            "--batch_rows=256",
            "--noprogress",
            "--data_parallel=1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=os.path.dirname(os.path.dirname(__file__)),
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "R² matrix" in completed.stdout and "recovery" in completed.stdout
    for name in ("r2_matrix.png", "metrics.jsonl", "summary.json", "export/alpha.safetensors"):
        assert (workdir / name).exists(), name
    # Per-concept recovery and the variance share are printed and stored, not only the mean.
    assert "per-concept max cosine" in completed.stdout
    assert "variance carried by the shared concepts" in completed.stdout
    summary = json.loads((workdir / "summary.json").read_text())
    assert len(summary["recovery_per_concept"]["beta"]["shared"]["cosines"]) == 48
    assert set(summary["shared_variance_share"]) == {"alpha", "beta", "gamma"}
    # The listed outputs are exactly those that exist.
    listed = completed.stdout.rsplit("outputs in ", 1)[1].split(": ", 1)[1].strip().split(", ")
    assert listed == [n for n in OUTPUTS if (workdir / n).exists()] and "checkpoints/" in listed


def test_train_entry_point_reads_npy_activations_and_refuses_a_malformed_list(tmp_path):
    rng = np.random.default_rng(0)
    for name, width in (("a", 6), ("b", 10)):
        np.save(tmp_path / f"{name}.npy", rng.standard_normal((256, width)).astype(np.float32))
    root = os.path.dirname(os.path.dirname(__file__))

    def run(npy):
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "experiments.train",
                f"--npy={npy}",
                f"--workdir={tmp_path / 'run'}",
                "--steps=4",
                "--batch_rows=64",
                "--num_concepts=16",
                "--top_k=2",
                "--data_parallel=1",
                "--noprogress",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=root,
        )

    bad = run(f"a={tmp_path / 'a.npy'},a={tmp_path / 'b.npy'}")
    assert bad.returncode != 0 and "model 'a' is given twice" in bad.stderr
    assert not (tmp_path / "run").exists()  # refused before anything was written
    good = run(f"a={tmp_path / 'a.npy'},b={tmp_path / 'b.npy'}")
    assert good.returncode == 0, good.stderr[-3000:]
    assert "training ('a', 'b') on 256 rows" in good.stdout
    assert json.loads((tmp_path / "run" / "config.json").read_text())["usae"]["widths"] == [6, 10]


def test_bfloat16_compute_tracks_float32(planted, tmp_path):
    base = _config(data_parallel=1, num_steps=40, log_every=40, checkpoint_every=40)
    mixed = dataclasses.replace(base, usae=dataclasses.replace(base.usae, compute_dtype="bfloat16"))
    full = train(base, tmp_path / "f32", planted.source())
    half = train(mixed, tmp_path / "bf16", planted.source())
    assert half.state.params["models"]["alpha"]["dictionary"].dtype == np.float32
    r2_full, r2_half = np.diag(full.final_metrics["r2"]), np.diag(half.final_metrics["r2"])
    np.testing.assert_allclose(r2_half, r2_full, atol=0.03)
    # ... and is really a different computation: ignoring compute_dtype would give identical
    # runs, while bfloat16 rounding of the products moves every model's dictionary.
    for name in PLANTED.model_names:
        a = np.asarray(full.state.params["models"][name]["dictionary"])
        b = np.asarray(half.state.params["models"][name]["dictionary"])
        assert np.max(np.abs(a - b)) > 1e-4, name


def test_resume_accepts_operational_changes_and_older_configs(planted, tmp_path):
    from usae_jax.config_io import to_dict, training_identity

    config = _config(data_parallel=1, num_steps=4, checkpoint_every=2)
    train(config, tmp_path, planted.source(), stop_after=2)
    resumed = train(
        dataclasses.replace(config, log_every=1, progress_bar=True, data_parallel=2),
        tmp_path,
        planted.source(),
    )
    assert int(resumed.state.step) == 4
    older = to_dict(config)
    del older["usae"]["compute_dtype"], older["concept_parallel"]  # a config from before them
    assert training_identity(older) == training_identity(to_dict(config))
    with pytest.raises(ValueError, match="unknown training config fields"):
        training_identity({**to_dict(config), "mystery": 1})


def test_resume_after_a_crash_keeps_the_metrics_of_the_restored_step(planted, tmp_path):
    """A run killed after its step-4 checkpoint, with lines of steps 5..8 written (the last one
    torn), resumes from step 4 and ends with the uninterrupted run's metrics.jsonl, line for
    line: the restored step's loss and R² lines are kept, nothing after them."""
    config = _config(data_parallel=2)
    train(config, tmp_path / "whole", planted.source())
    expected = (tmp_path / "whole" / "metrics.jsonl").read_text()
    crashed = tmp_path / "crashed"
    train(config, crashed, planted.source())
    shutil.rmtree(crashed / "checkpoints" / "8")  # killed before the step-8 checkpoint
    lines = (crashed / "metrics.jsonl").read_text().splitlines(keepends=True)
    assert [json.loads(line)["step"] for line in lines] == [2, 4, 4, 6, 8, 8]
    cut = "".join(lines[:4]) + lines[4][: len(lines[4]) // 2]  # loss at 6, half the line of 8
    (crashed / "metrics.jsonl").write_text(cut)
    resumed = train(config, crashed, planted.source())
    assert int(resumed.state.step) == 8
    assert (crashed / "metrics.jsonl").read_text() == expected


def test_jsonl_writer_cut_on_resume(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(
        '{"step": 2, "loss": 1.0}\n{"step": 4, "loss": 0.5}\n{"step": 4, "r2": [[1.0]]}\n'
        '{"step": 4, "final": {"r2": [[1.0]]}}\n{"step": 6, "loss": 0.2}\n{"step": 8, "lo'
    )
    JsonlWriter(path, resume_step=4).write(6, {"loss": 0.3})
    assert [(r["step"], sorted(r)) for r in read_jsonl(path)] == [
        (2, ["loss", "step"]),
        (4, ["loss", "step"]),
        (4, ["r2", "step"]),
        (6, ["loss", "step"]),
    ]
    assert read_jsonl(path)[-1]["loss"] == 0.3
    path.write_text('{"step": 2, "loss": 1.0}\n{"step": 4, "loss": 0.5}')  # no final newline
    JsonlWriter(path, resume_step=4).write(6, {"loss": 0.3})
    assert [r["step"] for r in read_jsonl(path)] == [2, 4, 6]
    path.write_text('{"step": 2, "loss": 1.0}\n{"st')  # torn before the first checkpoint
    JsonlWriter(path, resume_step=0)
    assert path.read_text() == ""


def test_progress_is_plain_lines_when_stderr_is_not_a_terminal(planted, tmp_path, capsys):
    config = _config(data_parallel=1, num_steps=20, log_every=10, checkpoint_every=20)
    train(dataclasses.replace(config, progress_bar=True), tmp_path, planted.source())
    err = capsys.readouterr().err
    assert "\r" not in err  # no bar redraws in a log
    lines = [line for line in err.splitlines() if line.startswith("train USAE: ")]
    assert [line.split(",")[0] for line in lines] == [
        f"train USAE: {n}/20 step ({5 * n}%)" for n in range(2, 21, 2)
    ]
    assert "loss=" in lines[-1]
