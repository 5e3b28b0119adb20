"""Paired text streams: offline sentences, text encoders, and extraction into the store.

A *stream* is one text encoder at one layer with one pooling. Row ``r`` of every stream is the
same item: the same sentence (pooled: one row per sentence) or the same token of it (per token:
one row per non-padding token; only for streams that share a tokenizer, so tokens pair up).
The store (``usae_jax.data.store``) records the pairing: its ``image_ids`` field holds one item
id per row (``"s000017"``, or ``"s000017/t3"`` per token; the store's grid is ``(1,)``), and
``meta["streams"]`` the kind, backbone, layer and pooling of every stream.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Sequence

import jax
import numpy as np

from usae_jax.backbones.base import TextBackbone, pool
from usae_jax.data.source import Standardisation
from usae_jax.data.store import ModelSpec, Store, StoreWriter
from usae_jax.validation import require

_SUBJECTS = (
    "the cat",
    "a dog",
    "my neighbour",
    "the old farmer",
    "a young girl",
    "the chef",
    "the pilot",
    "a tired student",
    "the doctor",
    "a small bird",
    "the teacher",
    "our team",
    "the musician",
    "a stranger",
    "the children",
    "the horse",
    "a robot",
    "the captain",
)
_VERBS = (
    "painted",
    "repaired",
    "carried",
    "found",
    "sold",
    "cooked",
    "watched",
    "followed",
    "cleaned",
    "described",
    "photographed",
    "ignored",
    "borrowed",
    "measured",
    "designed",
)
_OBJECTS = (
    "a red bicycle",
    "the wooden boat",
    "an old map",
    "a bowl of soup",
    "the broken clock",
    "a green umbrella",
    "the heavy piano",
    "a loaf of bread",
    "the blue car",
    "a paper kite",
    "the silver key",
    "a basket of apples",
    "the tall ladder",
    "a warm blanket",
    "the new phone",
)
_PLACES = (
    "in the garden",
    "at the station",
    "near the river",
    "on the mountain",
    "in the kitchen",
    "at the market",
    "by the sea",
    "in the forest",
    "at school",
    "in the city",
    "on the farm",
)
_TIMES = (
    "yesterday",
    "this morning",
    "last winter",
    "at midnight",
    "after lunch",
    "on sunday",
    "before the storm",
    "during the festival",
)
_FEELINGS = ("happy", "sad", "angry", "calm", "nervous", "proud", "confused", "excited")
_WEATHER = ("rain", "snow", "sunshine", "fog", "wind", "thunder")
_TEMPLATES = (
    "{s} {v} {o} {p} {t}.",
    "{t}, {s} {v} {o} {p}.",
    "why has {s} {v} {o} {p}?",
    "{s} felt {f} after the {w} {p}.",
    "{s} was {f} because of the {w} {t}.",
    "nobody knew that {s} {v} {o}.",
)


def template_sentences(count: int, seed: int = 0) -> list[str]:
    """``count`` distinct English sentences from built-in templates (deterministic in ``seed``).

    Offline and dependency-free: subjects, verbs, objects, places, times, feelings and weather
    words fill six templates (about 10^7 combinations), so streams can share topics and roles.
    """
    rng = np.random.default_rng(seed)
    seen: dict[str, None] = {}
    for _ in itertools.count():
        if len(seen) == count:
            break
        words = {
            key: pool[rng.integers(len(pool))]
            for key, pool in (
                ("s", _SUBJECTS),
                ("v", _VERBS),
                ("o", _OBJECTS),
                ("p", _PLACES),
                ("t", _TIMES),
                ("f", _FEELINGS),
                ("w", _WEATHER),
            )
        }
        sentence = _TEMPLATES[rng.integers(len(_TEMPLATES))].format(**words)
        seen.setdefault(sentence[0].upper() + sentence[1:], None)
    return list(seen)


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class TextStream:
    """One stream of a paired text store."""

    name: str
    """Stream (model) name in the store and the SPARC config."""
    backbone: TextBackbone
    """The text encoder; streams holding the same object share one forward pass."""
    layer: str = "final"
    """Layer name (see ``usae_jax.backbones.base``)."""
    pooling: str | None = "mean"
    """``"mean"`` (over the attention mask), ``"first"`` (CLS), ``"last"`` or None (per token)."""

    def __post_init__(self):
        known = self.backbone.layers
        require(self.layer in known, "layer", self.layer, f"stream {self.name!r}: not in {known}")
        require(
            self.pooling in ("mean", "first", "last", None),
            "pooling",
            self.pooling,
            f"stream {self.name!r}: 'mean', 'first', 'last' or None",
        )


def _check_streams(streams: Sequence[TextStream]) -> bool:
    if not streams:
        raise ValueError("need at least one stream")
    per_token = {s.pooling is None for s in streams}
    if len(per_token) != 1:
        raise ValueError("mix of pooled and per-token streams: their rows would not pair up")
    per_token = per_token.pop()
    if per_token and len({id(s.backbone.tokenizer) for s in streams}) != 1:
        raise ValueError("per-token streams must share one tokenizer (tokens must pair up)")
    return per_token


def extract_text_store(
    directory: str | os.PathLike,
    streams: Sequence[TextStream],
    sentences: Sequence[str],
    item_ids: Sequence[str] | None = None,
    batch_size: int = 64,
    max_length: int = 32,
) -> Store:
    """Run every stream over ``sentences`` and write a paired activation store.

    Args:
      directory: store folder (resumes after the last committed chunk of an earlier call).
      streams: the streams; pooled and per-token streams cannot be mixed.
      sentences: the items, in row order.
      item_ids: one id per sentence (default ``s000000``, ``s000001``, ...).
      batch_size: sentences per forward pass and per committed chunk.
      max_length: tokens per sentence (padded, truncated).

    Returns:
      The complete store: stream ``s`` has ``[rows, width_s]``, row ``r`` of every stream the
      same item (``store.manifest["image_ids"][r]``).
    """
    per_token = _check_streams(streams)
    ids = [f"s{i:06d}" for i in range(len(sentences))] if item_ids is None else list(item_ids)
    if len(ids) != len(sentences) or len(set(ids)) != len(ids):
        raise ValueError("item_ids must be unique, one per sentence")
    groups = group_by_backbone(streams)
    meta = {
        "kind": "paired_text",
        "pairing": "row r of every stream is the same item; image_ids[r] is its item id",
        "per_token": per_token,
        "max_length": max_length,
        "batch_size": batch_size,  # chunk boundaries: a resumed extraction must use the same
        "streams": {
            s.name: {"modality": "text", "layer": s.layer, "pooling": s.pooling} for s in streams
        },
    }
    writer = StoreWriter(directory, stream_specs(streams), (1,), meta)
    fns = text_forwards(groups)
    done_items = _items_done(writer.manifest["image_ids"])
    for start in range(0, len(sentences), batch_size):
        batch_ids = ids[start : start + batch_size]
        if start + len(batch_ids) <= done_items:
            continue
        text = list(sentences[start : start + batch_size])
        rows, row_ids = text_rows(groups, fns, text, batch_ids, per_token, max_length)
        writer.append(row_ids, rows)
    return finish_store(writer, [s.name for s in streams])


def group_by_backbone(streams: Sequence) -> dict[int, list]:
    """Streams grouped by backbone object (one forward pass per group), in first-seen order."""
    groups: dict[int, list] = {}
    for stream in streams:
        groups.setdefault(id(stream.backbone), []).append(stream)
    return groups


def stream_specs(streams: Sequence) -> list[ModelSpec]:
    """One store :class:`ModelSpec` per stream (width, layer and backbone identity)."""
    return [
        ModelSpec(
            name=s.name, width=s.backbone.width, layer=s.layer, backbone=dict(s.backbone.identity)
        )
        for s in streams
    ]


def text_forwards(groups: dict[int, list[TextStream]]) -> dict:
    """One jitted ``(params, tokens) -> {layer: [B, T, width]}`` per backbone group."""
    return {
        key: jax.jit(
            lambda params, tokens, bb=group[0].backbone, layers=tuple({s.layer for s in group}): (
                bb.apply(params, tokens, layers)
            )
        )
        for key, group in groups.items()
    }


def text_rows(
    groups: dict[int, list[TextStream]],
    fns: dict,
    text: Sequence[str],
    batch_ids: Sequence[str],
    per_token: bool,
    max_length: int,
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Rows of one batch of sentences: ``({stream: [rows, width]}, row ids)``.

    Pooled: one row per sentence (``rows == len(text)``, ids ``batch_ids``); per token: one row
    per non-padding token (ids ``"<item>/t<token>"``).
    """
    rows, row_ids = {}, list(batch_ids)
    for key, group in groups.items():
        tokens = group[0].backbone.tokenize(text, max_length=max_length)
        hidden = fns[key](group[0].backbone.params, tokens)
        mask = np.asarray(tokens["attention_mask"]) > 0
        for stream in group:
            out = hidden[stream.layer]
            if per_token:
                rows[stream.name] = np.asarray(out)[mask]
                row_ids = [
                    f"{i}/t{t}"
                    for i, m in zip(batch_ids, mask, strict=True)
                    for t in range(int(m.sum()))
                ]
            else:
                rows[stream.name] = np.asarray(pool(out, mask, stream.pooling))[:, 0]
    return rows, row_ids


def finish_store(writer: StoreWriter, names: Sequence[str]) -> Store:
    """Record scalar standardisation over every row (resumed chunks included); mark complete.

    Same formula as everywhere (:class:`~usae_jax.data.source.Standardisation`): unbiased std,
    divided as ``std + 1e-5``; a NaN/Inf row raises ``ValueError`` naming the stream and row.
    """
    store = Store(writer.directory, verify=False, require_complete=False)
    stats = Standardisation.fit({name: store.array(name) for name in names}, max_rows=None)
    writer.finish(stats.mean, stats.std, stats.epsilon)
    return Store(writer.directory)


def _items_done(row_ids: Sequence[str]) -> int:
    """Number of items whose rows are committed (rows of one item are committed together)."""
    return len({row_id.split("/")[0] for row_id in row_ids})
