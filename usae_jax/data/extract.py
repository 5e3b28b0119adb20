"""Run backbones once over a set of images and write their patch tokens to a store.

For every batch of images: place the uint8 images on all devices split along the mesh's
``"data"`` axis; for each backbone run one jitted program (its own preprocessing, the forward
pass, the chosen layers, class/register tokens dropped, each token grid resampled bilinearly to
the common grid); copy the tokens to the host; append whole chunks to the store. Row
``i * h * w + t`` of every model is token ``t`` (row-major on the common grid) of image ``i``.

Resuming: the store commits whole chunks of ``chunk_images`` images; a rerun with the same
settings skips the committed images and recomputes the rest, so nothing is duplicated or lost.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from usae_jax.backbones.base import VisionBackbone
from usae_jax.backbones.cnn import ConvBackbone
from usae_jax.backbones.tokens import resample_grid
from usae_jax.data.images import ImageSource
from usae_jax.data.source import Standardisation
from usae_jax.data.store import ModelSpec, Store, StoreWriter
from usae_jax.progress import progress as progress_display
from usae_jax.validation import require


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelChoice:
    """One model of the store: a layer of one backbone."""

    name: str
    """Model name in the store (e.g. ``dinov2_l9``)."""
    backbone: str
    """Key of the backbone in the mapping given to :func:`extract`."""
    layer: str = "final"
    """Backbone layer (``"0"`` .. ``str(num_layers)`` or ``"final"``)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExtractConfig:
    """Settings of one extraction; stored in the manifest and checked on resume."""

    models: tuple[ModelChoice, ...]
    """The models to write, in store order."""
    grid: tuple[int, int] = (14, 14)
    """Common token grid every model is resampled to (bilinear, half-pixel centres)."""
    batch_images: int = 32
    """Images per forward pass; padded up to a multiple of the device count."""
    chunk_images: int = 256
    """Images per committed chunk (one shard file per model); the unit of resumption."""
    dtype: str = "float32"
    """Storage dtype: float32, float16 or bfloat16."""
    stats_rows: int = 200_000
    """Rows (evenly spaced) used for the per-model scalar mean/std."""
    max_images: int | None = None
    """Stop after this many images of the source (``None``: all)."""

    def __post_init__(self):
        names = tuple(m.name for m in self.models)
        require(bool(self.models), "models", names, "choose at least one model")
        require(len(set(names)) == len(names), "models", names, "model names must be unique")
        require(
            len(self.grid) == 2 and min(self.grid) >= 1,
            "grid",
            self.grid,
            "must be two positive sides (h, w)",
        )
        for field in ("batch_images", "chunk_images", "stats_rows"):
            require(getattr(self, field) >= 1, field, getattr(self, field), "must be >= 1")
        most = self.max_images
        require(most is None or most >= 1, "max_images", most, "must be >= 1 or None")


Backbone = VisionBackbone | ConvBackbone


def layer_width(backbone: Backbone, layer: str) -> int:
    """Channels of ``layer`` (one width for a transformer; per layer for a CNN)."""
    return backbone.width_of(layer) if isinstance(backbone, ConvBackbone) else backbone.width


def _describe(bb: Backbone, layers: Sequence[str]) -> dict:
    if isinstance(bb, ConvBackbone):
        return {
            "family": bb.name,
            "identity": dict(bb.identity),
            "image_size": bb.image_size,
            "native_grids": {layer: list(bb.grid_of(layer)) for layer in layers},
            "prefix_tokens_dropped": 0,
        }
    return {
        "family": bb.name,
        "identity": dict(bb.identity),
        "image_size": bb.image_size,
        "patch_size": bb.patch_size,
        "native_grid": list(bb.grid),
        "prefix_tokens_dropped": bb.num_prefix,
    }


def make_token_fn(backbone: Backbone, layers: Sequence[str], grid: Sequence[int]):
    """``fn(params, images uint8 [B, S, S, 3]) -> {layer: float32 [B, gh * gw, width]}``
    (a transformer's or a CNN's token grids, resampled to ``grid``)."""
    layers, grid = tuple(layers), tuple(grid)

    def fn(params, images):
        pixels = backbone.preprocess(images)
        grids = backbone.patch_tokens(params, pixels, layers)
        out = {}
        for layer, tokens in grids.items():
            tokens = resample_grid(tokens.astype(jnp.float32), grid)
            out[layer] = tokens.reshape(tokens.shape[0], grid[0] * grid[1], tokens.shape[-1])
        return out

    return fn


