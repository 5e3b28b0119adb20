"""Many steps per dispatch (``steps_per_dispatch``): a chunk of steps inside one jitted
``lax.scan`` computes exactly what the same steps dispatched one by one compute."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from usae_jax.config_io import replace_fields
from usae_jax.train.loop import step_chunks, train


def _leaves(state):
    return [np.asarray(leaf) for leaf in jax.tree.leaves(jax.device_get(state))]


def _metric_lines(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_step_chunks_cut_at_multiples_of_the_size():
    assert step_chunks(0, 10, 4) == [range(0, 4), range(4, 8), range(8, 10)]
    assert step_chunks(6, 13, 4) == [range(6, 8), range(8, 12), range(12, 13)]
    assert step_chunks(3, 3, 4) == []
    assert sum(len(r) for r in step_chunks(5, 1000, 7)) == 995


FAMILY = {  # overrides, compiled bodies, steps (10: chunks of 4 and a tail of 2; 8: no tail)
    "usae_random_one": ({}, 3, 10),
    "usae_all": (dict(source_sampling="all"), 1, 8),
    "usae_concept_sharded": (dict(concept_parallel=2), 3, 10),
    "crosscoder": (
        dict(architecture="crosscoder", loss="l2_auxk", source_sampling="all"),
        1,
        8,
    ),
    "sparc": (dict(architecture="sparc", loss="l2_auxk", aux="dead_latents"), 1, 8),
}


@pytest.mark.parametrize("recipe", list(FAMILY))
def test_chunked_steps_equal_single_steps_bitwise(tiny_planted, tiny_config, tmp_path, recipe):
    overrides, bodies, steps = FAMILY[recipe]
    # Chunks of 4: two whole chunks, and for 10 steps a tail of 2 (a second compilation; the
    # step families that need no per-source switch skip it, the runner is the same).
    base = replace_fields(
        tiny_config(num_steps=steps, log_every=4, checkpoint_every=8), **overrides
    )
    single = train(base, tmp_path / "single", tiny_planted.source(), plots=False)
    chunked = train(
        replace_fields(base, steps_per_dispatch=4),
        tmp_path / "chunked",
        tiny_planted.source(),
        plots=False,
    )
    for a, b in zip(_leaves(single.state), _leaves(chunked.state), strict=True):
        np.testing.assert_array_equal(a, b)
    assert _metric_lines(tmp_path / "single") == _metric_lines(tmp_path / "chunked")
    # Each body is traced once (the scan reuses it for the tail chunk), not once per step.
    assert chunked.compilations == bodies


@pytest.mark.slow
def test_chunked_steps_equal_single_steps_bitwise_at_xla_default_optimisation():
    """The case above with one source per step, in a pytest subprocess at XLA's default
    optimisation (the rest of the suite runs with it off: tests/conftest.py), as users run it."""
    if os.environ.get("USAE_TEST_XLA_OPT") == "default":
        pytest.skip("this session already runs at XLA's default optimisation")
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | {
        "USAE_TEST_XLA_OPT": "default"
    }
    case = "tests/test_chunked_steps.py::test_chunked_steps_equal_single_steps_bitwise"
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider"]  # -q from pyproject
    done = subprocess.run(
        [*command, f"{case}[usae_random_one]"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "1 passed" in done.stdout, done.stdout[-2000:]


def test_chunked_run_resumes_to_the_uninterrupted_result(tiny_planted, tiny_config, tmp_path):
    config = tiny_config(num_steps=12, log_every=4, checkpoint_every=4, steps_per_dispatch=4)
    whole = train(config, tmp_path / "whole", tiny_planted.source(), plots=False)
    # Interrupted inside a chunk (after step 6), resumed with a different chunk size.
    train(config, tmp_path / "parts", tiny_planted.source(), stop_after=6, plots=False)
    resumed_config = tiny_config(
        num_steps=12, log_every=4, checkpoint_every=4, steps_per_dispatch=2
    )
    resumed = train(resumed_config, tmp_path / "parts", tiny_planted.source(), plots=False)
    for a, b in zip(_leaves(whole.state), _leaves(resumed.state), strict=True):
        np.testing.assert_array_equal(a, b)
    assert _metric_lines(tmp_path / "whole") == _metric_lines(tmp_path / "parts")


def test_steps_per_dispatch_must_divide_the_log_and_checkpoint_intervals(tiny_config):
    with pytest.raises(ValueError, match="steps_per_dispatch"):
        tiny_config(log_every=6, checkpoint_every=8, steps_per_dispatch=4)
    with pytest.raises(ValueError, match="steps_per_dispatch"):
        tiny_config(steps_per_dispatch=0)
