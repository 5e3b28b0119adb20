"""Evaluation metrics of a trained USAE: the R² matrix, sparsity and dead concepts.

Evaluation encodes each model's activations with its own encoder, BatchNorm in eval mode
(running statistics), as the paper's analysis does, and with the model's own sparsity rule
(:func:`usae_jax.model.inference.encode_models_eval`): each model its own TopK for a USAE or
a local-TopK SPARC model, one support from every stream's summed logits for a global-TopK
SPARC model. The rule is named (:func:`encoding_name`) wherever an R² is printed or stored.

Two meanings of "dead" are kept apart by name: training reports ``dead_recent``, the concepts
that did not fire in the last ``dead_recent_rows`` training rows (:func:`dead_fraction`); the
analysis reports ``dead_on_data``, the concepts never non-zero on the analysed rows
(:mod:`usae_jax.analysis.statistics`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from usae_jax.config import USAEConfig
from usae_jax.model.inference import decode_eval, encode_models_eval

ENCODING_NAMES = {
    "local_topk": "local TopK",
    "global_topk": "global TopK",
    "batch_topk": "BatchTopK threshold",
    "l1": "ReLU",
}
"""How each sparsity rule's evaluation encoding is named in printed and stored results."""


def encoding_name(usae: USAEConfig) -> str:
    """The evaluation encoding of ``usae``: "local TopK" (each model keeps its own top ``k``),
    "global TopK" (one support of ``k`` concepts per row from every stream's summed logits),
    "BatchTopK threshold" (activations above the trained threshold) or "ReLU" (L1); a
    crosscoder's is prefixed "crosscoder" (one code read from every model)."""
    name = ENCODING_NAMES[usae.sparsity]
    return f"crosscoder {name}" if usae.architecture == "crosscoder" else name


def r2_label(usae: USAEConfig, centring: str = "scalar") -> str:
    """E.g. ``"R² (global TopK encoding, scalar centring)"``."""
    centrings = {"scalar": "scalar centring", "per_feature": "per-feature centring"}
    if centring not in centrings:
        raise ValueError(f"unknown centring {centring!r}: 'scalar' or 'per_feature'")
    return f"R² ({encoding_name(usae)} encoding, {centrings[centring]})"


def r_squared(x: jax.Array, x_hat: jax.Array, centring: str = "scalar") -> jax.Array:
    """Coefficient of determination of ``x_hat`` for ``x`` (both ``[B, d]``).

    ``"scalar"`` (official analysis code): ``1 - mean((x - x̂)²) / (mean((x - mean_all(x))²) +
    1e-6)`` with one scalar mean over all entries. ``"per_feature"``: the mean is taken per
    feature (column), i.e. one minus the fraction of variance unexplained (FVU).
    """
    if centring == "scalar":
        centred = x - jnp.mean(x)
    elif centring == "per_feature":
        centred = x - jnp.mean(x, axis=0)
    else:
        raise ValueError(f"unknown centring {centring!r}: 'scalar' or 'per_feature'")
    return 1 - jnp.mean(jnp.square(x - x_hat)) / (jnp.mean(jnp.square(centred)) + 1e-6)


@functools.partial(jax.jit, static_argnums=(0,))
def _cross_r2(usae: USAEConfig, params: dict, stats: dict, batch: dict):
    names = usae.model_names
    scalar, feature, l0 = [], [], []
    encodings = encode_models_eval(usae, params, stats, batch)
    for source in names:
        encoded = encodings[source]
        l0.append(jnp.mean(jnp.sum(encoded.codes > 0, axis=1).astype(jnp.float32)))
        row_s, row_f = [], []
        for target in names:
            x_hat = decode_eval(usae, params["models"][target], encoded)
            row_s.append(r_squared(batch[target], x_hat, "scalar"))
            row_f.append(r_squared(batch[target], x_hat, "per_feature"))
        scalar.append(jnp.stack(row_s))
        feature.append(jnp.stack(row_f))
    return jnp.stack(scalar), jnp.stack(feature), jnp.stack(l0)


def evaluate(usae: USAEConfig, params: dict, stats: dict, batch: dict[str, np.ndarray]) -> dict:
    """R² matrices and L0 on one paired batch ``{name: [B, d]}``, each model encoded with its own
    sparsity rule (:func:`encode_models_eval`).

    Returns ``{"r2": [M, M] (scalar centring, row = encoding model, column = decoded model),
    "r2_per_feature": [M, M], "l0": [M]}`` as numpy arrays and ``"encoding"``, the rule's name
    (:func:`encoding_name`).
    """
    scalar, feature, l0 = jax.device_get(_cross_r2(usae, params, stats, batch))
    return {
        "r2": np.asarray(scalar),
        "r2_per_feature": np.asarray(feature),
        "l0": np.asarray(l0),
        "encoding": encoding_name(usae),
    }


def dead_fraction(tokens_since_fired: dict, threshold_rows: int) -> dict[str, float]:
    """Fraction of concepts per model that did not fire in the last ``threshold_rows`` training
    rows (stored as ``dead_recent``); ``tokens_since_fired`` is ``{name: [n]}``.

    Not the analysis's ``dead_on_data`` (never non-zero on the analysed rows)."""
    return {
        name: float(np.mean(np.asarray(count) >= threshold_rows))
        for name, count in tokens_since_fired.items()
    }
