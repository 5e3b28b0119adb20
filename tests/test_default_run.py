"""The README's default run: planted concepts must be recovered (mean max cosine >= 0.9).

It runs the README's command itself (``python -m experiments.train --workdir=DIR``) in its own
process, with XLA's default optimisation and one CPU device as a user gets them: the test
session's ``XLA_FLAGS`` (eight fake devices, no backend optimisation to save compile time; see
``tests/conftest.py``) are not passed on.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_default_run_recovers_planted_shared_concepts(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    done = subprocess.run(
        [sys.executable, "-m", "experiments.train", f"--workdir={tmp_path}", "--noprogress"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "recovery" in done.stdout, done.stdout[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == 8000
    for name, value in summary["recovery"].items():
        assert value >= 0.9, f"{name}: shared-concept recovery {value:.3f} < 0.9"
    r2 = summary["r2"]
    for i in range(3):
        assert r2[i][i] > 0.8, f"self-R² of model {i} is {r2[i][i]:.3f}"
        for j in range(3):
            if i != j:
                assert r2[i][j] > 0.5, f"cross-R² {i}->{j} is {r2[i][j]:.3f}"
