"""Test setup: 8 fake CPU devices and XLA's backend optimisation off (both set before JAX is
imported), a compilation cache, and shared fixtures."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# The suite compiles hundreds of small programs, and compiling is most of its time: with XLA's
# backend optimisation off (level 0: the same math, less tuned code) the suite, the default run
# aside, took 950 s instead of about 1200 s here, every test passing. USAE_TEST_XLA_OPT=default
# keeps XLA's default (or names another level). What must hold as users run it is checked at the
# default in subprocesses: the README's default run (tests/test_default_run.py) and chunked steps
# equal to single steps bitwise (tests/test_chunked_steps.py).
XLA_OPT = os.environ.get("USAE_TEST_XLA_OPT", "0")
if XLA_OPT != "default" and "xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += f" --xla_backend_optimization_level={XLA_OPT}"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    # One persistent compilation cache for the whole test session: made by the first process
    # (the xdist controller, before it starts its workers), inherited by the workers and by the
    # subprocesses tests launch, removed at the end. Many tests compile the same tiny programs.
    _cache = tempfile.mkdtemp(prefix="usae-jax-test-cache-")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import dataclasses  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from usae_jax.config import OptimConfig, TrainConfig, USAEConfig  # noqa: E402
from usae_jax.data.synthetic.planted import PlantedConfig, generate_planted  # noqa: E402

TINY_PLANTED = PlantedConfig(widths=(12, 8, 16), num_shared=6, num_specific=3, rows=512, seed=1)
"""Three small planted models shared by the training, sharding and checkpoint tests."""


def make_tiny_config(**overrides) -> TrainConfig:
    """The shared tiny training config over :data:`TINY_PLANTED`'s models (32 concepts, k = 4,
    64-row steps, 8 steps). ``overrides`` replace TrainConfig fields."""
    usae = USAEConfig(
        model_names=TINY_PLANTED.model_names, widths=TINY_PLANTED.widths, num_concepts=32, top_k=4
    )
    base = TrainConfig(
        usae=usae,
        optim=OptimConfig(learning_rate=3e-3),
        batch_rows=64,
        num_steps=8,
        checkpoint_every=4,
        log_every=2,
        eval_rows=128,
        progress_bar=False,
    )
    return dataclasses.replace(base, **overrides)


@pytest.fixture(scope="session")
def tiny_planted():
    """The planted data of :data:`TINY_PLANTED`."""
    return generate_planted(TINY_PLANTED)


@pytest.fixture
def tiny_config():
    """:func:`make_tiny_config` (call it with overrides)."""
    return make_tiny_config


PARITY_FIXTURE = Path(
    os.environ.get(
        "USAE_PARITY_FIXTURE",
        Path(__file__).resolve().parents[1].parent
        / "shared"
        / "fixtures"
        / "usae_official_parity.npz",
    )
)


IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
"""Whether this is a CI run (``CI=true``): a missing requirement then fails instead of skipping."""


def skip_or_fail_in_ci(reason: str):
    """Skip the test on a developer machine; fail it in CI, where nothing may vanish silently."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: a missing requirement fails the run instead of skipping)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def parity():
    """The official implementation's own numbers (see shared/fixtures/README.md)."""
    if not PARITY_FIXTURE.exists():
        skip_or_fail_in_ci(
            f"parity fixture not found at {PARITY_FIXTURE} (set USAE_PARITY_FIXTURE)"
        )
    return dict(np.load(PARITY_FIXTURE))


@pytest.fixture(scope="session")
def torch_module():
    """The ``torch`` module for reference checks.

    Skipped without torch: the torch-less Python 3.12 CI run needs that. The Python 3.11 CI run
    installs torch and sets ``USAE_NO_SKIPS=1``, which turns this skip into a failure.
    """
    return pytest.importorskip("torch", reason="torch is not installed")


# `.ci/run` installs every optional package (torch, the pretrained-weight wheels, the extract
# extra) for its Python 3.11 run and sets USAE_NO_SKIPS=1 there: then a skipped test or module
# (a failed import, a missing fixture) is a failure, so tests cannot vanish silently. Without
# it (a minimal install, the torch-less Python 3.12 run) they skip as usual.
NO_SKIPS = os.environ.get("USAE_NO_SKIPS") == "1"


def _no_skip_failure(report, what: str):
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
    report.outcome = "failed"
    report.longrepr = f"{what} was skipped, but USAE_NO_SKIPS=1 forbids skips: {reason}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if NO_SKIPS and report.skipped and not hasattr(report, "wasxfail"):
        _no_skip_failure(report, item.nodeid)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    report = yield
    if NO_SKIPS and report.skipped:
        _no_skip_failure(report, collector.nodeid)
    return report
