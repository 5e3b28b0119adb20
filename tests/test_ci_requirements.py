"""In CI (``CI=true``) a missing parity fixture fails the run; elsewhere the parity tests skip."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run_parity_test(tmp_path, ci: str | None) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "CI"}
    env["USAE_PARITY_FIXTURE"] = str(tmp_path / "missing.npz")
    if ci is not None:
        env["CI"] = ci
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-rsf",
        "tests/test_parity.py::test_encoder_bias_gradient_is_zero",
    ]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_missing_parity_fixture_fails_in_ci(tmp_path):
    result = _run_parity_test(tmp_path, "true")
    assert result.returncode != 0, result.stdout
    # a fixture that fails reports the test as an error (not a skip)
    assert "1 error" in result.stdout and "skipped" not in result.stdout, result.stdout
    assert "parity fixture not found" in result.stdout


@pytest.mark.parametrize("ci", [None, "false"])
def test_missing_parity_fixture_skips_outside_ci(tmp_path, ci):
    result = _run_parity_test(tmp_path, ci)
    assert result.returncode == 0, result.stdout
    assert "1 skipped" in result.stdout, result.stdout
