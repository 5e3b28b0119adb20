"""The concept explorer of a trained run: a static site (opens from file://) and a JSON export.

Default run (planted data regenerated from experiments/configs/default.py):
    python -m experiments.explore --workdir=runs/default        # writes runs/default/explorer/
SPARC planted run (experiments/sparc_planted.py; its planted models differ from the default's):
    python -m experiments.explore --workdir=runs/sparc_planted/global_topk \
      --planted_models=alpha:64,beta:48 --planted_rows=16384
Store-backed runs: --store=STORE (image crops for stores of the offline sample set, or
--store_images=FOLDER|LIST), text runs also --sentences=templates:4000:0. --screenshot saves
screenshots of the index and one concept page (headless Debian chromium) into OUT/screenshots.
"""

import dataclasses
import importlib
import os

import numpy as np
from absl import app, flags, logging

from experiments import config_flags
from usae_jax.analysis.examples import ImageTokens
from usae_jax.analysis.explorer import browser
from usae_jax.analysis.explorer.build import (
    build_explorer,
    sentence_texts,
    store_image_tokens,
)
from usae_jax.analysis.explorer.measures import ExplorerConfig
from usae_jax.analysis.statistics import StatisticsConfig
from usae_jax.data.loader import StoreSource
from usae_jax.data.source import ArraySource
from usae_jax.data.synthetic.planted import generate_planted

flags.DEFINE_string("workdir", "runs/default", "A trained run (config.json + checkpoints).")
flags.DEFINE_string("out", None, "Site folder; default <workdir>/explorer.")
flags.DEFINE_string("config", "default", "Config module (experiments/configs) of the planted data.")
flags.DEFINE_list("planted_models", [], "Override the planted models: name:width,...")
flags.DEFINE_integer("planted_rows", None, "Override the planted row count.")
config_flags.define_named_paths(
    "npy", "Activations name=path.npy per model (instead of planted data)."
)
flags.DEFINE_string("store", None, "Activation store the run was trained on.")
flags.DEFINE_string("store_images", None, "Images of an image store (folder or list file).")
flags.DEFINE_string("image_index", None, ".npy [rows] image of each row (with --npy).")
flags.DEFINE_string("images", None, ".npy [num_images, H, W(, 3)] images in [0, 1].")
flags.DEFINE_list("grid", ["14", "14"], "Token grid h,w of each image (with --image_index).")
flags.DEFINE_string("sentences", None, "Text of each row: templates:COUNT:SEED or a file.")
flags.DEFINE_multi_string("cam", [], "CAM output prefix (experiments/cam.py --out).")
flags.DEFINE_string("columns", None, "JSON {column: [n values]} of extra per-concept columns.")
flags.DEFINE_integer("max_rows", None, "Use only the first rows of the data.")
flags.DEFINE_float("tau", 0.1, "Firing threshold.")
flags.DEFINE_integer("image_concepts", 512, "Concepts (by energy) that get image crops.")
flags.DEFINE_integer("crop_patches", None, "Crop images to this many cells around the peak.")
flags.DEFINE_bool("json", True, "Also write the JSON export (json/).")
flags.DEFINE_bool("screenshot", False, "Save screenshots of the index and one concept page.")
flags.DEFINE_integer("screenshot_concept", None, "Concept of the screenshot (default: top).")
FLAGS = flags.FLAGS


def _inputs():
    """``(source, planted, tokens)`` from the flags."""
    if FLAGS.store:
        source = StoreSource(FLAGS.store)
        return source, None, store_image_tokens(source.store, FLAGS.store_images)
    tokens = None
    if FLAGS.image_index:
        grid = tuple(int(g) for g in FLAGS.grid)
        tokens = ImageTokens(np.load(FLAGS.image_index), grid, np.load(FLAGS.images, "r"))
    if FLAGS.npy:
        arrays = {k: np.load(v, mmap_mode="r") for k, v in FLAGS.npy.items()}
        return ArraySource(arrays), None, tokens
    planted_config = importlib.import_module(f"experiments.configs.{FLAGS.config}").get_planted()
    if FLAGS.planted_models:
        names, widths = zip(*(item.split(":") for item in FLAGS.planted_models), strict=True)
        planted_config = dataclasses.replace(
            planted_config, model_names=names, widths=tuple(int(w) for w in widths)
        )
    if FLAGS.planted_rows:
        planted_config = dataclasses.replace(planted_config, rows=FLAGS.planted_rows)
    planted = generate_planted(planted_config)
    return planted.source(), planted, tokens


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    source, planted, tokens = _inputs()
    config = ExplorerConfig(
        statistics=StatisticsConfig(tau=FLAGS.tau, max_rows=FLAGS.max_rows),
        image_concepts=FLAGS.image_concepts,
        crop_patches=FLAGS.crop_patches,
        write_json=FLAGS.json,
    )
    texts = sentence_texts(FLAGS.sentences) if FLAGS.sentences else None
    result = build_explorer(
        FLAGS.workdir,
        source,
        FLAGS.out,
        config,
        planted=planted,
        tokens=tokens,
        texts=texts,
        cam=FLAGS.cam,
        extra_columns=FLAGS.columns,
    )
    print(
        f"explorer of {result['num_concepts']} concepts: {result['files']} files, "
        f"{result['bytes'] / 1e6:.1f} MB, built in {result['seconds']} s; open {result['index']}"
    )
    if FLAGS.screenshot:
        shots = browser.screenshot_site(
            result["out_dir"],
            os.path.join(result["out_dir"], "screenshots"),
            FLAGS.screenshot_concept,
        )
        print(f"screenshots: {shots['index']}, {shots['concept']}")


if __name__ == "__main__":
    app.run(main)
