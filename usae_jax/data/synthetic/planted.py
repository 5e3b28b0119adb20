"""Planted-concept data: synthetic "models" that share some concepts and keep others private.

Each model ``m`` sees the same latent events through its own random embedding: a *shared*
concept ``c`` has a direction ``u_c^m`` in every model's space and, when present in row ``r``, the
same coefficient in every model; a *model-specific* concept has a direction in one model only
and its own events. ``x_m[r] = sum_c a_rc u_c^m + sum_s b_rs v_s^m + noise``. A USAE trained on
these should find every shared concept as one dictionary row per model.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from usae_jax.data.source import ArraySource


@dataclasses.dataclass(kw_only=True, frozen=True)
class PlantedConfig:
    """The generator's settings."""

    model_names: tuple[str, ...] = ("alpha", "beta", "gamma")
    """Names of the synthetic models."""

    widths: tuple[int, ...] = (64, 48, 96)
    """Activation width of each synthetic model."""

    num_shared: int = 48
    """Concepts present in every model."""

    num_specific: int = 16
    """Concepts private to each model (per model)."""

    rows: int = 32768
    """Number of paired rows (tokens) to generate."""

    shared_rate: float = 0.05
    """Probability that a shared concept is present in a row."""

    specific_rate: float = 0.05
    """Probability that a model-specific concept is present in a row of its model."""

    noise: float = 0.05
    """Standard deviation of isotropic Gaussian noise added to every activation."""

    seed: int = 0
    """Seed of the directions and of the events."""

    def __post_init__(self):
        object.__setattr__(self, "model_names", tuple(self.model_names))
        object.__setattr__(self, "widths", tuple(self.widths))
        if len(self.widths) != len(self.model_names) or not self.model_names:
            raise ValueError(f"widths={self.widths}: need one width per model {self.model_names}")
        if self.num_shared < 0 or self.num_specific < 0 or self.num_shared + self.num_specific == 0:
            raise ValueError(
                f"num_shared={self.num_shared}, num_specific={self.num_specific}: "
                "need >= 0 each and at least one concept"
            )
        if self.rows < 2:
            raise ValueError(f"rows={self.rows}: need at least 2 rows")
        for field in ("shared_rate", "specific_rate"):
            value = getattr(self, field)
            if not 0 < value <= 1:
                raise ValueError(f"{field}={value}: must be in (0, 1]")
        if self.noise < 0:
            raise ValueError(f"noise={self.noise}: must be >= 0")


@dataclasses.dataclass(frozen=True)
class PlantedData:
    """Generated activations and the ground truth behind them."""

    activations: dict[str, np.ndarray]
    """``{name: float32 [rows, width]}``."""

    shared_directions: dict[str, np.ndarray]
    """``{name: [num_shared, width]}`` unit direction of each shared concept in each model."""

    specific_directions: dict[str, np.ndarray]
    """``{name: [num_specific, width]}`` unit directions of that model's private concepts."""

    shared_codes: np.ndarray
    """``[rows, num_shared]`` coefficient of each shared concept in each row (0 when absent)."""

    def source(self, standardise: bool = True) -> ArraySource:
        """A paired source over the activations."""
        return ArraySource(self.activations, standardise=standardise)


def _unit_rows(rng: np.random.Generator, count: int, width: int) -> np.ndarray:
    directions = rng.standard_normal((count, width))
    return directions / np.linalg.norm(directions, axis=1, keepdims=True)


def _events(rng: np.random.Generator, rows: int, count: int, rate: float) -> np.ndarray:
    present = rng.random((rows, count)) < rate
    return (present * rng.uniform(0.5, 2.0, (rows, count))).astype(np.float32)


def generate_planted(config: PlantedConfig) -> PlantedData:
    """Generate the planted data set of ``config`` (deterministic in ``config.seed``)."""
    rng = np.random.default_rng(config.seed)
    shared_codes = _events(rng, config.rows, config.num_shared, config.shared_rate)
    activations, shared, specific = {}, {}, {}
    for name, width in zip(config.model_names, config.widths, strict=True):
        shared[name] = _unit_rows(rng, config.num_shared, width).astype(np.float32)
        specific[name] = _unit_rows(rng, config.num_specific, width).astype(np.float32)
        own = _events(rng, config.rows, config.num_specific, config.specific_rate)
        noise = config.noise * rng.standard_normal((config.rows, width))
        x = shared_codes @ shared[name] + own @ specific[name] + noise
        activations[name] = x.astype(np.float32)
    return PlantedData(activations, shared, specific, shared_codes)
