"""Does what a USAE reconstructs matter to the network? Splice it into the forward pass.

For a network B at the USAE's layer, B's tokens are replaced and the rest of B runs
(:mod:`usae_jax.backbones.continuation`); B's output is compared with its clean output:

* ``self``: B's own reconstruction ``decode_B(encode_B(s_B))``;
* ``cross`` from A: ``decode_B(encode_A(s_A))``, A's encoding of the same image decoded into B;
* ``mean``: every token replaced by B's mean token (mean ablation);
* ``baseline`` from A: ``decode_B(encode_A(s_A'))`` with ``s_A'`` the same token position of a
  *different* image (the next one in the batch): a code of the same sparsity and the same
  statistics that carries nothing of this image.

Codes are computed on the store's standardised rows ``s = (x - mu) / sigma`` and every
replacement is un-standardised (``x = s sigma + mu``) before it is spliced.

Measures, per image then averaged: ``KL(p_clean || p_spliced)`` of B's output distribution, the
fraction of KL recovered relative to mean ablation ``1 - KL / KL_mean`` (1: as good as clean, 0:
no better than the mean, below 0: worse), and agreement (top-1 for a classifier; for a per-pixel
Bernoulli head the fraction of pixels whose decision ``p > 0.5`` is unchanged). Head kinds
(:data:`usae_jax.backbones.continuation.KINDS`): ``categorical`` (softmax over the last axis),
``bernoulli`` (a sigmoid per element, KL averaged over elements) and ``gaussian`` (unit-variance
Gaussians around the outputs, ``KL = 0.5 ||a - b||²`` summed over elements; the closed-form
readout of planted data).

Shapes: ``B`` images, ``T`` tokens per image (common grid), ``d`` width, ``M`` models.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from usae_jax.backbones.continuation import KINDS, Cut
from usae_jax.backbones.tokens import resample_grid, unresample_grid
from usae_jax.config import USAEConfig
from usae_jax.model.inference import encode_eval
from usae_jax.model.usae import decode_sparse, normalize_dictionary
from usae_jax.validation import require


class Observation(NamedTuple):
    """One model's clean run on a batch of ``B`` images."""

    tokens: jax.Array
    """``[B, T, d]`` raw tokens on the common grid (what the store holds, before standardising)."""
    rest: Any
    """Whatever the model's ``resume`` needs from the clean run besides the tokens."""
    output: jax.Array
    """``[B, ...]`` clean head output (logits)."""


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class SpliceModel:
    """One USAE model as a splice target: its standardisation and the rest of its network."""

    name: str
    """The USAE model name."""
    kind: str
    """How its output is read: one of :data:`~usae_jax.backbones.continuation.KINDS`."""
    mean: float
    """The store's scalar mean of this model's raw tokens."""
    std: float
    """The store's scalar std divisor (std plus its epsilon)."""
    token_mean: np.ndarray
    """``[d]`` mean raw token (per channel) that mean ablation puts in every position."""
    observe: Callable[[jax.Array], Observation] = dataclasses.field(repr=False)
    """``observe(pixels or rows) -> Observation``: the clean run."""
    resume: Callable[[jax.Array, Any], jax.Array] = dataclasses.field(repr=False)
    """``resume(tokens [B, T, d] raw, rest) -> output``: the rest of the network."""
    inputs: Callable[[Any], jax.Array] = dataclasses.field(default=lambda x: x, repr=False)
    """Maps a batch (e.g. uint8 images) to ``observe``'s input (e.g. the network's pixels)."""

    def __post_init__(self):
        require(self.kind in KINDS, "kind", self.kind, f"must be one of {KINDS}")
        require(self.std > 0, "std", self.std, "must be > 0")


def cut_model(
    name: str, cut: Cut, grid: tuple[int, int], mean: float, std: float, token_mean: np.ndarray
) -> SpliceModel:
    """A :class:`SpliceModel` over a network :class:`~usae_jax.backbones.continuation.Cut`:
    tokens are resampled to the common ``grid`` as extraction does, and spliced tokens go back
    to the native grid with :func:`~usae_jax.backbones.tokens.unresample_grid`."""
    grid = tuple(grid)

    @jax.jit
    def observe(pixels):
        native, rest, output = cut.observe(cut.params, pixels)
        common = resample_grid(native.astype(jnp.float32), grid)
        tokens = common.reshape(common.shape[0], grid[0] * grid[1], common.shape[-1])
        return Observation(tokens, (native, rest), output)

    @jax.jit
    def resume(tokens, rest):
        native, extra = rest
        common = tokens.reshape(tokens.shape[0], *grid, tokens.shape[-1])
        return cut.resume(cut.params, unresample_grid(common, native), extra)

    return SpliceModel(name=name, kind=cut.kind, mean=mean, std=std,
                       token_mean=np.asarray(token_mean, np.float32), observe=observe,
                       resume=resume, inputs=cut.preprocess)  # fmt: skip


