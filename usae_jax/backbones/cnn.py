"""Convolutional backbones for extraction: named feature maps as token grids.

A CNN has no tokens; each spatial position of a feature map is one. A :class:`ConvBackbone`
wraps a Flax NNX module split once into ``graphdef, state = nnx.split(model)``; its pure
``forward(state, pixels)`` merges them inside the traced function and returns every named feature
map, so ``jax.jit`` keeps only those asked for. Extraction sees the same interface as a
:class:`~usae_jax.backbones.base.VisionBackbone` (``preprocess``, ``patch_tokens``, ``layers``,
``params``) plus a width and a native grid per layer, since both change with depth; the grids are
resampled to the shared grid there.

Preprocessing lives with the backbone: uint8 RGB -> (optionally) BGR -> ``pixels / pixel_scale``
-> ``(x - mean) / std``, after an antialiased bilinear resize to ``image_size`` if needed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from usae_jax.validation import require

Features = Callable[[Any, jax.Array], dict[str, jax.Array]]
Resume = Callable[[Any, str, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class ConvBackbone:
    """A CNN ready for extraction: named NHWC feature maps and classifier logits."""

    name: str
    """Family name: ``efficientnet_lite``, ``open_nsfw``, ``hed_vgg16``."""
    identity: Mapping[str, Any]
    """Where the weights came from (path, format, file checksum, converter); goes in manifests."""
    image_size: int
    """Input side in pixels the network runs at (square)."""
    layer_shapes: Mapping[str, tuple[int, int, int]]
    """Every selectable layer -> its feature map ``(h, w, channels)`` at ``image_size``."""
    mean: tuple[float, float, float]
    """Per-channel mean subtracted after dividing by ``pixel_scale`` (in the network's channel
    order, i.e. BGR when ``bgr``)."""
    std: tuple[float, float, float]
    """Per-channel std divided by after the mean (network channel order)."""
    pixel_scale: float = 255.0
    """uint8 pixels are divided by this first (255: [0, 1]; 1: Caffe-style [0, 255])."""
    bgr: bool = False
    """Reverse RGB to BGR before normalising (Caffe-trained networks)."""
    forward: Features = dataclasses.field(repr=False)
    """``forward(state, pixels [B, S, S, 3]) -> {name: [B, h, w, C] or [B, classes]}``: every
    entry of ``layer_shapes`` plus ``"logits"``."""
    params: Any = dataclasses.field(repr=False)
    """The weights: an ``nnx.State`` (a pytree) to pass to ``forward``."""
    resume: Resume | None = dataclasses.field(default=None, repr=False)
    """``resume(state, layer, feature_map [B, h, w, C]) -> logits [B, classes]``: the rest of
    the network from a layer (splicing edited activations back in); ``None`` when the module
    cannot continue from a layer."""

    def __post_init__(self):
        require(self.image_size >= 1, "image_size", self.image_size, "must be >= 1")
        require(self.pixel_scale > 0, "pixel_scale", self.pixel_scale, "must be > 0")
        require(min(self.std) > 0, "std", self.std, "must be > 0 in every channel")
        require(
            bool(self.layer_shapes) and "logits" not in self.layer_shapes,
            "layer_shapes",
            tuple(self.layer_shapes),
            "must name feature maps (not 'logits')",
        )

    @property
    def layers(self) -> tuple[str, ...]:
        """Every selectable layer name (feature maps only; see :meth:`logits`)."""
        return tuple(self.layer_shapes)

    def width_of(self, layer: str) -> int:
        """Channels of ``layer``."""
        return self._shape(layer)[2]

    def grid_of(self, layer: str) -> tuple[int, int]:
        """Native grid ``(h, w)`` of ``layer`` at ``image_size``."""
        return self._shape(layer)[:2]

    def _shape(self, layer: str) -> tuple[int, int, int]:
        if layer not in self.layer_shapes:
            raise ValueError(f"unknown layer {layer!r} of {self.name}; choose from {self.layers}")
        return tuple(self.layer_shapes[layer])

    def preprocess(self, images: jax.Array | np.ndarray) -> jax.Array:
        """uint8 RGB images ``[B, H, W, 3]`` -> normalised float32 pixels ``[B, S, S, 3]``."""
        pixels = jnp.asarray(images, jnp.float32)
        if pixels.ndim != 4 or pixels.shape[-1] != 3:
            raise ValueError(f"images must be [B, H, W, 3], got {pixels.shape}")
        size = (pixels.shape[0], self.image_size, self.image_size, 3)
        if pixels.shape != size:
            pixels = jax.image.resize(pixels, size, "bilinear", antialias=True)
        if self.bgr:
            pixels = pixels[..., ::-1]
        pixels = pixels / self.pixel_scale
        return (pixels - jnp.asarray(self.mean)) / jnp.asarray(self.std)

    def patch_tokens(
        self, params: Any, pixels: jax.Array, layers: Sequence[str] = ("final",)
    ) -> dict[str, jax.Array]:
        """Feature maps of the chosen layers as token grids: ``{layer: [B, h, w, C]}``."""
        for layer in layers:
            self._shape(layer)
        out = self.forward(params, pixels)
        return {layer: out[layer] for layer in layers}

    def logits(self, params: Any, pixels: jax.Array) -> jax.Array:
        """Classifier output before any softmax: ``[B, num_classes]``."""
        return self.forward(params, pixels)["logits"]


def caffe_input(mean_bgr: tuple[float, float, float]) -> dict[str, Any]:
    """The :class:`ConvBackbone` input fields of a Caffe-trained network: BGR pixels in
    [0, 255] minus the per-channel ``mean_bgr``, no division."""
    return {"mean": mean_bgr, "std": (1.0, 1.0, 1.0), "pixel_scale": 1.0, "bgr": True}


def pure_forward(graphdef: nnx.GraphDef) -> Features:
    """``forward(state, pixels)`` of a split NNX module (merged inside the traced function)."""

    def forward(state, pixels):
        return nnx.merge(graphdef, state)(pixels)

    return forward


def pure_resume(graphdef: nnx.GraphDef) -> Resume:
    """``resume(state, layer, x)`` of a split NNX module with a ``continue_from(layer, x)``
    method (merged inside the traced function)."""

    def resume(state, layer, x):
        return nnx.merge(graphdef, state).continue_from(layer, x)

    return resume


def abstract_split(make: Callable[[nnx.Rngs], nnx.Module]) -> tuple[nnx.GraphDef, nnx.State]:
    """``graphdef`` and the shape-only state of ``make(rngs)`` (nothing is initialised)."""
    return nnx.split(nnx.eval_shape(lambda: make(nnx.Rngs(0))))


def fill_state(abstract: nnx.State, arrays: Mapping[tuple, np.ndarray], what: str) -> nnx.State:
    """A concrete state from ``abstract`` with every leaf taken from ``arrays`` (same paths).

    Args:
      abstract: the state of ``nnx.eval_shape(...)`` (``ShapeDtypeStruct`` leaves).
      arrays: ``{path tuple: array}``, paths as in ``nnx.to_flat_state``.
      what: the checkpoint's name, for errors.

    Raises:
      ValueError: naming missing or unexpected parameters, or a shape mismatch.
    """
    flat = nnx.to_flat_state(abstract)
    want = {path: var for path, var in flat}
    missing = sorted("/".join(map(str, k)) for k in set(want) - set(arrays))
    unexpected = sorted("/".join(map(str, k)) for k in set(arrays) - set(want))
    if missing or unexpected:
        raise ValueError(
            f"{what} does not match the model: missing {missing[:8]}"
            f"{'...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}"
            f"{'...' if len(unexpected) > 8 else ''}"
        )
    leaves = []
    for path, var in flat:
        value = np.asarray(arrays[path], np.float32)
        shape = tuple(var.get_value().shape)
        if value.shape != shape:
            raise ValueError(f"{what}: {'/'.join(map(str, path))} has shape {value.shape}, "
                             f"the model wants {shape}")  # fmt: skip
        leaves.append((path, var.replace(jnp.asarray(value))))
    return nnx.from_flat_state(leaves)


def build_state(
    make: Callable[[nnx.Rngs], nnx.Module],
    arrays: Mapping[tuple, np.ndarray] | None,
    what: str,
    seed: int = 0,
) -> tuple[nnx.GraphDef, nnx.State]:
    """``(graphdef, state)`` of the module ``make(rngs)`` with converted weights.

    Args:
      make: builds the module from ``nnx.Rngs``.
      arrays: ``{path tuple: array}`` of every parameter (as :func:`fill_state` wants them; the
        module is only traced, never initialised), or None for random weights from ``seed``
        (tests, smoke runs).
      what: the checkpoint's name, for errors.
      seed: seed of the random weights when ``arrays`` is None.

    Raises:
      ValueError: from :func:`fill_state`, naming missing or unexpected parameters or a shape.
    """
    graphdef, abstract = abstract_split(make)
    if arrays is None:
        return graphdef, random_state(make, seed)
    return graphdef, fill_state(abstract, arrays, what)


def random_state(make: Callable[[nnx.Rngs], nnx.Module], seed: int = 0) -> nnx.State:
    """The state of a randomly initialised ``make(nnx.Rngs(seed))`` (tests, smoke runs)."""
    return nnx.split(make(nnx.Rngs(seed)))[1]


def flat_arrays(state: nnx.State) -> dict[tuple, np.ndarray]:
    """``{path: numpy array}`` of a state (the inverse of :func:`fill_state`)."""
    return {path: np.asarray(var.get_value()) for path, var in nnx.to_flat_state(state)}


def max_pool(x: jax.Array, window: int, stride: int, pads: Sequence[tuple[int, int]]):
    """Max pooling of ``[B, H, W, C]`` with explicit ``((top, bottom), (left, right))`` padding
    (padded cells never win)."""
    return jax.lax.reduce_window(
        x, -jnp.inf, jax.lax.max, (1, window, window, 1), (1, stride, stride, 1),
        ((0, 0), *pads, (0, 0)),
    )  # fmt: skip


def make_backbone(
    *, graphdef: nnx.GraphDef, state: nnx.State, image_size: int, **fields: Any
) -> ConvBackbone:
    """A :class:`ConvBackbone` whose ``layer_shapes`` come from tracing the module once
    (``jax.eval_shape``: no compute) at ``image_size``; ``fields`` are the other dataclass
    fields (``name``, ``identity``, ``mean``, ``std``, ...)."""
    forward = pure_forward(graphdef)
    pixels = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
    order = []  # the module's own layer order (the traced dict comes back key-sorted)

    def trace(state, pixels):
        out = forward(state, pixels)
        order.extend(out)
        return out

    shapes = jax.eval_shape(trace, state, pixels)
    layer_shapes = {k: tuple(shapes[k].shape[1:]) for k in order if k != "logits"}
    resumable = hasattr(nnx.merge(graphdef, state), "continue_from")
    resume = pure_resume(graphdef) if resumable else None
    return ConvBackbone(
        image_size=image_size,
        layer_shapes=layer_shapes,
        forward=forward,
        params=state,
        resume=resume,
        **fields,
    )
