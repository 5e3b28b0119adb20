"""Test setup: 8 fake CPU devices (set before JAX is imported) and shared fixtures."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

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


@pytest.fixture(scope="session")
def parity():
    """The official implementation's own numbers (see shared/fixtures/README.md)."""
    if not PARITY_FIXTURE.exists():
        pytest.skip(f"parity fixture not found at {PARITY_FIXTURE} (set USAE_PARITY_FIXTURE)")
    return dict(np.load(PARITY_FIXTURE))
