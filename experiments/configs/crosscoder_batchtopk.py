"""The best recipe of the recipe table (docs/recipes.md): a BatchTopK crosscoder on the "hard"
planted data.

Launch:  python -m experiments.train --config=crosscoder_batchtopk --workdir=runs/crosscoder_bt
Runtime: 50 s of training on an idle 2-core CPU (56 s for the whole command); it prints the
table row's recovery (shared 0.994 / 0.986 / 0.994, worst private concept 0.92 / 0.93 / 0.97).
It is the table's ``crosscoder_batchtopk`` row (``usae_jax.pipelines.recipes.RECIPES``): the
default run's recipe with one code read from every model at once (``architecture="crosscoder"``,
all sources per step), BatchTopK sparsity (k = 8 per row on average) and squared errors, trained
for the table's 3000 steps of 1024 rows on the "hard" planted data (seed 0). The table's run
recovered shared concepts at 0.994 / 0.986 / 0.994 and private ones at 0.983 / 0.990 / 0.998
(mean best cosine per model), the only row at >= 0.95 everywhere. A crosscoder needs every
model's activation of the same input to encode (no per-model encoders: no "encode from A, decode
into B"), and its firing entropy is the same for every concept: read universality from the
relative decoder norms (``usae_jax.analysis.diffing``).
"""

from experiments.configs import planted_hard
from usae_jax.config import TrainConfig
from usae_jax.config_io import replace_fields
from usae_jax.data.synthetic.planted import PlantedConfig
from usae_jax.pipelines.recipes import RECIPES, TABLE_STEPS

RECIPE = next(recipe for recipe in RECIPES if recipe.name == "crosscoder_batchtopk")
"""The table row this preset trains."""


def get_planted() -> PlantedConfig:
    """The "hard" planted data of the recipe table."""
    return planted_hard.get_planted()


def get_config() -> TrainConfig:
    """The default recipe with the row's overrides, for the table's number of steps."""
    base = replace_fields(planted_hard.get_config(), num_steps=TABLE_STEPS)
    return replace_fields(base, **RECIPE.overrides)
