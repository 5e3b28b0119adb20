"""Paired image + caption streams: pooled image embeddings and caption embeddings in one store.

An *item* is one (image, caption) pair. Row ``r`` of every stream, image streams and text
streams alike, is item ``r``: the pooled embedding of its image under one vision backbone and
layer, or of its caption under one text encoder and layer. An image with several captions is
several items (its image rows repeat). The store's ``image_ids`` hold one item id per row (grid
``(1,)``) and ``meta["streams"]`` the modality (``"image"``/``"text"``), backbone, layer and
pooling of every stream. The text side reuses :mod:`usae_jax.data.text` (pooled streams only).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from usae_jax.backbones.base import VisionBackbone
from usae_jax.data import images as images_lib
from usae_jax.data import text as text_lib
from usae_jax.data.store import Store, StoreWriter
from usae_jax.validation import require

IMAGE_POOLINGS = ("cls", "mean")


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class ImageStream:
    """One image stream: a pooled embedding per image from one vision backbone layer."""

    name: str
    """Stream (model) name in the store and the SPARC config."""
    backbone: VisionBackbone
    """The vision encoder; streams holding the same object share one forward pass."""
    layer: str = "final"
    """Layer name (see ``usae_jax.backbones.base``)."""
    pooling: str = "cls"
    """``"cls"`` (the first prefix token; needs ``num_prefix >= 1``) or ``"mean"`` (mean of the
    patch tokens, prefix tokens excluded)."""

    def __post_init__(self):
        known = self.backbone.layers
        require(self.layer in known, "layer", self.layer, f"stream {self.name!r}: not in {known}")
        require(
            self.pooling in IMAGE_POOLINGS,
            "pooling",
            self.pooling,
            f"stream {self.name!r}: one of {IMAGE_POOLINGS}",
        )
        require(
            self.pooling != "cls" or self.backbone.num_prefix >= 1,
            "pooling",
            self.pooling,
            f"stream {self.name!r}: backbone {self.backbone.name!r} has no CLS token",
        )


def pool_image_tokens(tokens: jax.Array, num_prefix: int, pooling: str) -> jax.Array:
    """``[B, num_prefix + h * w, W]`` tokens -> ``[B, W]``: the CLS token or the patch mean."""
    if pooling == "cls":
        return tokens[:, 0]
    if pooling == "mean":
        return jnp.mean(tokens[:, num_prefix:], axis=1)
    raise ValueError(f"unknown image pooling {pooling!r}; use one of {IMAGE_POOLINGS}")


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class CaptionedItem:
    """One (image, caption) item of a paired image-text store."""

    item_id: str
    """Unique id of the item (the store's row id), e.g. ``"skimage:astronaut/c0"``."""
    image_id: str
    """Id of the image; items sharing an image share its pixels."""
    caption: str
    """The caption text."""
    image: np.ndarray | Callable[[], np.ndarray] = dataclasses.field(repr=False)
    """Any 2-D/3-D image array, or a zero-argument loader returning one (deterministic)."""

    def __post_init__(self):
        require(bool(self.item_id), "item_id", self.item_id, "must be non-empty")
        require(
            bool(self.caption.strip()),
            "caption",
            self.caption,
            f"item {self.item_id!r}: must be non-empty",
        )

    def load(self) -> np.ndarray:
        """The image as uint8 ``[H, W, 3]``."""
        return images_lib.to_rgb(self.image() if callable(self.image) else self.image)


def extract_paired_store(
    image_streams: Sequence[ImageStream],
    text_streams: Sequence[text_lib.TextStream],
    items: Sequence[CaptionedItem],
    directory: str | os.PathLike,
    *,
    image_size: int = 224,
    crop: float = 1.0,
    batch_size: int = 32,
    max_length: int = 32,
) -> Store:
    """Run every image stream over the items' images and every text stream over their captions.

    Args:
      image_streams: pooled image streams (at least one).
      text_streams: pooled text streams (at least one; per-token streams cannot pair with
        images).
      items: the (image, caption) items, in row order; item ids must be unique.
      directory: store folder. Resumable: a later call with the same streams, items and
        settings continues after the last committed chunk (``StoreWriter``); other items or
        settings raise ``StoreError``.
      image_size: every image is centre-cropped (``crop`` of the shorter side) and resized to
        ``[image_size, image_size, 3]`` uint8 first; each backbone's ``preprocess`` then
        resizes to its own input size.
      crop: fraction of the shorter side kept (1.0: the whole square centre; captions describe
        the whole image).
      batch_size: items per forward pass and per committed chunk.
      max_length: tokens per caption (padded, truncated).

    Returns:
      The complete store: stream ``s`` has ``[len(items), width_s]``; row ``r`` of every stream
      is ``items[r]`` (``store.manifest["image_ids"][r] == items[r].item_id``).
    """
    if not image_streams or not text_streams:
        raise ValueError("need at least one image stream and one text stream")
    if text_lib._check_streams(text_streams):
        raise ValueError("text streams must be pooled: per-token rows cannot pair with images")
    streams = [*image_streams, *text_streams]
    names = [s.name for s in streams]
    ids = [item.item_id for item in items]
    if not items or len(set(ids)) != len(ids):
        raise ValueError("items must be non-empty with unique item ids")
    if image_size < 1 or not 0 < crop <= 1 or batch_size < 1 or max_length < 2:
        raise ValueError("image_size, crop, batch_size or max_length out of range")
    digest = hashlib.sha256(
        json.dumps([[i.item_id, i.image_id, i.caption] for i in items]).encode()
    ).hexdigest()
    meta = {
        "kind": "paired_image_text",
        "pairing": "row r of every stream is the same item; image_ids[r] is its item id",
        "items_sha256": digest,  # item ids, image ids and captions: a resume must match
        "image_size": image_size,
        "crop": crop,
        "max_length": max_length,
        "batch_size": batch_size,  # chunk boundaries: a resumed extraction must use the same
        "streams": {
            s.name: {
                "modality": "image" if isinstance(s, ImageStream) else "text",
                "backbone": s.backbone.name,
                "layer": s.layer,
                "pooling": s.pooling,
            }
            for s in streams
        },
    }
    writer = StoreWriter(directory, text_lib.stream_specs(streams), (1,), meta)
    done = writer.committed_images  # items_sha256 in meta: the committed rows are these items
    image_groups = text_lib.group_by_backbone(image_streams)
    image_fns = {key: _image_forward(group) for key, group in image_groups.items()}
    text_groups = text_lib.group_by_backbone(text_streams)
    text_fns = text_lib.text_forwards(text_groups)
    for start in range(0, len(items), batch_size):
        batch = items[start : start + batch_size]
        if start + len(batch) <= done:
            continue
        pixels = np.stack(
            [images_lib.resize_crop(item.load(), image_size, crop=crop) for item in batch]
        )
        rows = {}
        for key, group in image_groups.items():
            out = image_fns[key](group[0].backbone.params, pixels)
            rows.update({name: np.asarray(value) for name, value in out.items()})
        captions = [item.caption for item in batch]
        batch_ids = [item.item_id for item in batch]
        text_out, _ = text_lib.text_rows(
            text_groups, text_fns, captions, batch_ids, False, max_length
        )
        writer.append(batch_ids, rows | text_out)
    return text_lib.finish_store(writer, names)


def _image_forward(group: Sequence[ImageStream]):
    """Jitted ``(params, uint8 [B, S, S, 3]) -> {stream: [B, width]}`` for one backbone."""
    backbone = group[0].backbone
    layers = tuple(dict.fromkeys(s.layer for s in group))

    @jax.jit
    def forward(params, pixels):
        hidden = backbone.apply(params, backbone.preprocess(pixels), layers)
        return {
            s.name: pool_image_tokens(hidden[s.layer], backbone.num_prefix, s.pooling)
            for s in group
        }

    return forward


# Hand-written descriptive captions of the offline sample images: "image id | caption | ...".
_CAPTION_TABLE = """
skimage:astronaut | a portrait of an astronaut in a white spacesuit | a smiling astronaut posing
  in front of a flag | a woman in a spacesuit with a model space shuttle behind her
skimage:brick | a grey brick wall | a close-up texture of bricks and mortar
skimage:camera | a black and white photo of a man with a camera on a tripod | a photographer
  standing outdoors behind a tripod
skimage:cat | an orange tabby cat looking at the camera | a close-up of a ginger cat
skimage:cell | a grey microscope image of a cell | a blurry microscopy picture of a cell
skimage:checkerboard | a black and white checkerboard pattern | a grid of alternating squares
skimage:chelsea | a ginger cat with striped fur | a tabby cat sitting indoors
skimage:clock | a black and white photo of a wall clock | a round clock on a wall
skimage:coffee | a cup of coffee on a saucer | a coffee cup seen from above on a table
skimage:coins | many old coins on a dark background | a grey photo of rows of coins
skimage:grass | a close-up texture of grass blades | a grey image of dense grass
skimage:gravel | a grey texture of small stones | a close-up of gravel
skimage:horse | a black silhouette of a horse on white | the outline of a standing horse
skimage:hubble_deep_field | a deep space image full of galaxies | many small colourful galaxies
  on a black sky | a telescope view of distant stars and galaxies
skimage:immunohistochemistry | a stained tissue sample under a microscope | brown and blue
  stained cells in a tissue slice
skimage:logo | the scikit-image logo with a snake | a colourful logo on a white background
skimage:moon | a grey image of the moon's surface with craters | a close-up of lunar craters
skimage:page | a scanned page of printed text | a grey photo of a page of a book
skimage:retina | a photograph of the back of a human eye | an orange retina with red blood vessels
skimage:rocket | a rocket on a launch pad | a space rocket standing upright before launch
skimage:text | a grey photo of letters and numbers | printed text on an uneven background
sklearn:china.jpg | a chinese temple with a tiled roof under a blue sky | an old pagoda building
  surrounded by trees
sklearn:flower.jpg | a close-up photo of a flower | a blossom with petals in the sun
"""
SAMPLE_CAPTIONS: dict[str, tuple[str, ...]] = {
    line.split(" | ")[0]: tuple(line.split(" | ")[1:])
    for line in _CAPTION_TABLE.replace("\n  ", " ").strip().splitlines()
}
"""Image id -> its 2-3 hand-written captions (every image of ``images.sample_images``)."""


@functools.lru_cache(maxsize=1)
def _sample_arrays() -> dict[str, np.ndarray]:
    return dict(images_lib.sample_images())


def sample_captioned_items() -> list[CaptionedItem]:
    """The offline caption set: every sample image with its 2-3 hand-written captions.

    Tiny (23 images, 48 items) and written by hand without looking at pixel statistics: it only
    exercises the image-caption pipeline; it is no benchmark. Images load lazily (skimage and
    sklearn sample data, offline). Item ids look like ``skimage:astronaut/c1``.
    """
    return [
        CaptionedItem(
            item_id=f"{image_id}/c{j}",
            image_id=image_id,
            caption=caption,
            image=functools.partial(lambda key: _sample_arrays()[key], image_id),
        )
        for image_id, captions in SAMPLE_CAPTIONS.items()
        for j, caption in enumerate(captions)
    ]
