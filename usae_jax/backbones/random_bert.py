"""A randomly initialised (NOT pretrained) BERT: the control stream of the text experiments.

The weights are drawn exactly as transformers 4's ``FlaxBertModel(config, seed=seed)`` drew
them (so runs recorded with it reproduce): every Dense kernel and embedding table from
``normal(initializer_range)``, biases zero, LayerNorms one / zero, each parameter's random key
derived by Flax linen from its module path. :func:`bert_init_params` rebuilds that module tree
with linen (init only, no forward pass) and the BERT key table maps it onto our
:class:`~usae_jax.backbones.text_transformer.TextTransformer`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict

from usae_jax.backbones import base, convert
from usae_jax.backbones import transformer as tr
from usae_jax.backbones.key_tables import HF_BERT_KEYS

INITIALIZER_RANGE = 0.02
"""Standard deviation of BERT's initial kernels and embeddings (transformers' default)."""
MAX_POSITIONS = 512
"""Rows of the position table (transformers' ``BertConfig`` default)."""


class _Init(nn.Module):
    """Creates parameters under the module names of transformers' ``FlaxBertModule``.

    ``spec`` is ``((name, child), ...)`` where ``child`` is ``("dense", in, out)``,
    ``("embed", rows, width)``, ``("norm", width)`` or a nested spec.
    """

    spec: tuple

    @nn.compact
    def __call__(self):
        normal = jax.nn.initializers.normal(INITIALIZER_RANGE)
        for name, child in self.spec:
            if child[0] == "dense":
                nn.Dense(child[2], kernel_init=normal, name=name)(jnp.zeros((1, child[1])))
            elif child[0] == "embed":
                nn.Embed(child[1], child[2], embedding_init=normal, name=name)(jnp.zeros(1, int))
            elif child[0] == "norm":
                nn.LayerNorm(name=name)(jnp.zeros((1, child[1])))
            else:
                _Init(child, name=name)()


def _spec(vocab: int, hidden: int, layers: int) -> tuple:
    def dense(n_in, n_out):
        return ("dense", n_in, n_out)

    layer = (
        (
            "attention",
            (
                ("self", tuple((n, dense(hidden, hidden)) for n in ("query", "key", "value"))),
                ("output", (("dense", dense(hidden, hidden)), ("LayerNorm", ("norm", hidden)))),
            ),
        ),
        ("intermediate", (("dense", dense(hidden, 4 * hidden)),)),
        ("output", (("dense", dense(4 * hidden, hidden)), ("LayerNorm", ("norm", hidden)))),
    )
    embeddings = (
        ("word_embeddings", ("embed", vocab, hidden)),
        ("position_embeddings", ("embed", MAX_POSITIONS, hidden)),
        ("token_type_embeddings", ("embed", 2, hidden)),
        ("LayerNorm", ("norm", hidden)),
    )
    encoder = (("layer", tuple((str(i), layer) for i in range(layers))),)
    return (("embeddings", embeddings), ("encoder", encoder))


def bert_init_params(vocab: int, hidden: int, layers: int, seed: int) -> dict[str, np.ndarray]:
    """transformers 4's ``FlaxBertModel`` initial weights as a torch-named state dict.

    Returns:
      ``{"embeddings.word_embeddings.weight": [vocab, hidden], ...,
      "encoder.layer.{i}.output.dense.weight": [hidden, 4 * hidden], ...}`` (float32, torch
      layout: Linear weights ``[out, in]``).
    """
    params_key, _ = jax.random.split(jax.random.PRNGKey(seed))  # as FlaxBertModel.init_weights
    params = _Init(_spec(vocab, hidden, layers)).init({"params": params_key})["params"]
    out = {}
    for path, value in flatten_dict(params).items():
        *module, leaf = path
        value = np.asarray(value, np.float32)
        if leaf == "kernel":
            value = value.T
        name = {"kernel": "weight", "embedding": "weight", "scale": "weight"}.get(leaf, leaf)
        out[".".join((*module, name))] = value
    return out


def random_bert(
    tokenizer_from: base.TextBackbone, hidden: int = 256, layers: int = 4, seed: int = 0
) -> base.TextBackbone:
    """A randomly initialised (NOT pretrained) BERT sharing ``tokenizer_from``'s tokenizer.

    A control stream: a different network on the same sentences and the same token ids
    (``hidden / 64`` heads, MLP width ``4 * hidden``, GELU, LayerNorm eps 1e-12).
    """
    if tokenizer_from.tokenizer is None:
        raise ValueError(f"backbone {tokenizer_from.name!r} has no tokenizer to share")
    if hidden < 1 or layers < 1:
        raise ValueError(f"hidden and layers must be positive, got {hidden}, {layers}")
    vocab = len(tokenizer_from.tokenizer)
    block = tr.BlockConfig(
        width=hidden,
        heads=max(1, hidden // 64),
        mlp_width=4 * hidden,
        activation="gelu",
        norm_first=False,
        eps=1e-12,
    )
    cfg = tr.TextConfig(
        block=block,
        num_layers=layers,
        vocab_size=vocab,
        max_positions=MAX_POSITIONS,
        type_vocab_size=2,
    )
    apply, params = convert.load_params(
        cfg, bert_init_params(vocab, hidden, layers, seed), HF_BERT_KEYS
    )
    ident = {"family": "bert", "weights": f"random init (seed {seed}), not pretrained"}
    return convert.text_backbone("bert", cfg, apply, params, ident, tokenizer_from.tokenizer)
