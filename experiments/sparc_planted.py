"""Local vs global TopK (SPARC) on planted data with two synthetic streams.

    python -m experiments.sparc_planted --workdir=runs/sparc_planted

Trains both sparsity rules with the SPARC loss (experiments/configs/sparc.py, smaller sizes)
and prints Jaccard overlap and cross-stream retrieval on held-out rows (docs/sparc_results.md).
"""

from absl import app, flags, logging

from experiments.configs import sparc
from usae_jax.analysis.sparc.compare import (
    compare_held_out,
    format_comparison,
    sparc_run_config,
)
from usae_jax.data.synthetic.planted import PlantedConfig, generate_planted

flags.DEFINE_string("workdir", "runs/sparc_planted", "Checkpoints, metrics, comparison.json.")
flags.DEFINE_integer("rows", 16384, "Planted paired rows (items), before the held-out split.")
flags.DEFINE_float("test_fraction", 0.125, "Fraction of items held out for the metrics.")
flags.DEFINE_integer("num_concepts", 256, "Concepts n of the SPARC model.")
flags.DEFINE_integer("top_k", 8, "Concepts k kept per item.")
flags.DEFINE_integer("steps", 3000, "Training steps per sparsity rule.")
flags.DEFINE_integer("batch_rows", 256, "Items per step.")
flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate (SPARC's 1e-4 needs ~10x steps).")
flags.DEFINE_integer("seed", 0, "Seed of the planted data, init and data order.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    planted = generate_planted(
        PlantedConfig(
            model_names=("alpha", "beta"), widths=(64, 48), rows=FLAGS.rows, seed=FLAGS.seed
        )
    )
    arrays = planted.activations
    config = sparc_run_config(
        sparc.get_config(),
        num_concepts=FLAGS.num_concepts,
        top_k=FLAGS.top_k,
        steps=FLAGS.steps,
        batch_rows=FLAGS.batch_rows,
        seed=FLAGS.seed,
        learning_rate=FLAGS.learning_rate,
    )
    report = compare_held_out(
        config, FLAGS.workdir, arrays, FLAGS.test_fraction, transfer=("alpha", "beta")
    )
    print(format_comparison(report))


if __name__ == "__main__":
    app.run(main)
