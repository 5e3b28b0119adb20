"""Universality analysis of a trained USAE run: report.md, analysis.json and PNGs.

Default: the run of experiments/train.py on the built-in planted-concept data:
    python -m experiments.analyze --workdir=runs/default
Real activations (the same .npy files the run was trained on):
    python -m experiments.analyze --workdir=runs/mine --npy=dino=a.npy,vit=b.npy
Outputs go to <workdir>/analysis unless --out is given. --baseline and --controls train extra
(shorter) models into that folder, one subfolder per step budget; a re-run reuses them.
"""

import importlib
import os

import jax
import numpy as np
from absl import app, flags, logging

from experiments import config_flags
from usae_jax.analysis.baseline import BaselineConfig
from usae_jax.analysis.controls import ControlConfig
from usae_jax.analysis.examples import ImageTokens
from usae_jax.analysis.report import AnalysisConfig, analyze
from usae_jax.analysis.statistics import StatisticsConfig
from usae_jax.data.synthetic.planted import generate_planted

flags.DEFINE_string(
    "workdir", "runs/default", "A trained run's directory (config.json, checkpoints/)."
)
flags.DEFINE_string("out", None, "Output directory; default <workdir>/analysis.")
flags.DEFINE_string(
    "config", "default", "Config module in experiments/configs for the planted data."
)
config_flags.define_named_paths(
    "npy", "Activations name=path.npy per model; default: the planted data."
)
flags.DEFINE_integer("max_rows", None, "Analyse only the first rows of the data (default all).")
flags.DEFINE_float("tau", 0.1, "Firing threshold: a concept fires when its code exceeds tau.")
flags.DEFINE_integer("batch_rows", 4096, "Rows per jitted statistics batch.")
flags.DEFINE_bool("baseline", True, "Train independent SAEs (M = 1) and match them (Hungarian).")
flags.DEFINE_integer("baseline_steps", 300, "Training steps of each independent SAE.")
flags.DEFINE_bool("controls", True, "Train the real/shuffled/noise control USAEs.")
flags.DEFINE_integer("control_steps", 200, "Training steps of each control USAE.")
flags.DEFINE_string(
    "control_model", None, "Model permuted/replaced in the controls (default last)."
)
flags.DEFINE_integer("example_concepts", 8, "Highest-energy concepts whose top examples are shown.")
flags.DEFINE_string(
    "image_index", None, ".npy [rows] int: the image of each row (enables heatmaps)."
)
flags.DEFINE_string("images", None, ".npy [num_images, H, W(, 3)] images in [0, 1], by image id.")
flags.DEFINE_list("grid", ["14", "14"], "Token grid h,w of each image.")
flags.DEFINE_string(
    "compilation_cache",
    "<out>/xla_cache",
    "Persistent XLA compilation cache "
    "(the control USAEs share shapes, so only the first compiles); '' disables it.",
)
flags.DEFINE_integer("crop_patches", None, "Crop image panels to this many cells around the peak.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every file operation at INFO
    out = FLAGS.out or os.path.join(FLAGS.workdir, "analysis")
    if FLAGS.compilation_cache:
        jax.config.update(
            "jax_compilation_cache_dir", FLAGS.compilation_cache.replace("<out>", out)
        )
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)

    planted = None
    if FLAGS.npy:
        arrays = {k: np.load(v, mmap_mode="r") for k, v in FLAGS.npy.items()}
    else:
        module = importlib.import_module(f"experiments.configs.{FLAGS.config}")
        planted = generate_planted(module.get_planted())
        arrays = planted.activations
    tokens = None
    if FLAGS.image_index:
        tokens = ImageTokens(
            np.load(FLAGS.image_index),
            tuple(int(g) for g in FLAGS.grid),
            np.load(FLAGS.images, mmap_mode="r"),
        )
    analysis = AnalysisConfig(
        statistics=StatisticsConfig(
            tau=FLAGS.tau, batch_rows=FLAGS.batch_rows, max_rows=FLAGS.max_rows
        ),
        baseline=BaselineConfig(num_steps=FLAGS.baseline_steps) if FLAGS.baseline else None,
        controls=ControlConfig(num_steps=FLAGS.control_steps, control_model=FLAGS.control_model)
        if FLAGS.controls
        else None,
        num_example_concepts=FLAGS.example_concepts,
        image_crop_patches=FLAGS.crop_patches,
    )
    results = analyze(FLAGS.workdir, arrays, analysis, planted, tokens, out)
    auroc = results.get("planted", {}).get("entropy_auroc_shared_vs_specific")
    print(
        "firing-entropy AUROC (planted shared vs specific): "
        + ("n/a (no planted ground truth)" if auroc is None else f"{auroc:.3f}")
        + f"; universality-vs-importance r: "
        f"{results['universality_vs_importance']['pearson_r']:.3f}"
    )
    print(
        f"wrote report.md, analysis.json and {len(results['figures'])} PNGs "
        f"in {results['seconds']} s to {out}"
    )


if __name__ == "__main__":
    app.run(main)
