"""The default recipe on the "hard" planted data: heavy-tailed, correlated concepts.

Launch:  python -m experiments.train --config=planted_hard --workdir=runs/planted_hard
Runtime: like the default run (8000 steps of 1024 rows; not measured, the machine was contended).
Expected: see README ("Harder planted data"); the summary prints recovery per concept.
"""

from experiments.configs import default
from usae_jax.config import TrainConfig
from usae_jax.data.planted import PlantedConfig, planted_preset


def get_planted() -> PlantedConfig:
    """The "hard" synthetic data: widths 64/96/128, 48 shared and 16 private concepts per model,
    power-law concept frequencies, exponential magnitudes, four correlated shared pairs."""
    return planted_preset("hard", rows=32768, seed=0)


def get_config(names=None, widths=None) -> TrainConfig:
    """The default run's training config; ``names``/``widths`` default to the planted models'."""
    planted = get_planted()
    return default.get_config(names or planted.model_names, widths or planted.widths)
