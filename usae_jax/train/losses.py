"""Reconstruction losses with an auxiliary (AuxK) term.

A target model's loss compares ``x`` ``[B, d]`` (its activations) with ``x_hat`` ``[B, d]`` (their
reconstruction) and, in the auxiliary term, the residual ``x - x_hat`` with ``r_hat = aux_codes @
D_hat`` ``[B, d]``, where

* ``aux_codes`` ``[B, n]`` are the auxiliary codes that should predict the residual (from
  :func:`auxiliary_codes`; they depend only on the source encoding, so a step computes them
  once for every target model);
* ``D_hat`` ``[n, d]`` is the target model's row-normalised dictionary.

A step decodes the auxiliary codes into every target at once with :func:`auxiliary_decode` (one
product over the dictionaries concatenated along their width, forward and backward) and passes
each target's ``r_hat`` to the configured loss, ``loss_for(config)(x, x_hat, r_hat,
aux_active)``. :func:`reconstruction_loss` keeps the one-target form ``(x, x_hat, aux_codes,
unit_dictionary)``; the official code's signature ``(x, x_hat, pre_codes, codes, dictionary)`` is
kept for parity in :func:`top_k_auxiliary_loss_l1` and :func:`top_k_auxiliary_loss`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero

from usae_jax.config import USAEConfig
from usae_jax.model.top_half import top_half_mask


def top_half_codes_by_sort(pre_codes: jax.Array, codes: jax.Array) -> jax.Array:
    """Reference top-half auxiliary codes via ``lax.top_k`` (the official ``torch.topk`` rule).

    ``[B, n], [B, n] -> [B, n]``: the top ``n // 2`` values of ``relu(pre_codes) - codes`` of
    each row, zeros elsewhere. Slow on CPU (a sort); used in tests of :func:`auxiliary_codes`.
    """
    unchosen = jax.nn.relu(pre_codes) - codes
    values, indices = jax.lax.top_k(unchosen, unchosen.shape[1] // 2)
    rows = jnp.arange(unchosen.shape[0])[:, None]
    return jnp.zeros_like(unchosen).at[rows, indices].set(values, unique_indices=True)


def auxiliary_codes(
    pre_codes: jax.Array,
    codes: jax.Array,
    *,
    rule: str = "top_half",
    dead_mask: jax.Array | None = None,
    dead_k_aux: int = 512,
    top_half=top_half_mask,
) -> jax.Array:
    """The codes the auxiliary term decodes: ``[B, n], [B, n] -> [B, n]``.

    * ``"top_half"`` (official): the top ``n // 2`` of ``relu(pre_codes) - codes`` per row,
      exactly the values ``lax.top_k`` (``torch.topk``) selects. Where a row has fewer than
      ``n // 2`` non-zero candidates, the zeros ``top_k`` also selects are left out of the
      mask: they change no code, and kept they would only add ``g - g`` rounding to the
      gradient of the chosen codes.
    * ``"dead_latents"`` (Gao et al. 2024): the top ``dead_k_aux`` of ``relu(pre_codes)`` among
      the concepts flagged in ``dead_mask`` ``[n]`` (all zeros when none is dead).
    Gradients flow through the kept values, not through the selection. ``top_half(values, keep)
    -> mask`` is the exact selection (:func:`~usae_jax.model.top_half.top_half_mask`, or the
    host selection a single-CPU step gets from
    :class:`~usae_jax.model.sparse_ops.SparseOps`).
    """
    if rule == "top_half":
        unchosen = jax.nn.relu(pre_codes) - codes
        # bit test, not `!= 0`: denormals count as non-zero even where they are flushed
        bits = jax.lax.bitcast_convert_type(unchosen.astype(jnp.float32), jnp.uint32)
        nonzero = (bits << 1) != 0
        keep = unchosen.shape[1] // 2
        # Exact shortcut: a row with at most `keep` non-zero candidates keeps all of them (top_k
        # would add only zeros), so the radix select runs only when some row has more.
        crowded = jnp.any(jnp.sum(nonzero, axis=1, dtype=jnp.int32) > keep)
        # Zeros never survive the `& nonzero` below, so rank them below every candidate and
        # apart from each other: the selection then meets no ties at zero (whose ranking by
        # index would cost a cumulative sum) and picks the same non-zero entries.
        ranked_last = -1.0 - jnp.arange(unchosen.shape[1], dtype=jnp.float32)
        mask = jax.lax.cond(
            crowded,
            lambda values: top_half(jnp.where(nonzero, values, ranked_last), keep) & nonzero,
            lambda values: nonzero,
            jax.lax.stop_gradient(unchosen).astype(jnp.float32),
        )
        return jnp.where(mask, unchosen, 0.0)
    if rule == "dead_latents":
        if dead_mask is None:
            raise ValueError('rule="dead_latents" needs a dead_mask of shape [n]')
        candidates = jnp.where(dead_mask[None, :], jax.nn.relu(pre_codes), 0.0)
        k = min(dead_k_aux, candidates.shape[1])
        values, indices = jax.lax.top_k(candidates, k)
        rows = jnp.arange(candidates.shape[0])[:, None]
        return jnp.zeros_like(candidates).at[rows, indices].set(values, unique_indices=True)
    raise ValueError(f"unknown auxiliary rule {rule!r}")


def configured_auxiliary_codes(
    config: USAEConfig, encoded, dead_mask: jax.Array, top_half=top_half_mask
) -> jax.Array:
    """:func:`auxiliary_codes` ``[B, n]`` of an encoding (``pre_codes`` and ``codes`` ``[B, n]``)
    under the configured rule; ``dead_mask`` ``[n]``, ``top_half`` from the step's
    :class:`~usae_jax.model.sparse_ops.SparseOps`."""
    return auxiliary_codes(
        encoded.pre_codes,
        encoded.codes,
        rule=config.aux,
        dead_mask=dead_mask,
        dead_k_aux=config.dead_k_aux,
        top_half=top_half,
    )


def _error(difference: jax.Array, kind: str) -> jax.Array:
    return jnp.abs(difference) if kind == "l1_auxk" else jnp.square(difference)


def mean_error(difference: jax.Array, kind: str) -> jax.Array:
    """Mean absolute (``"l1_auxk"``) or squared (``"l2_auxk"``) entry of ``difference`` (any
    shape) -> scalar: the reconstruction error without the auxiliary term."""
    return jnp.mean(_error(difference, kind))


@jax.custom_vjp
def _decode_concatenated(codes: jax.Array, dictionaries: tuple[jax.Array, ...]):
    joint = jnp.concatenate(dictionaries, axis=1)
    decoded = jnp.matmul(codes.astype(joint.dtype), joint, preferred_element_type=jnp.float32)
    splits = np.cumsum([d.shape[1] for d in dictionaries])[:-1]
    return tuple(jnp.split(decoded, splits, axis=1))


def _decode_concatenated_fwd(codes, dictionaries):
    values = tuple(d.value for d in dictionaries)
    joint = jnp.concatenate(values, axis=1)
    decoded = _decode_concatenated(codes.value, values)
    # which cotangents the backward pass owes, as pytree structure (None: not differentiated)
    wanted = (
        () if codes.perturbed else None,
        tuple(() if d.perturbed else None for d in dictionaries),
    )
    return decoded, (codes.value, joint, wanted)


def _decode_concatenated_bwd(residuals, cotangents):
    codes, joint, (codes_wanted, dictionaries_wanted) = residuals
    cotangents = [
        jnp.zeros(c.shape, c.dtype) if isinstance(c, SymbolicZero) else c for c in cotangents
    ]
    joint_cotangent = jnp.concatenate(cotangents, axis=1).astype(joint.dtype)  # [B, sum d]
    codes_cotangent = None
    if codes_wanted is not None:  # one product for every target: [B, sum d] x [sum d, n]
        codes_cotangent = jnp.matmul(
            joint_cotangent, joint.T, preferred_element_type=jnp.float32
        ).astype(codes.dtype)
    codes_t = codes.astype(joint.dtype).T
    dictionary_cotangents = tuple(
        None
        if wanted is None
        else jnp.matmul(codes_t, c.astype(joint.dtype), preferred_element_type=jnp.float32).astype(
            joint.dtype
        )
        for wanted, c in zip(dictionaries_wanted, cotangents, strict=True)
    )
    return codes_cotangent, dictionary_cotangents


_decode_concatenated.defvjp(_decode_concatenated_fwd, _decode_concatenated_bwd, symbolic_zeros=True)


def auxiliary_decode(
    aux_codes: jax.Array, unit_dictionaries: Sequence[jax.Array]
) -> tuple[jax.Array, ...]:
    """``aux_codes @ D_hat_t`` of every target: ``[B, n], ([n, d_t], ...) -> ([B, d_t], ...)``.

    One matrix product over the dictionaries concatenated along their width (``[B, n] x [n, sum
    d_t]``) instead of one per target, and in the backward pass one product ``[B, sum d_t] x
    [sum d_t, n]`` for the codes' gradient. A dictionary's own gradient (``aux_codes^T @
    cotangent_t``) is computed only where it is differentiated: in the official step only the
    source model's dictionary is, and the other targets cost nothing there. The codes are cast
    to the dictionaries' dtype (the step's compute dtype); products accumulate in float32 and
    the outputs are float32.
    """
    dictionaries = tuple(unit_dictionaries)
    if not dictionaries:
        raise ValueError("auxiliary_decode needs at least one dictionary")
    if len({d.dtype for d in dictionaries}) != 1:
        raise TypeError(f"dictionaries differ in dtype: {[d.dtype for d in dictionaries]}")
    rows = {d.shape[0] for d in dictionaries}
    if rows != {aux_codes.shape[-1]}:
        raise ValueError(
            f"codes of width {aux_codes.shape[-1]} cannot decode dictionaries of {rows} rows"
        )
    return _decode_concatenated(aux_codes, dictionaries)


def loss_with_estimate(
    x: jax.Array,
    x_hat: jax.Array,
    residual_hat: jax.Array,
    aux_active: jax.Array | bool = True,
    *,
    kind: str = "l1_auxk",
    aux_rule: str = "top_half",
    coefficient: float = 0.1,
) -> jax.Array:
    """Scalar loss of one target from its auxiliary estimate ``residual_hat`` ``[B, d]``.

    ``kind="l1_auxk"``: ``mean|x - x_hat| + c * mean|r - r_hat|``; ``"l2_auxk"`` squares instead,
    with ``r = x - x_hat``. With ``aux_rule="dead_latents"`` the auxiliary term is Gao et al.'s
    normalised error of predicting the (detached) residual, and it is zero unless
    ``aux_active`` (some auxiliary code is non-zero).
    """
    residual = x - x_hat
    main = jnp.mean(_error(residual, kind))
    if aux_rule == "top_half":
        aux = jnp.mean(_error(residual - residual_hat, kind))
    else:
        target = jax.lax.stop_gradient(residual)
        scale = jnp.mean(_error(target - jnp.mean(target, axis=0), kind))
        aux = jnp.mean(_error(target - residual_hat, kind)) / (scale + 1e-8)
        aux = jnp.where(aux_active, aux, 0.0)
    return main + coefficient * aux


def reconstruction_loss(
    x: jax.Array,
    x_hat: jax.Array,
    aux_codes: jax.Array,
    unit_dictionary: jax.Array,
    *,
    kind: str = "l1_auxk",
    aux_rule: str = "top_half",
    coefficient: float = 0.1,
) -> jax.Array:
    """Scalar loss of one target model from its auxiliary codes ``[B, n]`` and unit dictionary
    ``[n, d]``: :func:`loss_with_estimate` of ``r_hat = aux_codes @ unit_dictionary``."""
    (residual_hat,) = auxiliary_decode(aux_codes, (unit_dictionary,))
    return loss_with_estimate(
        x,
        x_hat,
        residual_hat,
        jnp.any(aux_codes != 0),
        kind=kind,
        aux_rule=aux_rule,
        coefficient=coefficient,
    )


def loss_for(config: USAEConfig):
    """The configured loss, with the signature ``(x, x_hat, residual_hat, aux_active)``."""
    return functools.partial(
        loss_with_estimate,
        kind=config.loss,
        aux_rule=config.aux,
        coefficient=config.aux_coefficient,
    )


def top_k_auxiliary_loss_l1(x, x_hat, pre_codes, codes, unit_dictionary, penalty=0.1):
    """The official ``top_k_auxiliary_loss_L1`` with its own signature (for parity checks)."""
    aux = auxiliary_codes(pre_codes, codes, rule="top_half")
    return reconstruction_loss(x, x_hat, aux, unit_dictionary, kind="l1_auxk", coefficient=penalty)


def top_k_auxiliary_loss(x, x_hat, pre_codes, codes, unit_dictionary, penalty=0.1):
    """The official ``top_k_auxiliary_loss`` (squared errors) with its own signature."""
    aux = auxiliary_codes(pre_codes, codes, rule="top_half")
    return reconstruction_loss(x, x_hat, aux, unit_dictionary, kind="l2_auxk", coefficient=penalty)
