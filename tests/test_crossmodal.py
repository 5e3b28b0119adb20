"""Cross-modal SPARC: image + caption streams in one paired store, then a global-TopK USAE.

No pretrained CLIP ships offline, so the towers are tiny *random* transformers: a CLIP vision
model and a BERT text model (with a WordPiece vocabulary built from the captions), each written
with ``save_pretrained`` and read back by ``load_hf_vision`` / ``load_hf_text``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import transformers as tf  # noqa: E402

from usae_jax.backbones.convert import load_hf_text, load_hf_vision  # noqa: E402
from usae_jax.data import crossmodal as xm  # noqa: E402
from usae_jax.data.store import Store, StoreError, StoreWriter  # noqa: E402
from usae_jax.data.text import TextStream  # noqa: E402

TINY = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
CAPTIONS = (
    "a red square on a dark background",
    "a bright striped pattern",
    "a blue circle in the middle",
    "a noisy grey texture",
    "a green field under a blue sky",
    "two dark stripes on white",
    "a small yellow dot",
    "a bright red circle on green",
)


@pytest.fixture(scope="module")
def towers(tmp_path_factory):
    base = tmp_path_factory.mktemp("towers")
    torch.manual_seed(0)
    tf.CLIPVisionModel(tf.CLIPVisionConfig(**TINY, image_size=32, patch_size=8)).save_pretrained(
        base / "clip_vision"
    )
    words = sorted({w for c in CAPTIONS for w in c.split()})
    vocab = base / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    tokenizer = tf.BertTokenizer(str(vocab))
    config = tf.BertConfig(**TINY, vocab_size=len(tokenizer), max_position_embeddings=32)
    tf.BertModel(config).save_pretrained(base / "bert")
    tokenizer.save_pretrained(base / "bert")
    vision, text = load_hf_vision(base / "clip_vision"), load_hf_text(base / "bert")
    image_streams = (
        xm.ImageStream(name="clip_cls", backbone=vision, layer="final", pooling="cls"),
        xm.ImageStream(name="clip_l1_mean", backbone=vision, layer="1", pooling="mean"),
    )
    text_streams = (
        TextStream(name="bert_mean", backbone=text, layer="final", pooling="mean"),
        TextStream(name="bert_l1_cls", backbone=text, layer="1", pooling="first"),
    )
    rng = np.random.default_rng(0)
    pictures = [rng.integers(0, 256, (24 + 8 * i, 40, 3), dtype=np.uint8) for i in range(4)]
    items = [
        xm.CaptionedItem(
            item_id=f"img{i // 2}/c{i % 2}",
            image_id=f"img{i // 2}",
            caption=caption,
            image=pictures[i // 2],
        )
        for i, caption in enumerate(CAPTIONS)
    ]
    return image_streams, text_streams, items


def _extract(towers, directory, **kwargs):
    image_streams, text_streams, items = towers
    return xm.extract_paired_store(
        image_streams, text_streams, items, directory, image_size=32, batch_size=3, **kwargs
    )


def test_paired_store_rows_match_single_item_forward(towers, tmp_path):
    image_streams, text_streams, items = towers
    store = _extract(towers, tmp_path / "store", max_length=12)
    assert store.names == ("clip_cls", "clip_l1_mean", "bert_mean", "bert_l1_cls")
    assert store.widths == (16, 16, 16, 16) and store.num_rows == len(items)
    assert store.manifest["image_ids"] == [item.item_id for item in items]
    assert len(store.manifest["shards"]) == 3  # batches of 3 items: 3 + 3 + 2
    streams = store.manifest["meta"]["streams"]
    assert streams["clip_l1_mean"] == {
        "modality": "image",
        "backbone": "clip",
        "layer": "1",
        "pooling": "mean",
    }
    assert streams["bert_l1_cls"] == {
        "modality": "text",
        "backbone": "bert",
        "layer": "1",
        "pooling": "first",
    }
    vision, text = image_streams[0].backbone, text_streams[0].backbone
    for r in (0, 4, 7):  # first chunk, middle chunk, last (short) chunk
        pixels = xm.images_lib.resize_crop(items[r].load(), 32, crop=1.0)[None]
        hidden = vision.apply(vision.params, vision.preprocess(pixels), ("final", "1"))
        expected = {
            "clip_cls": np.asarray(hidden["final"])[0, 0],
            "clip_l1_mean": np.asarray(hidden["1"])[0, vision.num_prefix :].mean(0),
        }
        tokens = text.tokenize([items[r].caption], max_length=12)
        for stream in text_streams:
            out = text.apply(text.params, tokens, (stream.layer,), pooling=stream.pooling)
            expected[stream.name] = np.asarray(out[stream.layer])[0, 0]
        for name, want in expected.items():
            np.testing.assert_allclose(store.array(name)[r], want, rtol=1e-4, atol=1e-5)
    # both captions of one image share the image rows, not the text rows
    np.testing.assert_array_equal(store.array("clip_cls")[2], store.array("clip_cls")[3])
    assert not np.allclose(store.array("bert_mean")[2], store.array("bert_mean")[3])


def test_paired_store_resumes_and_rejects_other_items(towers, tmp_path, monkeypatch):
    full = _extract(towers, tmp_path / "full")
    append, calls = StoreWriter.append, []

    def crash_on_second(self, *args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated crash")
        append(self, *args)

    monkeypatch.setattr(StoreWriter, "append", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        _extract(towers, tmp_path / "resumed")
    monkeypatch.setattr(StoreWriter, "append", append)
    assert Store(tmp_path / "resumed", require_complete=False).num_rows == 3
    resumed = _extract(towers, tmp_path / "resumed")
    for name in full.names:
        np.testing.assert_array_equal(resumed.array(name), full.array(name))
    assert resumed.manifest["models"] == full.manifest["models"]
    image_streams, text_streams, items = towers
    with pytest.raises(StoreError, match="other meta"):
        xm.extract_paired_store(
            image_streams, text_streams, items[::-1], tmp_path / "full", image_size=32
        )
    with pytest.raises(ValueError, match="pooled"):
        xm.extract_paired_store(
            image_streams,
            [TextStream(name="tok", backbone=text_streams[0].backbone, pooling=None)],
            items,
            tmp_path / "x",
        )
    with pytest.raises(ValueError, match="pooling"):
        xm.ImageStream(name="bad", backbone=image_streams[0].backbone, pooling="max")


def test_sparc_global_topk_trains_and_aligns_on_paired_store(towers, tmp_path):
    from usae_jax.analysis.sparc.alignment import alignment_report, stream_codes
    from usae_jax.config import OptimConfig, TrainConfig, USAEConfig
    from usae_jax.data.loader import StoreSource
    from usae_jax.model.params import init_params
    from usae_jax.model.sparc import encode_streams
    from usae_jax.train.loop import train
    from usae_jax.train.sparc_step import sparc_loss_matrix

    store = _extract(towers, tmp_path / "store")
    source = StoreSource(store)
    usae = USAEConfig(
        model_names=source.names,
        widths=source.widths,
        num_concepts=16,
        top_k=3,
        architecture="sparc",
        sparsity="global_topk",
        loss="l2_auxk",
        aux="dead_latents",
        aux_coefficient=1 / 32,
        dead_k_aux=4,
    )
    config = TrainConfig(
        usae=usae,
        optim=OptimConfig(learning_rate=1e-2, final_lr=1e-2, warmup_steps=0),
        batch_rows=8,
        num_steps=100,
        log_every=50,
        checkpoint_every=100,
        eval_rows=8,
        progress_bar=False,
    )
    result = train(config, tmp_path / "run", source)
    r2 = np.asarray(result.final_metrics["r2"])
    assert r2.shape == (4, 4) and np.isfinite(r2).all()
    params = jax.device_get(result.state.params)
    batch = source.rows(np.arange(source.num_rows))
    encoded = encode_streams(usae, params["models"], batch)  # the model's rule: global TopK
    first = np.sort(np.asarray(encoded["clip_cls"].top_indices), axis=1)
    assert first.shape == (8, 3)
    for name, enc in encoded.items():  # identical supports across image and text streams
        np.testing.assert_array_equal(np.sort(np.asarray(enc.top_indices), axis=1), first)
        support = np.zeros((8, 16), bool)
        np.put_along_axis(support, first, True, axis=1)
        assert not ((np.asarray(enc.codes) != 0) & ~support).any(), name
    codes = stream_codes(usae, params, batch, "global_topk")
    assert all(c.shape == (8, 16) and np.isfinite(c).all() for c in codes.values())
    report = alignment_report(usae, params, batch)
    shared, fair = report["shared_support"], report["per_stream"]
    assert shared["items"] == fair["items"] == 8 and len(fair["pairs"]) == 6
    for section in (shared, fair):
        assert 0 <= section["jaccard"] <= 1 and 0 <= section["recall@1"] <= 1
        assert 1 <= section["mean_rank"] <= 8
    # Training on the store lowers the SPARC loss of these items (no dead concepts, so no AuxK
    # term) against the same untrained init. Alignment itself is not asserted here: the two
    # random towers carry no pairing signal, so trained per-stream codes are as similar for an
    # image and another picture's caption as for its own (Jaccard 0.425 both);
    # tests/test_sparc.py checks alignment on planted streams.
    untrained, _ = init_params(jax.random.key(config.seed), usae)
    none_dead = {name: jnp.zeros(16, bool) for name in usae.model_names}

    def loss(p):
        encoded = encode_streams(usae, p["models"], batch)
        return float(jnp.sum(sparc_loss_matrix(usae, p["models"], encoded, none_dead, batch)))

    print(
        f"SPARC loss on the store's items: untrained {loss(untrained):.3f}, trained "
        f"{loss(params):.3f}"
    )
    # Measured (100 steps): 16.84 -> 3.63.
    assert loss(params) < 0.5 * loss(untrained)


def test_sample_captioned_items_cover_every_sample_image():
    from usae_jax.data.images import SKIMAGE_NAMES, SKLEARN_NAMES

    items = xm.sample_captioned_items()
    expected = {f"skimage:{n}" for n in SKIMAGE_NAMES} | {f"sklearn:{n}" for n in SKLEARN_NAMES}
    assert {item.image_id for item in items} == expected
    assert len({item.item_id for item in items}) == len(items) == 48
    per_image = [sum(i.image_id == image for i in items) for image in expected]
    assert min(per_image) == 2 and max(per_image) == 3
    assert items[0].caption == "a portrait of an astronaut in a white spacesuit"
    image = items[0].load()
    assert image.dtype == np.uint8 and image.shape == (512, 512, 3)
