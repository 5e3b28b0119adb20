"""Test setup: 8 fake CPU devices (set before JAX is imported) and shared fixtures."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

PARITY_FIXTURE = Path(
    os.environ.get(
        "USAE_PARITY_FIXTURE",
        Path(__file__).resolve().parents[1].parent
        / "shared"
        / "fixtures"
        / "usae_official_parity.npz",
    )
)


@pytest.fixture(scope="session")
def parity():
    """The official implementation's own numbers (see shared/fixtures/README.md)."""
    if not PARITY_FIXTURE.exists():
        pytest.skip(f"parity fixture not found at {PARITY_FIXTURE} (set USAE_PARITY_FIXTURE)")
    return dict(np.load(PARITY_FIXTURE))