# ------------------------------------------------------------------ output distributions
def divergence(kind: str, clean: jax.Array, spliced: jax.Array) -> jax.Array:
    """``[B]`` per-image ``KL(clean || spliced)`` of two head outputs ``[B, ...]`` (rounding
    below 0 is clipped to 0)."""
    clean, spliced = jnp.asarray(clean, jnp.float32), jnp.asarray(spliced, jnp.float32)
    axes = tuple(range(1, clean.ndim))
    if kind == "categorical":
        p, q = jax.nn.log_softmax(clean, -1), jax.nn.log_softmax(spliced, -1)
        kl = jnp.sum(jnp.exp(p) * (p - q), axis=-1)  # >= 0 up to rounding: clipped
        return jnp.maximum(kl.reshape(kl.shape[0], -1).mean(axis=1), 0.0)
    if kind == "bernoulli":
        lp, lq = jax.nn.log_sigmoid(clean), jax.nn.log_sigmoid(spliced)
        lp0, lq0 = jax.nn.log_sigmoid(-clean), jax.nn.log_sigmoid(-spliced)
        kl = jnp.exp(lp) * (lp - lq) + jnp.exp(lp0) * (lp0 - lq0)
        return jnp.maximum(jnp.mean(kl, axis=axes), 0.0)
    if kind == "gaussian":
        return 0.5 * jnp.sum(jnp.square(clean - spliced), axis=axes)
    raise ValueError(f"kind={kind!r}: must be one of {KINDS}")


def agreement(kind: str, clean: jax.Array, spliced: jax.Array) -> jax.Array:
    """``[B]`` per-image agreement: top-1 equal (categorical, gaussian; averaged over any axes
    between batch and classes) or the fraction of elements with the same ``p > 0.5`` decision
    (bernoulli)."""
    if kind == "bernoulli":
        same = (jnp.asarray(clean) > 0) == (jnp.asarray(spliced) > 0)
        return jnp.mean(same, axis=tuple(range(1, same.ndim)))
    same = jnp.argmax(clean, -1) == jnp.argmax(spliced, -1)
    return same.reshape(same.shape[0], -1).mean(axis=1)


# ------------------------------------------------------------------ replacements
@functools.partial(jax.jit, static_argnums=(0, 4))
def reconstructions(usae: USAEConfig, params: dict, stats: dict, rows: dict, tokens: int) -> dict:
    """Standardised replacement rows for every (target, condition).

    Args:
      rows: ``{name: [B * T, d_name]}`` standardised rows (image-major).
      tokens: ``T``, so that the baseline can take the codes of the next image.

    Returns:
      ``{target: {("self",) | ("cross", A) | ("baseline", A): [B * T, d_target]}}``.
    """
    codes = {a: encode_eval(usae, params["models"][a], stats[a], rows[a]) for a in rows}
    out = {}
    for b in rows:
        unit = normalize_dictionary(params["models"][b]["dictionary"])
        out[b] = {}
        for a, code in codes.items():
            key = ("self",) if a == b else ("cross", a)
            out[b][key] = decode_sparse(code.top_values, code.top_indices, unit)
            other = [jnp.roll(v, -tokens, axis=0) for v in (code.top_values, code.top_indices)]
            out[b][("baseline", a)] = decode_sparse(*other, unit)
    return out


def standardise(model: SpliceModel, tokens: jax.Array) -> jax.Array:
    """``[B, T, d]`` raw tokens -> ``[B * T, d]`` standardised rows."""
    return ((tokens - model.mean) / model.std).reshape(-1, tokens.shape[-1])


def unstandardise(model: SpliceModel, rows: jax.Array, images: int) -> jax.Array:
    """``[B * T, d]`` standardised rows -> ``[B, T, d]`` raw tokens."""
    return (rows * model.std + model.mean).reshape(images, -1, rows.shape[-1])


