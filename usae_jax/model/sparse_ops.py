"""The sparse operations a training step may swap: TopK, the k-sparse decode, and the exact
top-half selection of the AuxK rule.

A step takes a :class:`SparseOps`; :data:`UNSHARDED` holds the plain versions from
:mod:`usae_jax.model.usae` and :mod:`usae_jax.model.top_half`, and :data:`ONE_CPU` the same with
the host selection (a step on a single CPU device). :mod:`usae_jax.parallel.concept` picks
between them, or builds the concept-sharded pair (two-stage TopK, decode with one all-reduce)
with the same signatures, so the step code never knows where it runs or whether the concept
axis is split.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from usae_jax.model.top_half import host_top_half_mask, top_half_mask
from usae_jax.model.usae import decode_sparse, top_k_codes


class SparseOps(NamedTuple):
    """The operations that change with where a step runs and whether its concepts are split."""

    top_k: Callable = top_k_codes
    """``(activations [B, n], k) -> (dense [B, n], values [B, k], indices [B, k])``."""

    decode: Callable = decode_sparse
    """``(values [B, k], indices [B, k], unit_dictionary [n, d]) -> [B, d]``."""

    top_half: Callable = top_half_mask
    """``(values [B, n], keep) -> mask [B, n]``: the exact top-half selection of the AuxK rule."""

    @property
    def splits_concepts(self) -> bool:
        """Whether TopK and decode are the concept-sharded ones."""
        return (self.top_k, self.decode) != (top_k_codes, decode_sparse)


UNSHARDED = SparseOps()
"""The operations of a step whose concept axis is not split (any device, any batch sharding)."""

ONE_CPU = SparseOps(top_half=host_top_half_mask)
"""The operations of a step on one CPU device: the top-half selection on the host (same mask)."""
