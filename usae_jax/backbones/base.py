"""The backbone protocol: what extraction needs from a vision or text network.

A backbone is a frozen dataclass that holds its weights (``params``, a pytree) and a pure
``forward(params, inputs) -> (hidden_states, last_hidden_state)`` function. Everything else
(preprocessing, layer selection, dropping class/register tokens) is shared here, so every family
(ViT, DINOv2, CLIP, SigLIP, BERT, CLIP text) behaves the same way.

Layer names: ``"0"`` is the embedding output (input of block 1), ``"i"`` the output of block
``i`` (``1 <= i <= num_layers``) exactly as the torch models' ``hidden_states[i]``, and ``"final"``
the model's ``last_hidden_state`` (after the final LayerNorm for ViT, DINOv2 and SigLIP; CLIP
vision applies no norm to its tokens, so there ``"final"`` equals ``str(num_layers)``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from usae_jax.validation import require

Forward = Callable[..., tuple[tuple[jax.Array, ...], jax.Array]]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def layer_names(num_layers: int) -> tuple[str, ...]:
    """All selectable layer names of a network with ``num_layers`` blocks."""
    return tuple(str(i) for i in range(num_layers + 1)) + ("final",)


def select_layers(
    hidden_states: Sequence[jax.Array], last: jax.Array, layers: Sequence[str]
) -> dict[str, jax.Array]:
    """Pick named layers out of ``hidden_states`` (``num_layers + 1`` arrays) and ``last``."""
    out = {}
    for layer in layers:
        if layer == "final":
            out[layer] = last
        elif layer.isdigit() and int(layer) < len(hidden_states):
            out[layer] = hidden_states[int(layer)]
        else:
            raise ValueError(
                f"unknown layer {layer!r}; choose from {layer_names(len(hidden_states) - 1)}"
            )
    return out


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class VisionBackbone:
    """A vision transformer ready for extraction (pure, jittable ``apply``)."""

    name: str
    """Family name: ``vit``, ``dinov2``, ``clip``, ``siglip``."""
    identity: Mapping[str, Any]
    """Where the weights came from (path, format, file checksum, converter); goes in manifests."""
    image_size: int
    """Input side in pixels the network runs at (square)."""
    patch_size: int
    """Patch side in pixels; the token grid is ``image_size // patch_size`` on each side."""
    width: int
    """Channel width of every hidden state."""
    num_layers: int
    """Number of transformer blocks."""
    num_prefix: int
    """Tokens before the patch tokens (class + register tokens; 0 for SigLIP)."""
    mean: tuple[float, float, float]
    """Per-channel mean applied to pixels in [0, 1]."""
    std: tuple[float, float, float]
    """Per-channel std applied to pixels in [0, 1]."""
    forward: Forward = dataclasses.field(repr=False)
    """``forward(params, pixels [B, S, S, 3]) -> (hidden_states, last_hidden_state)``."""
    params: Any = dataclasses.field(repr=False)
    """The weights, a pytree of arrays."""

    def __post_init__(self):
        require(self.patch_size >= 1, "patch_size", self.patch_size, "must be >= 1")
        require(
            self.image_size % self.patch_size == 0,
            "image_size",
            self.image_size,
            f"must be a multiple of patch_size={self.patch_size}",
        )
        require(self.num_prefix >= 0, "num_prefix", self.num_prefix, "must be >= 0")
        require(self.num_layers >= 1, "num_layers", self.num_layers, "must be >= 1")
        require(self.width >= 1, "width", self.width, "must be >= 1")

    @property
    def grid(self) -> tuple[int, int]:
        """Token grid ``(h, w)`` of the patch tokens."""
        side = self.image_size // self.patch_size
        return side, side

    @property
    def layers(self) -> tuple[str, ...]:
        """Every selectable layer name."""
        return layer_names(self.num_layers)

    def preprocess(self, images: jax.Array | np.ndarray) -> jax.Array:
        """uint8 images ``[B, H, W, 3]`` -> normalised float32 pixels ``[B, S, S, 3]`` (NHWC).

        Images of another size are resized with antialiased bilinear filtering (``jax.image``).
        """
        pixels = jnp.asarray(images, jnp.float32) / 255.0
        if pixels.ndim != 4 or pixels.shape[-1] != 3:
            raise ValueError(f"images must be [B, H, W, 3], got {pixels.shape}")
        size = (pixels.shape[0], self.image_size, self.image_size, 3)
        if pixels.shape != size:
            pixels = jax.image.resize(pixels, size, "bilinear", antialias=True)
        return (pixels - jnp.asarray(self.mean)) / jnp.asarray(self.std)

    def apply(
        self, params: Any, pixels: jax.Array, layers: Sequence[str] = ("final",)
    ) -> dict[str, jax.Array]:
        """All tokens of the chosen layers: ``{layer: [B, num_prefix + h * w, width]}``."""
        hidden_states, last = self.forward(params, pixels)
        return select_layers(hidden_states, last, layers)

    def patch_tokens(
        self, params: Any, pixels: jax.Array, layers: Sequence[str] = ("final",)
    ) -> dict[str, jax.Array]:
        """Patch tokens only, as grids: ``{layer: [B, h, w, width]}``."""
        h, w = self.grid
        out = self.apply(params, pixels, layers)
        return {
            k: v[:, self.num_prefix :].reshape(v.shape[0], h, w, v.shape[-1])
            for k, v in out.items()
        }


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class TextBackbone:
    """A text encoder ready for extraction (per-token or pooled outputs)."""

    name: str
    """Family name: ``bert`` or ``clip_text``."""
    identity: Mapping[str, Any]
    """Where the weights came from; goes in manifests."""
    width: int
    """Channel width of every hidden state."""
    num_layers: int
    """Number of transformer blocks."""
    forward: Forward = dataclasses.field(repr=False)
    """``forward(params, input_ids [B, T], attention_mask [B, T]) -> (hidden_states, last)``."""
    params: Any = dataclasses.field(repr=False)
    """The weights, a pytree of arrays."""
    tokenizer: Any = dataclasses.field(default=None, repr=False)
    """A :class:`~usae_jax.backbones.tokenizer.Tokenizer` (or any callable with its
    interface), or ``None`` when callers bring token ids."""

    @property
    def layers(self) -> tuple[str, ...]:
        """Every selectable layer name."""
        return layer_names(self.num_layers)

    def tokenize(self, texts: Sequence[str], max_length: int = 64) -> dict[str, np.ndarray]:
        """``{"input_ids", "attention_mask"}``: int32 ``[B, max_length]`` (padded, truncated)."""
        if self.tokenizer is None:
            raise ValueError(f"backbone {self.name!r} has no tokenizer; pass token ids instead")
        enc = self.tokenizer(
            list(texts), padding="max_length", truncation=True, max_length=max_length
        )
        return {k: np.asarray(enc[k], np.int32) for k in ("input_ids", "attention_mask")}

    def apply(
        self,
        params: Any,
        tokens: Mapping[str, jax.Array],
        layers: Sequence[str] = ("final",),
        pooling: str | None = None,
    ) -> dict[str, jax.Array]:
        """Per-token ``{layer: [B, T, width]}``, or pooled ``[B, 1, width]``.

        Args:
          pooling: ``None`` (per token), ``"mean"`` (mean over non-padding tokens, as
            sentence-transformers does), ``"first"`` (the CLS token) or ``"last"`` (the last
            non-padding token: CLIP text's end-of-text token).
        """
        mask = jnp.asarray(tokens["attention_mask"])
        hidden_states, last = self.forward(params, jnp.asarray(tokens["input_ids"]), mask)
        out = select_layers(hidden_states, last, layers)
        if pooling is None:
            return out
        return {k: pool(v, mask, pooling) for k, v in out.items()}


def pool(tokens: jax.Array, mask: jax.Array, pooling: str) -> jax.Array:
    """Pool ``[B, T, W]`` tokens with an attention mask ``[B, T]`` into ``[B, 1, W]``."""
    if pooling == "mean":
        m = mask[..., None].astype(tokens.dtype)
        return (tokens * m).sum(1, keepdims=True) / jnp.maximum(m.sum(1, keepdims=True), 1e-9)
    if pooling == "first":
        return tokens[:, :1]
    if pooling == "last":
        last = jnp.maximum(mask.sum(1) - 1, 0)
        return jnp.take_along_axis(tokens, last[:, None, None], axis=1)
    raise ValueError(f"unknown pooling {pooling!r}; use 'mean', 'first' or 'last'")