# ------------------------------------------------------------------ the table
class SpliceTotals:
    """Running per-image sums of KL and agreement for each (target, condition)."""

    def __init__(self):
        self.kl: dict = {}
        self.agree: dict = {}
        self.images: dict = {}

    def add(self, key, kl: jax.Array, agree: jax.Array) -> None:
        """Add per-image ``[B]`` values under ``key``."""
        self.kl[key] = self.kl.get(key, 0.0) + float(jnp.sum(kl))
        self.agree[key] = self.agree.get(key, 0.0) + float(jnp.sum(agree))
        self.images[key] = self.images.get(key, 0) + int(kl.shape[0])

    def mean(self, key) -> tuple[float, float]:
        """``(mean KL, mean agreement)`` of ``key``."""
        return self.kl[key] / self.images[key], self.agree[key] / self.images[key]


def observe_batches(models: Mapping[str, SpliceModel], batches: Iterable[Any]) -> list[dict]:
    """Clean runs: for each batch (what each model's ``inputs`` takes; the same images for every
    model) ``{name: Observation}``. Splices and concept effects reuse them."""
    return [{n: m.observe(m.inputs(batch)) for n, m in models.items()} for batch in batches]


def splice_batch(
    usae: USAEConfig, params: dict, stats: dict, models: Mapping[str, SpliceModel],
    seen: Mapping[str, Observation], totals: SpliceTotals,
) -> None:  # fmt: skip
    """Run every splice of one observed batch and add its measures to ``totals`` under
    ``(target, condition...)`` keys."""
    images, tokens = next(iter(seen.values())).tokens.shape[:2]
    if images < 2:
        raise ValueError("the baseline takes codes of another image: batches need >= 2 images")
    rows = {n: standardise(models[n], o.tokens) for n, o in seen.items()}
    recon = reconstructions(usae, params, stats, rows, tokens)
    for b, model in models.items():
        clean = seen[b]
        mean_tokens = jnp.broadcast_to(jnp.asarray(model.token_mean), clean.tokens.shape)
        edits = {("mean",): mean_tokens, ("clean",): clean.tokens}
        edits.update({k: unstandardise(model, v, images) for k, v in recon[b].items()})
        for key, tokens_b in edits.items():
            out = model.resume(tokens_b, clean.rest)
            totals.add((b, *key), divergence(model.kind, clean.output, out),
                       agreement(model.kind, clean.output, out))  # fmt: skip


def recovered(kl: float, kl_mean: float) -> float:
    """Fraction of KL recovered relative to mean ablation: ``1 - kl / kl_mean``."""
    return float(1.0 - kl / kl_mean) if kl_mean > 0 else float("nan")


def splice_table(names: Iterable[str], totals: SpliceTotals) -> list[dict]:
    """One row per ordered pair ``(A, B)``, ``A != B`` (or ``(B, B)`` for a single model): KL,
    KL recovered and agreement of B's output under self / cross from A / mean ablation /
    baseline from A, plus the clean splice (should be 0 KL; a check of the splice path)."""
    names = list(names)
    rows = []
    pairs = [(a, b) for a in names for b in names if a != b] or [(names[0], names[0])]
    for a, b in pairs:
        kl_mean, agree_mean = totals.mean((b, "mean"))
        row = {"source": a, "target": b, "images": totals.images[(b, "mean")]}
        cells = {"self": (b, "self"), "cross": (b, "cross", a), "mean": (b, "mean"),
                 "baseline": (b, "baseline", a), "clean": (b, "clean")}  # fmt: skip
        if a == b:
            cells["cross"] = (b, "self")
        for label, key in cells.items():
            kl, agree = totals.mean(key)
            row[label] = {"kl": kl, "kl_recovered": recovered(kl, kl_mean), "agreement": agree}
        rows.append(row)
    return rows


def run_splice(
    usae: USAEConfig, params: dict, stats: dict, models: Mapping[str, SpliceModel],
    observed: Iterable[Mapping[str, Observation]],
) -> list[dict]:  # fmt: skip
    """:func:`splice_batch` over observed batches (:func:`observe_batches`), then
    :func:`splice_table`."""
    totals = SpliceTotals()
    for seen in observed:
        splice_batch(usae, params, stats, models, seen, totals)
    return splice_table(models, totals)
