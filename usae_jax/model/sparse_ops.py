"""The two sparse operations a training step may swap: TopK selection and the k-sparse decode.

A step takes a :class:`SparseOps`; :data:`UNSHARDED` holds the plain single-device versions from
:mod:`usae_jax.model.usae`. :mod:`usae_jax.parallel.concept` builds the concept-sharded pair
(two-stage TopK, decode with one all-reduce) with the same signatures, so the step code never
knows whether the concept axis is split.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from usae_jax.model.usae import decode_sparse, top_k_codes


class SparseOps(NamedTuple):
    """The two operations that change when the concept axis is split over devices."""

    top_k: Callable = top_k_codes
    """``(activations [B, n], k) -> (dense [B, n], values [B, k], indices [B, k])``."""

    decode: Callable = decode_sparse
    """``(values [B, k], indices [B, k], unit_dictionary [n, d]) -> [B, d]``."""


UNSHARDED = SparseOps()
"""TopK and decode of a step whose concept axis is not split."""
