"""Key tables: how checkpoint keys map onto the parameters of our transformers (data).

A key table is an ordered tuple of ``(regex, target)`` rules. A rule first tries to match the
whole key (then ``target`` names a parameter, e.g. ``embeddings.cls_token -> cls``), else the key
without its last part (then ``target`` names a module and the last part is translated by what the
module holds: a Linear ``weight`` becomes the transposed ``kernel``, a conv ``weight`` the
``[kh, kw, in, out]`` kernel, a LayerNorm ``weight``/``gamma`` its ``scale``, an embedding
``weight`` its ``embedding``). A tuple target splits the tensor along its first axis (timm's
fused ``qkv``). ``{0}``, ``{1}`` in targets are the rule's regex groups. The converter that reads
them is :func:`usae_jax.backbones.convert.convert_state_dict`.
"""

from __future__ import annotations

Rule = tuple[str, str | tuple[str, ...]]
LEAVES = {
    "weight": "weight",
    "gamma": "weight",
    "w": "weight",
    "bias": "bias",
    "beta": "bias",
    "b": "bias",
}
BUFFERS = (r".*position_ids", r".*num_batches_tracked", r"(.*\.)?token_type_ids")

# ------------------------------------------------------------------ key tables (data)
QKV = ("blocks.{0}.attn.query", "blocks.{0}.attn.key", "blocks.{0}.attn.value")
HF_VIT_KEYS: tuple[Rule, ...] = (
    (r"embeddings\.cls_token", "cls"),
    (r"embeddings\.position_embeddings", "position"),
    (r"embeddings\.patch_embeddings\.projection", "patch"),
    (r"encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)", "blocks.{0}.attn.{1}"),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense", "blocks.{0}.attn.out"),
    (r"encoder\.layer\.(\d+)\.layernorm_before", "blocks.{0}.norm1"),
    (r"encoder\.layer\.(\d+)\.layernorm_after", "blocks.{0}.norm2"),
    (r"encoder\.layer\.(\d+)\.intermediate\.dense", "blocks.{0}.mlp.fc1"),
    (r"encoder\.layer\.(\d+)\.output\.dense", "blocks.{0}.mlp.fc2"),
    (r"layernorm", "final_norm"),
    # transformers 5 names (written with ``save_pretrained(save_original_format=False)``)
    (r"layers\.(\d+)\.attention\.q_proj", "blocks.{0}.attn.query"),
    (r"layers\.(\d+)\.attention\.k_proj", "blocks.{0}.attn.key"),
    (r"layers\.(\d+)\.attention\.v_proj", "blocks.{0}.attn.value"),
    (r"layers\.(\d+)\.attention\.o_proj", "blocks.{0}.attn.out"),
    (r"layers\.(\d+)\.layernorm_before", "blocks.{0}.norm1"),
    (r"layers\.(\d+)\.layernorm_after", "blocks.{0}.norm2"),
    (r"layers\.(\d+)\.mlp\.(fc[12])", "blocks.{0}.mlp.{1}"),
)
HF_DINOV2_KEYS: tuple[Rule, ...] = (
    (r"embeddings\.cls_token", "cls"),
    (r"embeddings\.register_tokens", "registers"),
    (r"embeddings\.position_embeddings", "position"),
    (r"embeddings\.patch_embeddings\.projection", "patch"),
    (r"encoder\.layer\.(\d+)\.norm([12])", "blocks.{0}.norm{1}"),
    (r"encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)", "blocks.{0}.attn.{1}"),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense", "blocks.{0}.attn.out"),
    (r"encoder\.layer\.(\d+)\.layer_scale([12])\.lambda1", "blocks.{0}.ls{1}.gamma"),
    (r"encoder\.layer\.(\d+)\.mlp\.(fc[12])", "blocks.{0}.mlp.{1}"),
    (r"layernorm", "final_norm"),
)
CLIP_LAYER_KEYS: tuple[Rule, ...] = (
    (r"encoder\.layers\.(\d+)\.self_attn\.q_proj", "blocks.{0}.attn.query"),
    (r"encoder\.layers\.(\d+)\.self_attn\.k_proj", "blocks.{0}.attn.key"),
    (r"encoder\.layers\.(\d+)\.self_attn\.v_proj", "blocks.{0}.attn.value"),
    (r"encoder\.layers\.(\d+)\.self_attn\.out_proj", "blocks.{0}.attn.out"),
    (r"encoder\.layers\.(\d+)\.layer_norm([12])", "blocks.{0}.norm{1}"),
    (r"encoder\.layers\.(\d+)\.mlp\.(fc[12])", "blocks.{0}.mlp.{1}"),
)
HF_CLIP_VISION_KEYS: tuple[Rule, ...] = (
    (r"embeddings\.class_embedding", "cls"),
    (r"embeddings\.position_embedding\.weight", "position"),
    (r"embeddings\.patch_embedding", "patch"),
    (r"pre_layrnorm", "pre_norm"),
    *CLIP_LAYER_KEYS,
)
HF_SIGLIP_KEYS: tuple[Rule, ...] = (
    (r"embeddings\.position_embedding\.weight", "position"),
    (r"embeddings\.patch_embedding", "patch"),
    (r"post_layernorm", "final_norm"),
    *CLIP_LAYER_KEYS,
)
HF_BERT_KEYS: tuple[Rule, ...] = (
    (r"embeddings\.word_embeddings", "word"),
    (r"embeddings\.position_embeddings", "position"),
    (r"embeddings\.token_type_embeddings", "token_type"),
    (r"embeddings\.LayerNorm", "embed_norm"),
    (r"encoder\.layer\.(\d+)\.attention\.self\.(query|key|value)", "blocks.{0}.attn.{1}"),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense", "blocks.{0}.attn.out"),
    (r"encoder\.layer\.(\d+)\.attention\.output\.LayerNorm", "blocks.{0}.norm1"),
    (r"encoder\.layer\.(\d+)\.intermediate\.dense", "blocks.{0}.mlp.fc1"),
    (r"encoder\.layer\.(\d+)\.output\.dense", "blocks.{0}.mlp.fc2"),
    (r"encoder\.layer\.(\d+)\.output\.LayerNorm", "blocks.{0}.norm2"),
)
HF_CLIP_TEXT_KEYS: tuple[Rule, ...] = (
    (r"embeddings\.token_embedding", "word"),
    (r"embeddings\.position_embedding", "position"),
    (r"final_layer_norm", "final_norm"),
    *CLIP_LAYER_KEYS,
)
# timm ViT / SigLIP and facebookresearch torch.hub DINOv2 share one naming.
TIMM_KEYS: tuple[Rule, ...] = (
    (r"cls_token", "cls"),
    (r"register_tokens", "registers"),
    (r"pos_embed", "position"),
    (r"patch_embed\.proj", "patch"),
    (r"blocks\.(\d+)\.norm([12])", "blocks.{0}.norm{1}"),
    (r"blocks\.(\d+)\.attn\.qkv", QKV),
    (r"blocks\.(\d+)\.attn\.proj", "blocks.{0}.attn.out"),
    (r"blocks\.(\d+)\.ls([12])\.gamma", "blocks.{0}.ls{1}.gamma"),
    (r"blocks\.(\d+)\.mlp\.(fc[12])", "blocks.{0}.mlp.{1}"),
    (r"norm", "final_norm"),
)
TIMM_IGNORE = (r"head\..*", r"fc_norm\..*", r"attn_pool\..*", r"mask_token")
