"""Our own NNX transformers (``transformer.py``) and converters (``convert.py``) equal the PyTorch
models of transformers on tiny random checkpoints saved with ``save_pretrained``.

transformers and torch appear only here, as the reference."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import transformers as tf  # noqa: E402

from usae_jax.backbones import convert, families, registry, tokenizer, weights  # noqa: E402
from usae_jax.backbones import transformer as tr  # noqa: E402

TOL = 1e-5  # today's wrappers are tested at 2e-5
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
VISION = {
    "vit": (tf.ViTConfig, tf.ViTModel, {}),
    "dinov2": (tf.Dinov2Config, tf.Dinov2Model, {}),
    "dinov2_with_registers": (
        tf.Dinov2WithRegistersConfig,
        tf.Dinov2WithRegistersModel,
        dict(num_register_tokens=3),
    ),
    "clip_vision_model": (tf.CLIPVisionConfig, tf.CLIPVisionModel, {}),
    "siglip_vision_model": (tf.SiglipVisionConfig, tf.SiglipVisionModel, {}),
}
PREFIX = {
    "vit": 1,
    "dinov2": 1,
    "dinov2_with_registers": 4,
    "clip_vision_model": 1,
    "siglip_vision_model": 0,
}


def images(n=2, size=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def torch_states(model, pixels, **kw):
    """transformers' hidden states + last_hidden_state for NHWC ``pixels``."""
    with torch.no_grad():
        out = model(
            torch.tensor(np.asarray(pixels)).permute(0, 3, 1, 2), output_hidden_states=True, **kw
        )
    return [h.numpy() for h in out.hidden_states] + [out.last_hidden_state.numpy()]


def max_diff(ours, layers, ref, valid=None):
    def err(a, b):
        d = np.abs(np.asarray(a) - b)
        return float((d if valid is None else d[valid]).max())

    return max(err(ours[n], r) for n, r in zip(layers, ref, strict=True))


@pytest.fixture(scope="module", params=sorted(VISION))
def vision_model(request, tmp_path_factory):
    config_cls, model_cls, extra = VISION[request.param]
    torch.manual_seed(0)
    model = model_cls(config_cls(**TINY, image_size=32, patch_size=8, **extra)).eval()
    return request.param, model, tmp_path_factory.mktemp(request.param)


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "bin"])
def test_vision_equals_torch(vision_model, safe):
    family, model, directory = vision_model
    path = directory / ("safe" if safe else "bin")
    model.save_pretrained(path, safe_serialization=safe)
    bb = convert.load_hf_vision(path)
    assert bb.grid == (4, 4) and bb.num_prefix == PREFIX[family] and bb.width == 32
    assert bb.identity["sha256"] == weights.file_sha256(weights.find_checkpoint(path))
    assert isinstance(bb.forward, tr.Apply)
    pixels = bb.preprocess(images())
    ours = jax.jit(lambda p, x: bb.apply(p, x, bb.layers))(bb.params, pixels)
    assert ours["0"].shape == (2, PREFIX[family] + 16, 32)
    diff = max_diff(ours, bb.layers, torch_states(model, pixels))
    print(f"{family} {'safetensors' if safe else 'bin'}: max abs diff {diff:.2e}")
    assert diff < TOL
    grids = bb.patch_tokens(bb.params, pixels, ("2",))
    np.testing.assert_allclose(  # eager vs jitted: the same up to rounding
        np.asarray(grids["2"]).reshape(2, 16, 32),
        np.asarray(ours["2"])[:, PREFIX[family] :],
        atol=1e-6,
    )


def _vit_in_transformers_5_naming(tmp_path):
    """transformers 5 can save its own ViT module names; the key table reads those too."""
    torch.manual_seed(0)
    model = tf.ViTModel(tf.ViTConfig(**TINY, image_size=32, patch_size=8)).eval()
    model.save_pretrained(tmp_path, save_original_format=False)
    keys = weights.read_state_dict(weights.find_checkpoint(tmp_path))
    assert "layers.0.attention.q_proj.weight" in keys
    bb = convert.load_hf_vision(tmp_path)
    pixels = bb.preprocess(images())
    ref = torch_states(model, pixels)
    assert max_diff(bb.apply(bb.params, pixels, bb.layers), bb.layers, ref) < TOL


