"""Train a Universal Sparse Autoencoder.

Default: the built-in planted-concept data (no files needed):
    python -m experiments.train --workdir=runs/default
Real activations: one .npy per model, or an activation store made by experiments/extract.py:
    python -m experiments.train --npy=dino=a.npy,vit=b.npy --workdir=runs/mine
    python -m experiments.train --store=stores/dino --workdir=runs/store
    python -m experiments.train --store=stores/dino_zarr --grain_workers=2 --workdir=runs/zarr
Re-running with the same --workdir resumes from its last checkpoint.
"""

import importlib

from absl import app, flags, logging

from experiments import config_flags
from usae_jax.config_io import replace_fields
from usae_jax.data.loader import StoreSource
from usae_jax.data.source import ArraySource
from usae_jax.data.synthetic.planted import generate_planted
from usae_jax.data.zarr_store import is_zarr_store
from usae_jax.parallel.hosts import initialize
from usae_jax.pipelines.train_and_report import (
    format_summary,
    train_and_report,
    written_outputs,
)

flags.DEFINE_string(
    "workdir", "runs/default", "Directory for checkpoints, metrics, plots, exports."
)
flags.DEFINE_string("config", "default", "Config module in experiments/configs (default, paper).")
config_flags.define_named_paths(
    "npy", "Real activations: name=path.npy per model, [rows, width] each."
)
flags.DEFINE_string("store", None, "Activation store directory written by experiments/extract.py.")
flags.DEFINE_integer(
    "grain_workers",
    None,
    "Read --store with the Grain pipeline and this many worker processes (zarr stores always "
    "use Grain, with 0 workers unless set; default for a memmap store: the thread loader). "
    "0 reads in two threads of the training process, which on a 2-core machine read as fast as "
    "or faster than worker processes (benchmarks/RESULTS.md).",
)
flags.DEFINE_integer("steps", None, "Override the number of training steps.")
flags.DEFINE_float("learning_rate", None, "Override the base learning rate of every model.")
flags.DEFINE_integer("batch_rows", None, "Override the rows (tokens) per step.")
flags.DEFINE_integer("num_concepts", None, "Override the number of concepts.")
flags.DEFINE_integer("top_k", None, "Override k, the concepts kept per row.")
flags.DEFINE_integer("seed", None, "Override the seed (init, data order, source draws).")
flags.DEFINE_enum(
    "source_sampling",
    None,
    ["random_one", "all"],
    "random_one: official, one source model per step; all: every model per step.",
)
flags.DEFINE_integer("data_parallel", None, "Devices on the data axis (default: all devices).")
flags.DEFINE_bool("progress", True, "Show progress (a bar on a terminal, plain lines in logs).")
flags.DEFINE_string("coordinator", None, "Multi-host: host:port of process 0 (jax.distributed).")
flags.DEFINE_integer("num_processes", 1, "Multi-host: number of processes.")
flags.DEFINE_integer("process_id", 0, "Multi-host: index of this process.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every file operation at INFO
    initialize(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id)
    module = importlib.import_module(f"experiments.configs.{FLAGS.config}")
    planted = None
    if FLAGS.store:
        if FLAGS.grain_workers is not None or is_zarr_store(FLAGS.store):
            # imported here: Grain takes about 0.5 s to import and only store runs read with it
            from usae_jax.data.grain_source import GrainSource, PipelineConfig

            workers = FLAGS.grain_workers or 0
            source = GrainSource(FLAGS.store, PipelineConfig(workers=workers))
        else:
            source = StoreSource(FLAGS.store)
    elif FLAGS.npy:
        source = ArraySource.from_npy(FLAGS.npy)
    elif hasattr(module, "get_planted"):
        planted = generate_planted(module.get_planted())
        source = planted.source()
    else:
        raise app.UsageError(
            f"config {FLAGS.config!r} has no built-in data: pass --store=DIR (an activation "
            "store from experiments/extract.py) or --npy=name=path.npy,..."
        )
    config = replace_fields(
        module.get_config(),
        num_steps=FLAGS.steps,
        learning_rate=FLAGS.learning_rate,
        batch_rows=FLAGS.batch_rows,
        num_concepts=FLAGS.num_concepts,
        top_k=FLAGS.top_k,
        seed=FLAGS.seed,
        source_sampling=FLAGS.source_sampling,
        data_parallel=FLAGS.data_parallel,
        progress_bar=FLAGS.progress,
    )
    print(f"training {source.names} on {source.num_rows} rows into {FLAGS.workdir}")
    _, summary = train_and_report(config, FLAGS.workdir, source, planted)
    print(format_summary(source.names, summary))
    print(f"outputs in {FLAGS.workdir}: {', '.join(written_outputs(FLAGS.workdir)) or 'none'}")


if __name__ == "__main__":
    app.run(main)
