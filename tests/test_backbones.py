"""Our Flax backbones equal the PyTorch transformers models on tiny random checkpoints."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import jax  # noqa: E402
import transformers as tf  # noqa: E402

from usae_jax.backbones import base, hf, weights  # noqa: E402

TOL = 2e-5
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
VISION = {
    "vit": (tf.ViTConfig, tf.ViTModel),
    "dinov2": (tf.Dinov2Config, tf.Dinov2Model),
    "clip_vision_model": (tf.CLIPVisionConfig, tf.CLIPVisionModel),
}


def images(n=2, size=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def torch_states(model, pixels, **kw):
    with torch.no_grad():
        out = model(
            torch.tensor(np.asarray(pixels)).permute(0, 3, 1, 2), output_hidden_states=True, **kw
        )
    return [h.numpy() for h in out.hidden_states] + [out.last_hidden_state.numpy()]


def max_diff(ours, bb, ref):
    return max(
        float(np.abs(np.asarray(ours[name]) - r).max())
        for name, r in zip(bb.layers, ref, strict=True)
    )


@pytest.fixture(scope="module", params=sorted(VISION))
def vision_model(request, tmp_path_factory):
    config_cls, model_cls = VISION[request.param]
    torch.manual_seed(0)
    model = model_cls(config_cls(**TINY, image_size=32, patch_size=8)).eval()
    directory = tmp_path_factory.mktemp(request.param)
    return request.param, model, directory


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "bin"])
def test_vision_equals_torch(vision_model, safe):
    family, model, directory = vision_model
    path = directory / ("safe" if safe else "bin")
    model.save_pretrained(path, safe_serialization=safe)
    bb = hf.load_hf_vision(path)
    assert bb.grid == (4, 4) and bb.num_prefix == 1 and bb.width == 32
    assert bb.identity["sha256"] == weights.file_sha256(weights.find_checkpoint(path))
    pixels = bb.preprocess(images())
    ours = jax.jit(lambda p, x: bb.apply(p, x, bb.layers))(bb.params, pixels)
    assert ours["0"].shape == (2, 17, 32)
    diff = max_diff(ours, bb, torch_states(model, pixels))
    print(f"{family} {'safetensors' if safe else 'bin'}: max abs diff {diff:.2e}")
    assert diff < TOL
    grids = bb.patch_tokens(bb.params, pixels, ("2",))
    np.testing.assert_allclose(
        np.asarray(grids["2"]).reshape(2, 16, 32), np.asarray(ours["2"])[:, 1:], atol=1e-5
    )


def test_dinov2_other_resolution_matches_torch_bicubic(tmp_path):
    """At a resolution other than the checkpoint's, the pre-resized table reproduces torch."""
    torch.manual_seed(1)
    model = tf.Dinov2Model(tf.Dinov2Config(**TINY, image_size=56, patch_size=8)).eval()
    model.save_pretrained(tmp_path)
    bb = hf.load_hf_vision(tmp_path, image_size=40)
    assert bb.grid == (5, 5)
    pixels = bb.preprocess(images(size=40))
    ours = bb.apply(bb.params, pixels, bb.layers)
    assert max_diff(ours, bb, torch_states(model, pixels)) < TOL


def test_resize_bicubic_matches_torch():
    table = np.random.default_rng(0).normal(size=(7, 7, 3)).astype(np.float32)
    ref = torch.nn.functional.interpolate(
        torch.tensor(table).permute(2, 0, 1)[None], size=(4, 5), mode="bicubic", align_corners=False
    )[0].permute(1, 2, 0)
    np.testing.assert_allclose(weights.resize_bicubic_torch(table, 4, 5), ref.numpy(), atol=1e-5)


@pytest.mark.parametrize("family", ["bert", "clip_text_model"])
def test_text_equals_torch(family, tmp_path):
    torch.manual_seed(0)
    if family == "bert":
        model = tf.BertModel(tf.BertConfig(**TINY, vocab_size=99)).eval()
    else:
        model = tf.CLIPTextModel(tf.CLIPTextConfig(**TINY, vocab_size=99)).eval()
    model.save_pretrained(tmp_path)
    bb = hf.load_hf_text(tmp_path, with_tokenizer=False)
    ids = np.random.default_rng(0).integers(3, 99, (2, 9)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 6:] = 0
    tokens = {"input_ids": ids, "attention_mask": mask}
    ours = bb.apply(bb.params, tokens, bb.layers)
    with torch.no_grad():
        out = model(
            torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask),
            output_hidden_states=True,
        )
    ref = [h.numpy() for h in out.hidden_states] + [out.last_hidden_state.numpy()]
    diff = max(
        float(np.abs(np.asarray(ours[n])[mask > 0] - r[mask > 0]).max())
        for n, r in zip(bb.layers, ref, strict=True)
    )
    assert diff < TOL
    pooled = bb.apply(bb.params, tokens, ("final",), pooling="mean")["final"]
    m = mask[..., None]
    expect = (ref[-1] * m).sum(1) / m.sum(1)
    np.testing.assert_allclose(np.asarray(pooled)[:, 0], expect, atol=TOL)
    last = bb.apply(bb.params, tokens, ("final",), pooling="last")["final"]
    np.testing.assert_allclose(np.asarray(last)[1, 0], ref[-1][1, 5], atol=TOL)


def test_missing_weights_is_a_clear_error(tmp_path):
    tf.ViTConfig(**TINY).save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        hf.load_hf_vision(tmp_path)
    with pytest.raises(FileNotFoundError, match="config.json"):
        hf.load_hf_vision(tmp_path / "nowhere")


def test_pool_rejects_unknown():
    with pytest.raises(ValueError, match="pooling"):
        base.pool(np.zeros((1, 2, 3)), np.ones((1, 2)), "max")


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "bin"])
def test_siglip_equals_torch(tmp_path, safe):
    torch.manual_seed(0)
    config = tf.SiglipVisionConfig(**TINY, image_size=32, patch_size=8)
    model = tf.SiglipVisionModel(config).eval()
    model.save_pretrained(tmp_path, safe_serialization=safe)
    bb = hf.load_hf_vision(tmp_path)
    assert bb.name == "siglip" and bb.num_prefix == 0 and bb.grid == (4, 4)
    pixels = bb.preprocess(images())
    ours = jax.jit(lambda p, x: bb.apply(p, x, bb.layers))(bb.params, pixels)
    diff = max_diff(ours, bb, torch_states(model, pixels))
    print(f"siglip {'safetensors' if safe else 'bin'}: max abs diff {diff:.2e}")
    assert diff < TOL
