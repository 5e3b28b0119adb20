"""USAE parameters as explicit pytrees, and their initialisation.

Layout (one entry per model ``m`` of width ``d`` in a space of ``n`` concepts)::

    params = {"models": {m: {"encoder": {"kernel": [d, n], "bias": [n]},
                             "batchnorm": {"scale": [n], "bias": [n]},
                             "dictionary": [n, d]}}}
    batch_stats = {m: {"mean": [n], "var": [n], "count": [], "threshold": []}}

``"threshold"`` (the BatchTopK inference threshold, :mod:`usae_jax.model.batch_topk`) exists only
when ``sparsity="batch_topk"``. A crosscoder's models (:mod:`usae_jax.model.crosscoder`) have no
``"batchnorm"`` entry and add ``"decoder_bias": [d]``; their dictionary is used unnormalised.

The dictionary of a USAE or SPARC model is stored raw and used row-normalised (see
:mod:`usae_jax.model.usae`). Everything
that a model's optimiser updates sits under ``params["models"][m]``; BatchNorm running statistics
are not trained by gradients and live apart, in ``batch_stats``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from usae_jax.config import USAEConfig

Params = dict
BatchStats = dict


def init_model_params(
    rng: jax.Array, width: int, num_concepts: int, batchnorm: bool = True
) -> dict:
    """One model's parameters, initialised as the official torch code does.

    Encoder: torch ``nn.Linear`` default init, ``U(-1/sqrt(d), 1/sqrt(d))`` for kernel and bias.
    BatchNorm: scale 1, shift 0 (left out when ``batchnorm`` is False: SPARC's affine stream
    encoders). Dictionary: standard normal ``[n, d]``.
    """
    kernel_rng, bias_rng, dict_rng = jax.random.split(rng, 3)
    bound = 1.0 / jnp.sqrt(width)
    params = {
        "encoder": {
            "kernel": jax.random.uniform(
                kernel_rng, (width, num_concepts), jnp.float32, -bound, bound
            ),
            "bias": jax.random.uniform(bias_rng, (num_concepts,), jnp.float32, -bound, bound),
        },
        "batchnorm": {
            "scale": jnp.ones((num_concepts,), jnp.float32),
            "bias": jnp.zeros((num_concepts,), jnp.float32),
        },
        "dictionary": jax.random.normal(dict_rng, (num_concepts, width), jnp.float32),
    }
    if not batchnorm:
        del params["batchnorm"]
    return params


def init_batch_stats(num_concepts: int, threshold: bool = False) -> dict:
    """Fresh BatchNorm running statistics: mean 0, var 1, zero batches seen; with ``threshold``
    also the BatchTopK inference threshold, -1 (not yet estimated)."""
    stats = {
        "mean": jnp.zeros((num_concepts,), jnp.float32),
        "var": jnp.ones((num_concepts,), jnp.float32),
        "count": jnp.zeros((), jnp.int32),
    }
    if threshold:
        stats["threshold"] = jnp.full((), -1.0, jnp.float32)
    return stats


CROSSCODER_INIT_NORM = 0.1
"""Norm of every crosscoder dictionary row at initialisation (Anthropic's April 2024 update
and dictionary_learning's ``AutoEncoderNew`` use 0.1)."""


def init_crosscoder_params(rng: jax.Array, width: int, num_concepts: int) -> dict:
    """One crosscoder model's parameters: dictionary rows in random directions with norm
    :data:`CROSSCODER_INIT_NORM`, the encoder kernel its transpose (tied init), zero encoder
    and decoder biases. Shapes: kernel ``[d, n]``, bias ``[n]``, dictionary ``[n, d]``,
    decoder_bias ``[d]``."""
    directions = jax.random.normal(rng, (num_concepts, width), jnp.float32)
    norms = jnp.linalg.norm(directions, axis=1, keepdims=True)
    dictionary = CROSSCODER_INIT_NORM * directions / norms
    return {
        "encoder": {"kernel": dictionary.T, "bias": jnp.zeros((num_concepts,), jnp.float32)},
        "dictionary": dictionary,
        "decoder_bias": jnp.zeros((width,), jnp.float32),
    }


def init_params(rng: jax.Array, config: USAEConfig) -> tuple[Params, BatchStats]:
    """Parameters and BatchNorm statistics of every model; model ``m`` uses ``fold_in(rng, m)``.

    With ``config.architecture`` "sparc" or "crosscoder" the models have no BatchNorm parameters
    (their ``batch_stats`` are kept, unused, so every state has the same structure).
    """
    n = config.num_concepts
    models = {}
    for index, (name, width) in enumerate(zip(config.model_names, config.widths, strict=True)):
        key = jax.random.fold_in(rng, index)
        if config.architecture == "crosscoder":
            models[name] = init_crosscoder_params(key, width, n)
        else:
            models[name] = init_model_params(key, width, n, config.architecture == "usae")
    threshold = config.sparsity == "batch_topk"
    stats = {name: init_batch_stats(n, threshold) for name in config.model_names}
    return {"models": models}, stats
