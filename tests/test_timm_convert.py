"""timm / torch.hub key-name converters.

timm cannot be imported here without torchvision (which pip would pull as a CUDA build), so the
timm/hub-named state dicts are built by renaming a tiny transformers model's keys into timm /
facebookresearch-dinov2 naming (fusing q, k, v into ``qkv`` as timm does); our converter must
undo that and reproduce the transformers model's hidden states.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import transformers as tf  # noqa: E402

from usae_jax.backbones import timm  # noqa: E402

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def to_timm(sd, block, names, norms, mlp, extra):
    """HF-named numpy state dict -> timm-named; ``block`` is the HF prefix of block i."""
    out = {new: sd[old] for new, old in extra.items()}
    i = 0
    while f"{block.format(i)}{norms[0]}.weight" in sd:
        src, dst = block.format(i), f"blocks.{i}."
        for leaf in ("weight", "bias"):
            out[f"{dst}attn.qkv.{leaf}"] = np.concatenate(
                [sd[f"{src}{n}.{leaf}"] for n in names[:3]]
            )
            out[f"{dst}attn.proj.{leaf}"] = sd[f"{src}{names[3]}.{leaf}"]
            out[f"{dst}norm1.{leaf}"] = sd[f"{src}{norms[0]}.{leaf}"]
            out[f"{dst}norm2.{leaf}"] = sd[f"{src}{norms[1]}.{leaf}"]
            out[f"{dst}mlp.fc1.{leaf}"] = sd[f"{src}{mlp[0]}.{leaf}"]
            out[f"{dst}mlp.fc2.{leaf}"] = sd[f"{src}{mlp[1]}.{leaf}"]
        if f"{src}layer_scale1.lambda1" in sd:
            out[f"{dst}ls1.gamma"] = sd[f"{src}layer_scale1.lambda1"]
            out[f"{dst}ls2.gamma"] = sd[f"{src}layer_scale2.lambda1"]
        i += 1
    return out


ATTN = "attention.attention."
HF_ATTN = (ATTN + "query", ATTN + "key", ATTN + "value", "attention.output.dense")
PATCH = {"patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
         "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
         "norm.weight": "layernorm.weight", "norm.bias": "layernorm.bias"}  # fmt: skip


def numpy_sd(model):
    return {k: v.numpy().copy() for k, v in model.state_dict().items()}


def save(sd, path):
    if str(path).endswith(".safetensors"):
        from safetensors.numpy import save_file

        save_file(sd, str(path))
    else:
        torch.save({"model": {k: torch.tensor(v) for k, v in sd.items()}}, path)


def compare(bb, model, size):
    pixels = bb.preprocess(np.random.default_rng(0).integers(0, 256, (2, size, size, 3), np.uint8))
    ours = bb.apply(bb.params, pixels, bb.layers)
    with torch.no_grad():
        out = model(torch.tensor(np.asarray(pixels)).permute(0, 3, 1, 2), output_hidden_states=True)
    refs = [h.numpy() for h in out.hidden_states] + [out.last_hidden_state.numpy()]
    return max(
        float(np.abs(np.asarray(ours[n]) - r).max()) for n, r in zip(bb.layers, refs, strict=True)
    )


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_timm_vit(tmp_path, suffix):
    torch.manual_seed(0)
    model = tf.ViTModel(tf.ViTConfig(**TINY, image_size=32, patch_size=8, layer_norm_eps=1e-6))
    sd = numpy_sd(model.eval())
    extra = {"cls_token": "embeddings.cls_token", "pos_embed": "embeddings.position_embeddings",
             **PATCH}  # fmt: skip
    timm_sd = to_timm(sd, "encoder.layer.{}.", HF_ATTN, ("layernorm_before", "layernorm_after"),
                      ("intermediate.dense", "output.dense"), extra)  # fmt: skip
    timm_sd["head.weight"] = np.zeros((10, 32), np.float32)  # classifier: ignored
    save(timm_sd, tmp_path / f"vit{suffix}")
    bb = timm.load_timm_vit(tmp_path / f"vit{suffix}", num_heads=2)
    assert bb.grid == (4, 4) and bb.identity["format"] == "timm_vit"
    assert compare(bb, model, 32) < 2e-5


def test_hub_dinov2_at_other_resolution(tmp_path):
    torch.manual_seed(0)
    model = tf.Dinov2Model(tf.Dinov2Config(**TINY, image_size=56, patch_size=8)).eval()
    sd = numpy_sd(model)
    extra = {"cls_token": "embeddings.cls_token", "pos_embed": "embeddings.position_embeddings",
             "mask_token": "embeddings.mask_token", **PATCH}  # fmt: skip
    hub_sd = to_timm(sd, "encoder.layer.{}.", HF_ATTN, ("norm1", "norm2"), ("mlp.fc1", "mlp.fc2"),
                     extra)  # fmt: skip
    save(hub_sd, tmp_path / "dinov2_vits14_pretrain.pth")
    bb = timm.load_hub_dinov2(tmp_path / "dinov2_vits14_pretrain.pth", num_heads=2, image_size=40)
    assert bb.grid == (5, 5)
    assert compare(bb, model, 40) < 2e-5  # torch interpolates its 7x7 table at run time


def test_timm_siglip(tmp_path):
    torch.manual_seed(0)
    model = tf.SiglipVisionModel(tf.SiglipVisionConfig(**TINY, image_size=32, patch_size=8))
    sd = numpy_sd(model.eval())
    v = "vision_model."
    extra = {"patch_embed.proj.weight": v + "embeddings.patch_embedding.weight",
             "patch_embed.proj.bias": v + "embeddings.patch_embedding.bias",
             "norm.weight": v + "post_layernorm.weight",
             "norm.bias": v + "post_layernorm.bias"}  # fmt: skip
    attn = tuple(f"self_attn.{n}_proj" for n in ("q", "k", "v", "out"))
    timm_sd = to_timm(sd, v + "encoder.layers.{}.", attn, ("layer_norm1", "layer_norm2"),
                      ("mlp.fc1", "mlp.fc2"), extra)  # fmt: skip
    timm_sd["pos_embed"] = sd[v + "embeddings.position_embedding.weight"][None]
    timm_sd["attn_pool.latent"] = np.zeros((1, 1, 32), np.float32)  # MAP head: ignored
    save(timm_sd, tmp_path / "siglip.safetensors")
    bb = timm.load_timm_siglip(tmp_path / "siglip.safetensors", num_heads=2)
    assert bb.num_prefix == 0 and bb.grid == (4, 4)
    assert compare(bb, model, 32) < 2e-5


def test_missing_checkpoint_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="dinov2_vits14_pretrain.pth"):
        timm.load_hub_dinov2(tmp_path / "dinov2_vits14_pretrain.pth")
