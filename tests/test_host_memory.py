"""Freed host memory kept mapped: fewer page faults, when it applies, and who applies it."""

import json
import os
import subprocess
import sys

import pytest

from usae_jax.parallel import host_memory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FAULTS = """
import ctypes, json, resource, sys
from usae_jax.parallel.host_memory import retain_freed_memory
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
if sys.argv[1] == "retain":
    assert retain_freed_memory() is None
size = 64 << 20

def allocate_touch_free():  # as XLA:CPU does with a step's temporaries
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)  # every page touched
    libc.free(block)

allocate_touch_free()  # once before counting
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    allocate_touch_free()
print(json.dumps((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5))
"""


def _faults_per_allocation(mode: str) -> float:
    done = subprocess.run(
        [sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.skipif(host_memory.unsupported_reason() is not None, reason="needs glibc")
def test_retained_memory_is_reused_without_page_faults():
    # 64 MiB is 16,384 pages of 4 KiB: glibc maps a fresh block for each allocation by default
    default = _faults_per_allocation("default")
    retained = _faults_per_allocation("retain")
    assert default > 10_000
    assert retained < default / 20


def test_unsupported_reasons(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert "not Linux" in host_memory.unsupported_reason()
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(host_memory.platform, "libc_ver", lambda: ("", ""))
    assert "not glibc" in host_memory.unsupported_reason()
    monkeypatch.setattr(host_memory, "_RETAINED", False)
    assert "not glibc" in host_memory.retain_freed_memory()
    assert not host_memory.freed_memory_retained()


TRAIN = """
import sys
from tests.conftest import TINY_PLANTED, make_tiny_config
from usae_jax.data.synthetic.planted import generate_planted
from usae_jax.parallel.host_memory import freed_memory_retained
from usae_jax.train.loop import train
import dataclasses
config = make_tiny_config(num_steps=2, log_every=1, checkpoint_every=2, data_parallel=1)
config = dataclasses.replace(config, retain_freed_memory=sys.argv[1] == "on")
train(config, sys.argv[2], generate_planted(TINY_PLANTED).source(), plots=False)
print(freed_memory_retained())
"""


@pytest.mark.parametrize("setting", ["on", "off"])
def test_training_loop_retains_on_cpu_as_configured(setting, tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", TRAIN, setting, str(tmp_path / "run")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "XLA_FLAGS": ""},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    expected = setting == "on" and host_memory.unsupported_reason() is None
    assert done.stdout.splitlines()[-1] == str(expected)


def test_benchmark_runs_every_side_in_fresh_processes():
    done = subprocess.run(
        [sys.executable, "benchmarks/malloc_pages.py", "--config=default", "--steps=1"]
        + ["--rounds=1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    reason = host_memory.unsupported_reason()
    if reason is not None:
        assert done.returncode != 0 and reason in done.stderr
        return
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[0])
    assert set(result["ratio_over_default"]) == {"retained", "huge"}
    for side in ("default", "retained", "huge"):
        assert result[side]["ms_per_step"] > 0 and result[side]["minor_faults_per_step"] >= 0
    assert "step time / default" in done.stdout
