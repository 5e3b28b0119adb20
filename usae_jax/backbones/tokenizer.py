"""Tokenizers through the ``tokenizers`` package, called the way backbones call them.

:class:`Tokenizer` wraps a ``tokenizers.Tokenizer`` behind the small part of the transformers
tokenizer interface that :class:`~usae_jax.backbones.base.TextBackbone` uses: called on a list of
texts with ``padding``, ``truncation`` and ``max_length`` it returns ``input_ids`` and
``attention_mask``; ``len()`` is the vocabulary size. :func:`load_tokenizer` reads a local model
folder (``tokenizer.json``, or a BERT ``vocab.txt``); nothing downloads.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tokenizers
from tokenizers.implementations import BertWordPieceTokenizer

from usae_jax.backbones import weights

PADDINGS = ("max_length", "longest")


class Tokenizer:
    """A ``tokenizers.Tokenizer`` with a fixed pad token, an optional text prefix and an
    optional per-character translation applied before it (see :mod:`e5_q4`)."""

    def __init__(
        self,
        tokenizer: tokenizers.Tokenizer,
        pad_id: int,
        prefix: str = "",
        translate: Mapping[int, str] | None = None,
    ):
        """
        Args:
          tokenizer: the ``tokenizers`` object (its own padding/truncation settings are
            replaced on every call).
          pad_id: id written into padding positions (their attention mask is 0).
          prefix: prepended to every text (e5's ``"query: "``).
          translate: ``str.translate`` table applied to ``prefix + text`` first.
        """
        if not 0 <= pad_id < tokenizer.get_vocab_size(with_added_tokens=True):
            raise ValueError(f"pad_id {pad_id} outside the vocabulary")
        self.tokenizer = tokenizer
        self.pad_id = pad_id
        self.prefix = prefix
        self.translate = dict(translate) if translate else None

    def __len__(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def __call__(
        self,
        texts: Sequence[str],
        padding: str = "max_length",
        truncation: bool = True,
        max_length: int = 64,
    ) -> dict[str, np.ndarray]:
        """``{"input_ids", "attention_mask"}``: int32 ``[B, L]`` with ``L = max_length``
        (``padding="max_length"``) or the longest text (``"longest"``, at most ``max_length``
        when truncating). Special tokens (CLS/SEP, ``<s>``/``</s>``) are included."""
        if isinstance(texts, str):
            raise TypeError("pass a list of texts, not one string")
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {max_length}")
        texts = [self.prefix + t for t in texts]
        if self.translate:
            texts = [t.translate(self.translate) for t in texts]
        tok = self.tokenizer
        if truncation:
            tok.enable_truncation(max_length)
        else:
            tok.no_truncation()
        pad_token = tok.id_to_token(self.pad_id)
        if padding == "max_length":
            tok.enable_padding(pad_id=self.pad_id, pad_token=pad_token, length=max_length)
        else:
            tok.enable_padding(pad_id=self.pad_id, pad_token=pad_token)
        encodings = tok.encode_batch(texts)
        return {
            "input_ids": np.asarray([e.ids for e in encodings], np.int32),
            "attention_mask": np.asarray([e.attention_mask for e in encodings], np.int32),
        }


def _token_name(value: Any) -> str | None:
    if isinstance(value, Mapping):
        return value.get("content")
    return value


def _read_json(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def load_tokenizer(directory: str | os.PathLike, prefix: str = "") -> Tokenizer:
    """The tokenizer of a local model folder: ``tokenizer.json`` (any model), else a BERT
    WordPiece ``vocab.txt`` (lower-cased unless ``tokenizer_config.json`` says otherwise).

    The pad token comes from ``tokenizer_config.json`` / ``special_tokens_map.json``, else the
    ``pad_token_id`` of ``config.json``.

    Raises:
      FileNotFoundError: neither file exists (nothing is downloaded).
    """
    directory = os.fspath(directory)
    config = _read_json(os.path.join(directory, "tokenizer_config.json"))
    special = _read_json(os.path.join(directory, "special_tokens_map.json"))
    model_config = _read_json(os.path.join(directory, "config.json"))
    path = os.path.join(directory, "tokenizer.json")
    if os.path.isfile(path):
        tok = tokenizers.Tokenizer.from_file(path)
    elif os.path.isfile(os.path.join(directory, "vocab.txt")):
        vocab = tokenizers.models.WordPiece.read_file(os.path.join(directory, "vocab.txt"))
        tok = BertWordPieceTokenizer(vocab, lowercase=config.get("do_lower_case", True))._tokenizer
    else:
        weights.require_file(path, "tokenizer (tokenizer.json or vocab.txt)")
    name = _token_name(config.get("pad_token")) or _token_name(special.get("pad_token"))
    pad_id = tok.token_to_id(name) if name else None
    if pad_id is None:
        pad_id = model_config.get("pad_token_id")
    if pad_id is None:
        raise ValueError(f"{directory}: no pad token in the tokenizer or model config")
    return Tokenizer(tok, int(pad_id), prefix=prefix)