# Defined only where it can run (``save_original_format`` needs transformers >= 5), so that a
# USAE_NO_SKIPS=1 run with transformers 4 as the reference has no skipped test.
if int(tf.__version__.split(".")[0]) >= 5:
    test_vit_in_transformers_5_naming = _vit_in_transformers_5_naming


@pytest.mark.parametrize("family", ["dinov2", "dinov2_with_registers"])
@pytest.mark.parametrize("size", [40, 72], ids=["down", "up"])
def test_dinov2_interpolates_positions_as_torch(tmp_path, family, size):
    """Another input size: the 7x7 position grid is resized as transformers' torch model does
    (bicubic without antialias for DINOv2, with antialias for DINOv2 with registers)."""
    config_cls, model_cls, extra = VISION[family]
    torch.manual_seed(1)
    model = model_cls(config_cls(**TINY, image_size=56, patch_size=8, **extra)).eval()
    model.save_pretrained(tmp_path)
    bb = convert.load_hf_vision(tmp_path, image_size=size)
    assert bb.grid == (size // 8, size // 8)
    pixels = bb.preprocess(images(size=size))
    diff = max_diff(bb.apply(bb.params, pixels, bb.layers), bb.layers, torch_states(model, pixels))
    print(f"{family} at {size} px: max abs diff {diff:.2e}")
    assert diff < TOL


@pytest.mark.parametrize("n_in,n_out", [(7, 4), (7, 11), (37, 16)])
@pytest.mark.parametrize("mode", ["bicubic", "bicubic_antialias"])
def test_resize_matches_torch_interpolate(n_in, n_out, mode):
    grid = np.random.default_rng(0).normal(size=(n_in, n_in, 3)).astype(np.float32)
    ref = torch.nn.functional.interpolate(
        torch.tensor(grid).permute(2, 0, 1)[None],
        size=(n_out, n_out),
        mode="bicubic",
        align_corners=False,
        antialias=mode == "bicubic_antialias",
    )[0].permute(1, 2, 0)
    np.testing.assert_allclose(tr.resize_grid(jnp.asarray(grid), n_out, mode), ref, atol=3e-6)


@pytest.mark.parametrize("n_in,n_out", [(7, 5), (37, 16)])
def test_resize_with_offset_matches_torch_scale_factor(n_in, n_out):
    grid = np.random.default_rng(0).normal(size=(n_in, n_in, 3)).astype(np.float32)
    scale = (n_out + 0.1) / n_in
    ref = torch.nn.functional.interpolate(
        torch.tensor(grid).permute(2, 0, 1)[None], scale_factor=(scale, scale), mode="bicubic"
    )[0].permute(1, 2, 0)
    ours = tr.resize_grid(jnp.asarray(grid), n_out, "bicubic", offset=0.1)
    np.testing.assert_allclose(ours, ref, atol=5e-6)
    assert (
        np.abs(np.asarray(tr.resize_grid(jnp.asarray(grid), n_out, "bicubic")) - ours).max() > 1e-3
    )


def test_vit_refuses_another_image_size(tmp_path):
    torch.manual_seed(0)
    tf.ViTModel(tf.ViTConfig(**TINY, image_size=32, patch_size=8)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="image_size"):
        convert.load_hf_vision(tmp_path, image_size=40)


TEXT = {
    "bert": lambda: tf.BertModel(tf.BertConfig(**TINY, vocab_size=99)),
    "xlm-roberta": lambda: tf.XLMRobertaModel(
        tf.XLMRobertaConfig(**TINY, vocab_size=99, pad_token_id=1, type_vocab_size=1)
    ),
    "clip_text_model": lambda: tf.CLIPTextModel(tf.CLIPTextConfig(**TINY, vocab_size=99)),
}


def token_batch():
    ids = np.random.default_rng(0).integers(3, 99, (2, 9)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 6:] = 0
    ids[1, 6:] = 1  # the pad id of XLM-R: its position ids skip padding
    return {"input_ids": ids, "attention_mask": mask}


def torch_text(model, tokens):
    with torch.no_grad():
        out = model(
            torch.tensor(tokens["input_ids"], dtype=torch.long),
            attention_mask=torch.tensor(tokens["attention_mask"]),
            output_hidden_states=True,
        )
    return [h.numpy() for h in out.hidden_states] + [out.last_hidden_state.numpy()]


@pytest.mark.parametrize("family", sorted(TEXT))
def test_text_equals_torch(family, tmp_path):
    torch.manual_seed(0)
    model = TEXT[family]().eval()
    model.save_pretrained(tmp_path)
    bb = convert.load_hf_text(tmp_path, with_tokenizer=False)
    tokens = token_batch()
    ours = jax.jit(lambda p, t: bb.apply(p, t, bb.layers))(bb.params, tokens)
    ref = torch_text(model, tokens)
    valid = tokens["attention_mask"] > 0
    diff = max_diff(ours, bb.layers, ref, valid)
    print(f"{family}: max abs diff over valid tokens {diff:.2e}")
    assert diff < TOL
    pooled = bb.apply(bb.params, tokens, ("final",), pooling="mean")["final"][:, 0]
    m = tokens["attention_mask"][..., None]
    np.testing.assert_allclose(pooled, (ref[-1] * m).sum(1) / m.sum(1), atol=TOL)
    last = bb.apply(bb.params, tokens, ("final",), pooling="last")["final"][:, 0]
    np.testing.assert_allclose(last[1], ref[-1][1, 5], atol=TOL)  # the last unpadded token
    first = bb.apply(bb.params, tokens, ("final",), pooling="first")["final"][:, 0]
    np.testing.assert_allclose(first, ref[-1][:, 0], atol=TOL)


def test_pool_rejects_unknown():
    from usae_jax.backbones import base

    with pytest.raises(ValueError, match="pooling"):
        base.pool(np.zeros((1, 2, 3)), np.ones((1, 2)), "max")


def test_two_tower_clip_folder(tmp_path):
    """A full CLIPModel folder gives both towers, each ignoring the other's keys."""
    torch.manual_seed(0)
    config = tf.CLIPConfig(
        text_config=dict(**TINY, vocab_size=99),
        vision_config=dict(**TINY, image_size=32, patch_size=8),
        projection_dim=16,
    )
    model = tf.CLIPModel(config).eval()
    model.save_pretrained(tmp_path)
    vision = convert.load_hf_vision(tmp_path)
    text = convert.load_hf_text(tmp_path, with_tokenizer=False)
    assert (vision.name, text.name) == ("clip", "clip_text")
    pixels = vision.preprocess(images())
    ref = torch_states(model.vision_model, pixels)
    assert max_diff(vision.apply(vision.params, pixels, vision.layers), vision.layers, ref) < TOL
    tokens = token_batch()
    ref = torch_text(model.text_model, tokens)
    ours = text.apply(text.params, tokens, text.layers)
    assert max_diff(ours, text.layers, ref, tokens["attention_mask"] > 0) < TOL


# --- timm / torch.hub naming, built by renaming the tiny transformers models' keys ------------
HF_TO_TIMM = (  # HF key regex -> timm key (independent of key_tables.TIMM_KEYS)
    (r"embeddings\.cls_token", "cls_token"),
    (r"embeddings\.mask_token", "mask_token"),
    (r"embeddings\.register_tokens", "register_tokens"),
    (r"embeddings\.position_embeddings", "pos_embed"),
    (r"embeddings\.patch_embeddings\.projection\.(\w+)", "patch_embed.proj.{0}"),
    (r"encoder\.layer\.(\d+)\.(?:norm1|layernorm_before)\.(\w+)", "blocks.{0}.norm1.{1}"),
    (r"encoder\.layer\.(\d+)\.(?:norm2|layernorm_after)\.(\w+)", "blocks.{0}.norm2.{1}"),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.(\w+)", "blocks.{0}.attn.proj.{1}"),
    (r"encoder\.layer\.(\d+)\.layer_scale([12])\.lambda1", "blocks.{0}.ls{1}.gamma"),
    (r"encoder\.layer\.(\d+)\.(?:mlp\.fc1|intermediate\.dense)\.(\w+)", "blocks.{0}.mlp.fc1.{1}"),
    (r"encoder\.layer\.(\d+)\.(?:mlp\.fc2|output\.dense)\.(\w+)", "blocks.{0}.mlp.fc2.{1}"),
    (r"layernorm\.(\w+)", "norm.{0}"),
)


def saved_state_dict(model, directory):
    """The state dict as ``save_pretrained`` writes it (transformers 5 renames some modules in
    memory, not on disk)."""
    model.save_pretrained(directory)
    return weights.read_state_dict(weights.find_checkpoint(directory))


def to_timm(model, directory):
    """A transformers ViT/DINOv2 state dict renamed to timm / torch.hub keys (qkv fused)."""
    import re

    sd = saved_state_dict(model, directory)
    out = {}
    for key, value in sd.items():
        for pattern, target in HF_TO_TIMM:
            if m := re.fullmatch(pattern, key):
                out[target.format(*m.groups())] = value
    layers = {int(m.group(1)) for k in sd if (m := re.match(r"encoder\.layer\.(\d+)\.", k))}
    for i in layers:
        for leaf in ("weight", "bias"):
            parts = [
                sd[f"encoder.layer.{i}.attention.attention.{n}.{leaf}"]
                for n in ("query", "key", "value")
            ]
            out[f"blocks.{i}.attn.qkv.{leaf}"] = np.concatenate(parts)
    return out


def save_state_dict(sd, path):
    if str(path).endswith(".safetensors"):
        from safetensors.numpy import save_file

        save_file(sd, str(path))
    else:
        torch.save({"model": {k: torch.tensor(v) for k, v in sd.items()}}, path)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_timm_vit(tmp_path, suffix):
    torch.manual_seed(0)
    model = tf.ViTModel(tf.ViTConfig(**TINY, image_size=32, patch_size=8, layer_norm_eps=1e-6))
    sd = to_timm(model.eval(), tmp_path / "hf")
    sd["head.weight"] = np.zeros((10, 32), np.float32)  # classifier: ignored
    save_state_dict(sd, tmp_path / f"vit{suffix}")
    bb = convert.load_timm(tmp_path / f"vit{suffix}", "timm_vit", num_heads=2)
    assert bb.grid == (4, 4) and bb.identity["format"] == "timm_vit"
    pixels = bb.preprocess(images())
    ref = torch_states(model, pixels)
    assert max_diff(bb.apply(bb.params, pixels, bb.layers), bb.layers, ref) < TOL


def hub_positions(model, size, patch=8, offset=0.1):
    """``model`` (a transformers DINOv2) with its position table resized for ``size`` px by
    torch itself as torch.hub DINOv2 does it (``scale_factor=(g + 0.1) / n``, bicubic)."""
    import copy

    model = copy.deepcopy(model)
    table = model.embeddings.position_embeddings.data
    n, g = int(round((table.shape[1] - 1) ** 0.5)), size // patch
    grid = table[:, 1:].reshape(1, n, n, -1).permute(0, 3, 1, 2)
    scale = (g + offset) / n
    grid = torch.nn.functional.interpolate(grid, scale_factor=(scale, scale), mode="bicubic")
    assert grid.shape[-2:] == (g, g)
    grid = grid.permute(0, 2, 3, 1).reshape(1, g * g, -1)
    model.embeddings.position_embeddings = torch.nn.Parameter(torch.cat([table[:, :1], grid], 1))
    return model


@pytest.mark.parametrize("registers", [0, 2])
def test_hub_dinov2_at_another_resolution(tmp_path, registers):
    """torch.hub DINOv2 at 40 px from a 7x7 position grid: ``dinov2_vits14`` resizes with a 0.1
    offset (reference: the table resized by torch that way), ``*_reg`` with antialias and no
    offset (reference: transformers' registers model, which does the same)."""
    torch.manual_seed(0)
    if registers:
        config = tf.Dinov2WithRegistersConfig(
            **TINY, image_size=56, patch_size=8, num_register_tokens=registers
        )
        model = tf.Dinov2WithRegistersModel(config).eval()
        reference = model
    else:
        model = tf.Dinov2Model(tf.Dinov2Config(**TINY, image_size=56, patch_size=8)).eval()
        reference = hub_positions(model, 40)
    save_state_dict(to_timm(model, tmp_path / "hf"), tmp_path / "dinov2.pth")
    bb = convert.load_timm(tmp_path / "dinov2.pth", "hub_dinov2", num_heads=2, image_size=40)
    assert bb.num_prefix == 1 + registers and bb.grid == (5, 5)
    pixels = bb.preprocess(images(size=40))
    diff = max_diff(
        bb.apply(bb.params, pixels, bb.layers), bb.layers, torch_states(reference, pixels)
    )
    print(f"hub dinov2 (registers {registers}) at 40 px: max abs diff {diff:.2e}")
    assert diff < TOL


def test_registry_runs_timm_and_hub_specs_in_our_modules(tmp_path):
    """``timm_vit:FILE`` (12 heads) and ``hub_dinov2:FILE`` (6 heads, run at 224 px) through
    :func:`registry.load_backbone`, against the torch models."""
    torch.manual_seed(0)
    narrow = dict(num_hidden_layers=1, hidden_size=24, intermediate_size=48, layer_norm_eps=1e-6)
    vit = tf.ViTModel(tf.ViTConfig(**narrow, num_attention_heads=12, image_size=32, patch_size=8))
    dino = tf.Dinov2Model(
        tf.Dinov2Config(**narrow, num_attention_heads=6, image_size=56, patch_size=8)
    )
    for name, model, reference in (
        ("timm_vit", vit.eval(), vit),
        ("hub_dinov2", dino.eval(), hub_positions(dino, 224)),
    ):
        path = tmp_path / f"{name}.safetensors"
        save_state_dict(to_timm(model, tmp_path / name), path)
        bb = registry.load_backbone(f"{name}:{path}")
        assert isinstance(bb.forward, tr.Apply) and bb.identity["format"] == name
        assert bb.image_size == (224 if name == "hub_dinov2" else 32)
        pixels = bb.preprocess(images(size=bb.image_size))
        ref = torch_states(reference, pixels)
        diff = max_diff(bb.apply(bb.params, pixels, bb.layers), bb.layers, ref)
        print(f"registry {name}: max abs diff {diff:.2e}")
        assert diff < TOL


def test_timm_siglip(tmp_path):
    torch.manual_seed(0)
    model = tf.SiglipVisionModel(tf.SiglipVisionConfig(**TINY, image_size=32, patch_size=8))
    saved = saved_state_dict(model.eval(), tmp_path / "hf")
    sd = {k.removeprefix("vision_model."): v for k, v in saved.items()}
    timm_sd = {
        "pos_embed": sd["embeddings.position_embedding.weight"][None],
        "patch_embed.proj.weight": sd["embeddings.patch_embedding.weight"],
        "patch_embed.proj.bias": sd["embeddings.patch_embedding.bias"],
        "norm.weight": sd["post_layernorm.weight"],
        "norm.bias": sd["post_layernorm.bias"],
        "attn_pool.latent": np.zeros((1, 1, 32), np.float32),
    }
    for i in range(2):
        src, dst = f"encoder.layers.{i}.", f"blocks.{i}."
        for leaf in ("weight", "bias"):
            timm_sd[f"{dst}attn.qkv.{leaf}"] = np.concatenate(
                [sd[f"{src}self_attn.{n}_proj.{leaf}"] for n in "qkv"]
            )
            for a, b in (
                ("self_attn.out_proj", "attn.proj"),
                ("layer_norm1", "norm1"),
                ("layer_norm2", "norm2"),
                ("mlp.fc1", "mlp.fc1"),
                ("mlp.fc2", "mlp.fc2"),
            ):
                timm_sd[f"{dst}{b}.{leaf}"] = sd[f"{src}{a}.{leaf}"]
    save_state_dict(timm_sd, tmp_path / "siglip.safetensors")
    bb = convert.load_timm(tmp_path / "siglip.safetensors", "timm_siglip", num_heads=2)
    assert bb.num_prefix == 0 and bb.grid == (4, 4)
    pixels = bb.preprocess(images())
    assert (
        max_diff(bb.apply(bb.params, pixels, bb.layers), bb.layers, torch_states(model, pixels))
        < TOL
    )


# --- layer continuation ------------------------------------------------------------------------
def test_continue_from_a_layer_equals_the_full_pass(vision_model, tmp_path):
    family, model, _ = vision_model
    model.save_pretrained(tmp_path)
    bb = convert.load_hf_vision(tmp_path)
    pixels = bb.preprocess(images())
    full = bb.apply(bb.params, pixels, bb.layers)
    states, last = bb.forward.continue_from(bb.params, full["1"], 1)
    assert len(states) == 1
    np.testing.assert_allclose(states[0], full["2"], atol=1e-5)
    np.testing.assert_allclose(last, full["final"], atol=1e-5)
    run = jax.jit(bb.forward.run_blocks, static_argnums=(2, 3))
    np.testing.assert_allclose(run(bb.params, full["0"], 0, 2), full["2"], atol=1e-5)
    np.testing.assert_allclose(run(bb.params, full["1"], 1, 1), full["1"])
    edited = full["1"].at[:, bb.num_prefix :].add(1.0)
    assert float(jnp.abs(run(bb.params, edited, 1, 2) - full["2"]).max()) > 1e-3
    with pytest.raises(ValueError, match="start <= stop"):
        bb.forward.run_blocks(bb.params, full["1"], 2, 1)


def test_text_continuation_needs_and_uses_the_mask(tmp_path):
    torch.manual_seed(0)
    TEXT["bert"]().eval().save_pretrained(tmp_path)
    bb = convert.load_hf_text(tmp_path, with_tokenizer=False)
    tokens = token_batch()
    full = bb.apply(bb.params, tokens, bb.layers)
    mask = tokens["attention_mask"]
    after = bb.forward.run_blocks(bb.params, full["0"], 0, 2, mask)
    np.testing.assert_allclose(after[mask > 0], np.asarray(full["2"])[mask > 0], atol=1e-5)
    with pytest.raises(ValueError, match="attention mask"):
        bb.forward.run_blocks(bb.params, full["0"], 0, 2)


# --- converter errors and config tables ----------------------------------------------------------
def test_unexpected_and_missing_keys_are_named(tmp_path):
    torch.manual_seed(0)
    model = tf.ViTModel(tf.ViTConfig(**TINY, image_size=32, patch_size=8))
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    cfg = families.vision_config(model.config.to_dict(), families.HF_FAMILIES["vit"])
    family = families.HF_FAMILIES["vit"]
    apply, params = convert.load_params(cfg, sd, family.keys, family.ignore)
    assert jax.tree.structure(params) == jax.tree.structure(tr.abstract(cfg)[1])
    bad = dict(sd, **{"encoder.layer.0.extra.weight": np.zeros(3, np.float32)})
    del bad["layernorm.bias"]
    with pytest.raises(ValueError, match=r"encoder\.layer\.0\.extra\.weight.*final_norm\.bias"):
        convert.load_params(cfg, bad, family.keys, family.ignore)
    twice = dict(sd, **{"vit.layernorm.bias": sd["layernorm.bias"]})
    with pytest.raises(ValueError, match=r"two checkpoint keys map onto final_norm\.bias"):
        convert.load_params(cfg, twice, family.keys, family.ignore, family.prefixes)
    wrong = dict(sd, **{"layernorm.bias": np.zeros(5, np.float32)})
    with pytest.raises(ValueError, match=r"final_norm\.bias: checkpoint shape \(5,\)"):
        convert.load_params(cfg, wrong, family.keys, family.ignore)


def test_unknown_model_type_and_missing_files(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="gpt2"):
        convert.load_hf_vision(tmp_path)
    with pytest.raises(FileNotFoundError, match="config.json"):
        convert.load_hf_text(tmp_path / "nowhere")
    tf.BertConfig(**TINY).save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        convert.load_hf_text(tmp_path)


@pytest.mark.parametrize("model_type", sorted(families.HF_FAMILIES))
def test_family_defaults_are_transformers_defaults(model_type):
    """Fields a config.json may omit default to what transformers would use."""
    config_cls = tf.AutoConfig.for_model(model_type).__class__
    ref = config_cls().to_dict()
    for field, value in families.HF_FAMILIES[model_type].defaults.items():
        assert ref[field] == value, (model_type, field)


def test_configs_validate():
    block = tr.BlockConfig(width=32, heads=2, mlp_width=64)
    with pytest.raises(ValueError, match="multiple of heads"):
        tr.BlockConfig(width=30, heads=4, mlp_width=64)
    with pytest.raises(ValueError, match="activation"):
        tr.BlockConfig(width=32, heads=2, mlp_width=64, activation="swish")
    with pytest.raises(ValueError, match="pre-norm"):
        tr.BlockConfig(width=32, heads=2, mlp_width=64, layer_scale=True, norm_first=False)
    with pytest.raises(ValueError, match="interpolation is 'none'"):
        tr.VisionConfig(block=block, num_layers=1, image_size=32, patch_size=8, position_grid=5)
    with pytest.raises(ValueError, match="multiple"):
        tr.VisionConfig(block=block, num_layers=1, image_size=30, patch_size=8)
    with pytest.raises(ValueError, match="position_offset"):
        tr.TextConfig(block=block, num_layers=1, vocab_size=9, max_positions=4, position_offset=4)
    apply, params = tr.split(
        tr.build(tr.VisionConfig(block=block, num_layers=1, image_size=16, patch_size=8))
    )
    with pytest.raises(ValueError, match="pixels must be"):
        apply(params, jnp.zeros((1, 24, 24, 3)))


@pytest.mark.parametrize("offset", [0.0, 0.1])
def test_position_table_resized_once_at_load_equals_the_run_time_resize(offset):
    """``convert.vision_backbone`` stores the table resized to the token grid; the model then adds
    it as is, and computes what the model resizing in every forward pass computes."""
    block = tr.BlockConfig(width=16, heads=2, mlp_width=32)
    cfg = tr.VisionConfig(
        block=block,
        num_layers=2,
        image_size=32,
        patch_size=8,
        position_grid=7,
        interpolation="bicubic",
        interpolation_offset=offset,
    )
    apply, params = tr.split(tr.build(cfg, seed=3))
    bb = convert.vision_backbone("dinov2", cfg, apply, params, {}, ((0.5,) * 3, (0.25,) * 3))
    assert bb.params["position"].shape == (1, 1 + 4 * 4, 16)
    assert params["position"].shape == (1, 1 + 7 * 7, 16)  # the caller's dict is untouched
    pixels = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)), jnp.float32)
    states, last = bb.forward(bb.params, pixels)
    want_states, want_last = apply(params, pixels)
    np.testing.assert_allclose(last, want_last, rtol=1e-5, atol=1e-5)
    for got, want in zip(states, want_states, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_tokenizer_from_a_vocab_file(tmp_path):
    """A folder with only a BERT vocab.txt tokenizes like transformers' BertTokenizer."""
    words = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        "a",
        "cat",
        "sat",
        "on",
        "the",
        "mat",
        "##s",
        ".",
    ]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"pad_token": "[PAD]"}))
    ours = tokenizer.load_tokenizer(tmp_path)
    ref = tf.BertTokenizer(str(tmp_path / "vocab.txt"))
    texts = ["A cat sat on the mats.", "The cat sat on a mat on a mat on a mat."]
    got = ours(texts, padding="max_length", truncation=True, max_length=10)
    want = ref(texts, padding="max_length", truncation=True, max_length=10)
    np.testing.assert_array_equal(got["input_ids"], want["input_ids"])
    np.testing.assert_array_equal(got["attention_mask"], want["attention_mask"])
    assert len(ours) == len(words)
    with pytest.raises(ValueError, match="padding"):
        ours(texts, padding="do_not_pad")


def test_text_registry_names_its_specs():
    with pytest.raises(ValueError, match="e5_small"):
        registry.load_text_backbone("e6_small")
