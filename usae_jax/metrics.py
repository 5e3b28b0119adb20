"""Evaluation metrics of a trained USAE: the R² matrix, sparsity, dead concepts, recovery.

Evaluation encodes each model's activations with its own encoder, BatchNorm in eval mode
(running statistics), as the paper's analysis does.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from usae_jax.config import USAEConfig
from usae_jax.usae.model import Encoded, decode, encode


def encode_eval(usae: USAEConfig, model_params: dict, stats: dict, x: jax.Array) -> Encoded:
    """Encode ``x`` ``[B, d]`` in eval mode (running BatchNorm statistics)."""
    encoded, _ = encode(
        model_params,
        stats,
        x,
        top_k=usae.top_k,
        train=False,
        momentum=usae.batchnorm_momentum,
        eps=usae.batchnorm_eps,
    )
    return encoded


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
    for source in names:
        encoded = encode_eval(usae, params["models"][source], stats[source], batch[source])
        l0.append(jnp.mean(jnp.sum(encoded.codes > 0, axis=1).astype(jnp.float32)))
        row_s, row_f = [], []
        for target in names:
            x_hat = decode(encoded, params["models"][target]["dictionary"])
            row_s.append(r_squared(batch[target], x_hat, "scalar"))
            row_f.append(r_squared(batch[target], x_hat, "per_feature"))
        scalar.append(jnp.stack(row_s))
        feature.append(jnp.stack(row_f))
    return jnp.stack(scalar), jnp.stack(feature), jnp.stack(l0)


def evaluate(usae: USAEConfig, params: dict, stats: dict, batch: dict[str, np.ndarray]) -> dict:
    """R² matrices and L0 on one paired batch ``{name: [B, d]}``.

    Returns ``{"r2": [M, M] (scalar centring, row = encoding model, column = decoded model),
    "r2_per_feature": [M, M], "l0": [M]}`` as numpy arrays.
    """
    scalar, feature, l0 = jax.device_get(_cross_r2(usae, params, stats, batch))
    return {"r2": np.asarray(scalar), "r2_per_feature": np.asarray(feature), "l0": np.asarray(l0)}


def dead_fraction(tokens_since_fired: dict, threshold_rows: int) -> dict[str, float]:
    """Fraction of concepts per model that did not fire in the last ``threshold_rows`` rows."""
    return {
        name: float(np.mean(np.asarray(count) >= threshold_rows))
        for name, count in tokens_since_fired.items()
    }


def max_cosines(dictionary: np.ndarray, directions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per planted direction, the best cosine with a row of ``dictionary`` and that row.

    Args:
      dictionary: ``[n, d]`` (raw or normalised).
      directions: ``[c, d]`` planted directions.

    Returns:
      ``(cosines [c], rows [c])``: ``cosines[i]`` is the largest cosine between direction ``i``
      and a dictionary row, ``rows[i]`` the index of that row.
    """
    atoms = dictionary / (np.linalg.norm(dictionary, axis=1, keepdims=True) + 1e-12)
    targets = directions / (np.linalg.norm(directions, axis=1, keepdims=True) + 1e-12)
    similarity = targets @ atoms.T
    return similarity.max(axis=1), similarity.argmax(axis=1)


def mean_max_cosine(dictionary: np.ndarray, directions: np.ndarray) -> float:
    """Mean over planted ``directions`` ``[c, d]`` of the best cosine with a row of ``dictionary``.

    ``dictionary`` is ``[n, d]`` (raw or normalised). 1.0 means every direction is recovered.
    """
    return float(np.mean(max_cosines(dictionary, directions)[0]))
