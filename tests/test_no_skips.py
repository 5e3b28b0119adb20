"""USAE_NO_SKIPS=1 (set by .ci/run for the full install) turns every skip into a failure."""

import os
import subprocess
import sys
from pathlib import Path

SKIPPING = """
import pytest

missing = pytest.importorskip("no_such_module_for_usae_tests")


def test_never_collected():
    pass
"""

SKIPPING_INSIDE = """
import pytest


def test_skips_inside():
    pytest.importorskip("no_such_module_for_usae_tests")


def test_runs():
    pass
"""


def _run(tmp_path, no_skips: str, *files: str) -> tuple[int, str]:
    conftest = Path(__file__).with_name("conftest.py").read_text()
    (tmp_path / "conftest.py").write_text(conftest)
    (tmp_path / "test_module_skip.py").write_text(SKIPPING)
    (tmp_path / "test_inside_skip.py").write_text(SKIPPING_INSIDE)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files],
        capture_output=True,
        text=True,
        env={**os.environ, "USAE_NO_SKIPS": no_skips},
        cwd=tmp_path,
        timeout=300,
    )
    return done.returncode, done.stdout + done.stderr


def test_skips_are_skips_by_default(tmp_path):
    code, out = _run(tmp_path, "0", ".")
    assert code == 0 and "1 passed, 2 skipped" in out, out


def test_skips_fail_when_forbidden(tmp_path):
    code, out = _run(tmp_path, "1", "test_inside_skip.py")
    assert code != 0 and "1 failed, 1 passed" in out, out
    assert "USAE_NO_SKIPS=1 forbids skips" in out and "no_such_module_for_usae_tests" in out
    code, out = _run(tmp_path, "1", "test_module_skip.py")  # a module skipped at import
    assert code != 0 and "ERROR test_module_skip.py" in out and "forbids skips" in out, out
