"""Matryoshka dictionaries (Bussmann et al. 2025; Nabeshima 2025): nested prefixes of concepts.

With prefix sizes ``m_1 < m_2 < ... < n`` (``USAEConfig.matryoshka_prefixes``), the first ``m_i``
concepts must reconstruct the target on their own: the loss adds the error of every prefix
reconstruction ``z[:, :m_i] D[:m_i]`` to the error of the whole code. Concepts early in the
dictionary are pushed to be general, later ones to refine them. The training steps call
:func:`restrict_to_prefix` and decode the restricted code as they decode the whole one.

Shapes: ``B`` rows, ``n`` concepts, ``k`` kept concepts per row.
"""

from __future__ import annotations

import jax.numpy as jnp

from usae_jax.model.usae import Encoded


def restrict_to_prefix(encoded: Encoded, size: int) -> Encoded:
    """The encoding with every concept ``>= size`` zeroed: codes ``[B, n]`` (and the per-row
    ``[B, k]`` values when present; their indices are kept, so a sparse decode gathers the same
    rows with zero weights)."""
    keep = jnp.arange(encoded.codes.shape[1]) < size
    codes = jnp.where(keep, encoded.codes, 0.0)
    if encoded.top_indices is None:
        return encoded._replace(codes=codes)
    values = jnp.where(encoded.top_indices < size, encoded.top_values, 0.0)
    return encoded._replace(codes=codes, top_values=values)
