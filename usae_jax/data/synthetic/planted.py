"""Planted-concept data: synthetic "models" that share some concepts and keep others private.

Each model ``m`` sees the same latent events through its own random embedding: a *shared*
concept ``c`` has a direction ``u_c^m`` in every model's space and, when present in row ``r``, the
same coefficient in every model; a *model-specific* concept has a direction in one model only
and its own events. ``x_m[r] = sum_c a_rc u_c^m + sum_s b_rs v_s^m + noise``. A USAE trained on
these should find every shared concept as one dictionary row per model.

Two named presets (:data:`PRESETS`, :func:`planted_preset`):

* ``"classic"``: every concept equally frequent (5% of rows), magnitudes uniform in [0.5, 2],
  widths 64/48/96. Kind to a USAE: what the default run trains on.
* ``"hard"``: closer to real activations: power-law (Pareto-like) concept frequencies (the most
  frequent shared concepts are present in about half the rows, the rarest in about 1%),
  exponential magnitudes (a third of the events below 0.5), four pairs of frequent shared
  concepts that co-occur, widths 64/96/128.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from usae_jax.data.source import ArraySource
from usae_jax.validation import require

MAGNITUDES = ("uniform", "exponential", "lognormal")
"""Distributions of a present concept's coefficient; all have mean 1.25 (see PlantedConfig)."""


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

    frequency_exponent: float = 0.0
    """Power law of concept frequencies: concept ``i`` (0-based; 0 the most frequent) is present
    with probability proportional to ``(i + 1) ** -frequency_exponent``, scaled so the mean over
    concepts is ``shared_rate`` (``specific_rate`` for private ones) and capped at 1. 0: every
    concept at the same rate."""

    magnitude: str = "uniform"
    """Coefficient of a present concept: ``"uniform"`` in [0.5, 2], ``"exponential"`` with mean
    1.25, or ``"lognormal"`` with mean 1.25 and log-std ``magnitude_sigma``."""

    magnitude_sigma: float = 0.75
    """Log-std of the ``"lognormal"`` magnitudes (ignored otherwise)."""

    correlated_pairs: int = 0
    """Pairs of shared concepts that co-occur: concept ``2j + 1`` is also present in a row with
    probability ``pair_correlation`` whenever concept ``2j`` is, for ``j < correlated_pairs``."""

    pair_correlation: float = 0.8
    """Probability that the second concept of a correlated pair joins the first."""

    seed: int = 0
    """Seed of the directions and of the events."""

    def __post_init__(self):
        object.__setattr__(self, "model_names", tuple(self.model_names))
        object.__setattr__(self, "widths", tuple(self.widths))
        require(
            len(self.widths) == len(self.model_names) and bool(self.model_names),
            "widths",
            self.widths,
            f"need one width per model {self.model_names} (at least one model)",
        )
        require(
            min(self.num_shared, self.num_specific) >= 0
            and self.num_shared + self.num_specific > 0,
            "num_shared/num_specific",
            (self.num_shared, self.num_specific),
            "need >= 0 each and at least one concept",
        )
        require(self.rows >= 2, "rows", self.rows, "need at least 2 rows")
        for field in ("shared_rate", "specific_rate"):
            value = getattr(self, field)
            require(0 < value <= 1, field, value, "must be in (0, 1]")
        require(self.noise >= 0, "noise", self.noise, "must be >= 0")
        require(
            self.frequency_exponent >= 0,
            "frequency_exponent",
            self.frequency_exponent,
            "must be >= 0",
        )
        require(self.magnitude in MAGNITUDES, "magnitude", self.magnitude, f"one of {MAGNITUDES}")
        require(self.magnitude_sigma > 0, "magnitude_sigma", self.magnitude_sigma, "must be > 0")
        require(
            0 <= 2 * self.correlated_pairs <= self.num_shared,
            "correlated_pairs",
            self.correlated_pairs,
            f"need 0 <= 2 * pairs <= num_shared={self.num_shared}",
        )
        require(
            0 <= self.pair_correlation <= 1,
            "pair_correlation",
            self.pair_correlation,
            "must be in [0, 1]",
        )


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

    specific_codes: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    """``{name: [rows, num_specific]}`` coefficients of that model's private concepts."""

    def source(self, standardise: bool = True) -> ArraySource:
        """A paired source over the activations."""
        return ArraySource(self.activations, standardise=standardise)