def _meta(config, backbones, source: ImageSource):
    return {
        "config": dataclasses.asdict(config),
        "backbones": {
            key: _describe(bb, [m.layer for m in config.models if m.backbone == key])
            for key, bb in backbones.items()
        },
        "images": {**source.description, "first_id": source.ids[0], "last_id": source.ids[-1]},
    }


def extract(
    config: ExtractConfig,
    backbones: Mapping[str, Backbone],
    source: ImageSource,
    workdir: str,
    mesh: jax.sharding.Mesh | None = None,
    progress: bool = True,
) -> Store:
    """Extract (or resume extracting) a store in ``workdir``; returns the complete store."""
    unknown = {m.backbone for m in config.models} - set(backbones)
    if unknown:
        raise ValueError(
            f"models name unknown backbones {sorted(unknown)}; have {sorted(backbones)}"
        )
    for m in config.models:
        if m.layer not in backbones[m.backbone].layers:
            raise ValueError(f"model {m.name!r}: layer {m.layer!r} not in {m.backbone} layers")
    if mesh is None:
        mesh = jax.make_mesh(
            (jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,)
        )
    data = NamedSharding(mesh, PartitionSpec("data"))
    replicated = NamedSharding(mesh, PartitionSpec())
    total = len(source) if config.max_images is None else min(len(source), config.max_images)
    specs = [
        ModelSpec(
            name=m.name,
            width=layer_width(backbones[m.backbone], m.layer),
            layer=m.layer,
            dtype=config.dtype,
            backbone={"key": m.backbone, **dict(backbones[m.backbone].identity)},
        )
        for m in config.models
    ]
    writer = StoreWriter(workdir, specs, config.grid, _meta(config, backbones, source))
    used = {k: [m.layer for m in config.models if m.backbone == k] for k in backbones}
    runs = {}
    for key, layers in used.items():
        if layers:
            fn = jax.jit(make_token_fn(backbones[key], sorted(set(layers)), config.grid))
            runs[key] = (fn, jax.device_put(backbones[key].params, replicated))
    devices = mesh.shape["data"]
    start = writer.committed_images
    bar = progress_display(total, initial=start, desc="extract", unit="img", enabled=progress)
    tic = time.perf_counter()
    for chunk_start in range(start, total, config.chunk_images):
        chunk = range(chunk_start, min(chunk_start + config.chunk_images, total))
        parts: dict[str, list[np.ndarray]] = {m.name: [] for m in config.models}
        for b in range(chunk.start, chunk.stop, config.batch_images):
            idx = list(range(b, min(b + config.batch_images, chunk.stop)))
            images = source.load_many(idx)
            pad = -len(idx) % devices
            if pad:
                images = np.concatenate([images, np.repeat(images[-1:], pad, axis=0)])
            images = jax.device_put(images, data)
            for key, (fn, params) in runs.items():
                out = jax.block_until_ready(fn(params, images))
                host = {layer: np.asarray(v)[: len(idx)] for layer, v in out.items()}
                for m in config.models:
                    if m.backbone == key:
                        parts[m.name].append(host[m.layer].reshape(-1, host[m.layer].shape[-1]))
            bar.update(len(idx))
        writer.append(
            [source.ids[i] for i in chunk], {n: np.concatenate(p) for n, p in parts.items()}
        )
    bar.close()
    store = Store(workdir, verify=False, require_complete=False)
    if not writer.complete:
        stride = max(1, store.num_rows // config.stats_rows)
        rows = np.arange(0, store.num_rows, stride)
        stats = Standardisation.fit(
            {n: store.read(n, rows) for n in store.names}, max_rows=None, row_ids=rows
        )
        writer.finish(stats.mean, stats.std, stats.epsilon)
    elapsed = time.perf_counter() - tic
    if progress and total > start:
        rate = (total - start) / elapsed
        print(f"extracted {total - start} images in {elapsed:.1f}s ({rate:.2f} img/s)")
    return Store(workdir)
