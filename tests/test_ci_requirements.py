"""CI fails on a missing parity fixture (``CI=true``) or torch (``USAE_NO_SKIPS=1``); else skips."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run_pytest(test: str, ci: str | None, **env_overrides) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "USAE_NO_SKIPS")}
    env.update(env_overrides)
    if ci is not None:
        env["CI"] = ci
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rsf", test]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _run_parity_test(tmp_path, ci: str | None) -> subprocess.CompletedProcess:
    test = "tests/test_parity.py::test_encoder_bias_gradient_is_zero"
    return _run_pytest(test, ci, USAE_PARITY_FIXTURE=str(tmp_path / "missing.npz"))


def _run_torch_test_without_torch(tmp_path, no_skips: bool) -> subprocess.CompletedProcess:
    (tmp_path / "torch.py").write_text('raise ModuleNotFoundError("torch hidden for this test")\n')
    path = os.pathsep.join([str(tmp_path), str(ROOT), os.environ.get("PYTHONPATH", "")])
    test = "tests/test_clipping.py::test_clip_matches_torch_on_hand_made_gradients"
    extra = {"USAE_NO_SKIPS": "1"} if no_skips else {}
    return _run_pytest(test, None, PYTHONPATH=path, **extra)


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


def test_missing_torch_fails_with_no_skips_and_skips_otherwise(tmp_path):
    in_ci = _run_torch_test_without_torch(tmp_path, no_skips=True)
    assert in_ci.returncode != 0, in_ci.stdout
    assert "1 error" in in_ci.stdout and "torch is not installed" in in_ci.stdout, in_ci.stdout
    outside = _run_torch_test_without_torch(tmp_path, no_skips=False)
    assert outside.returncode == 0, outside.stdout
    assert "1 skipped" in outside.stdout, outside.stdout