def _unit_rows(rng: np.random.Generator, count: int, width: int) -> np.ndarray:
    directions = rng.standard_normal((count, width))
    return directions / np.linalg.norm(directions, axis=1, keepdims=True)


def concept_rates(count: int, rate: float, exponent: float) -> np.ndarray:
    """``[count]`` presence probability of each concept: ``rate`` each for ``exponent == 0``,
    else proportional to ``(i + 1) ** -exponent`` with mean ``rate`` (capped at 1)."""
    weights = np.arange(1, count + 1, dtype=np.float64) ** -exponent
    return np.minimum(rate * count * weights / weights.sum(), 1.0)


def _magnitudes(rng: np.random.Generator, shape: tuple[int, int], config: PlantedConfig):
    if config.magnitude == "uniform":
        return rng.uniform(0.5, 2.0, shape)
    if config.magnitude == "exponential":
        return rng.exponential(1.25, shape)
    sigma = config.magnitude_sigma
    return rng.lognormal(np.log(1.25) - sigma**2 / 2, sigma, shape)


def _events(
    rng: np.random.Generator, rows: int, rates: np.ndarray, config: PlantedConfig, pairs: int = 0
) -> np.ndarray:
    """``[rows, len(rates)]`` float32 coefficients (0 where the concept is absent)."""
    present = rng.random((rows, len(rates))) < rates
    magnitude = _magnitudes(rng, (rows, len(rates)), config)
    if pairs:
        joins = rng.random((rows, pairs)) < config.pair_correlation
        present[:, 1 : 2 * pairs : 2] |= present[:, 0 : 2 * pairs : 2] & joins
    return (present * magnitude).astype(np.float32)


def generate_planted(config: PlantedConfig) -> PlantedData:
    """Generate the planted data set of ``config`` (deterministic in ``config.seed``)."""
    rng = np.random.default_rng(config.seed)
    exponent = config.frequency_exponent
    shared_rates = concept_rates(config.num_shared, config.shared_rate, exponent)
    specific_rates = concept_rates(config.num_specific, config.specific_rate, exponent)
    shared_codes = _events(rng, config.rows, shared_rates, config, config.correlated_pairs)
    activations, shared, specific, specific_codes = {}, {}, {}, {}
    for name, width in zip(config.model_names, config.widths, strict=True):
        shared[name] = _unit_rows(rng, config.num_shared, width).astype(np.float32)
        specific[name] = _unit_rows(rng, config.num_specific, width).astype(np.float32)
        own = _events(rng, config.rows, specific_rates, config)
        noise = config.noise * rng.standard_normal((config.rows, width))
        x = shared_codes @ shared[name] + own @ specific[name] + noise
        activations[name] = x.astype(np.float32)
        specific_codes[name] = own
    return PlantedData(activations, shared, specific, shared_codes, specific_codes)


PRESETS: dict[str, PlantedConfig] = {
    "classic": PlantedConfig(),
    "hard": PlantedConfig(
        widths=(64, 96, 128),
        frequency_exponent=1.0,
        magnitude="exponential",
        correlated_pairs=4,
        pair_correlation=0.8,
    ),
}
"""Named planted data sets; see the module docstring."""


def planted_preset(name: str, **overrides) -> PlantedConfig:
    """The preset ``name`` (``"classic"`` or ``"hard"``) with some fields replaced."""
    if name not in PRESETS:
        raise ValueError(f"unknown planted preset {name!r}; choose one of {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)


def shared_variance_share(planted: PlantedData) -> dict[str, float]:
    """Per model, the fraction of its variance the shared concepts carry.

    ``1 - ||x - s - mean(x - s)||^2 / ||x - mean(x)||^2`` with ``x`` the model's activations
    ``[rows, width]``, ``s`` their shared part ``shared_codes @ shared_directions`` and per-channel
    means: the R² of predicting ``x`` from its shared concepts exactly, which bounds the
    cross-model R² (another model's activations carry nothing of this model's private concepts
    or noise).
    """
    share = {}
    for name, x in planted.activations.items():
        x = np.asarray(x, np.float64)
        rest = x - planted.shared_codes.astype(np.float64) @ planted.shared_directions[name]
        rest = rest - rest.mean(axis=0)
        share[name] = float(1 - (rest**2).sum() / ((x - x.mean(axis=0)) ** 2).sum())
    return share
