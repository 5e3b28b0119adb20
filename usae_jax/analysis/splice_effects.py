"""Per-concept causal effects across networks: ablate one concept of A's code, splice into B.

For a source model A, a target B and a concept c: A's code ``z`` of every token is decoded into
B (``x̂_B = z D̂_B``, the cross splice of :mod:`usae_jax.analysis.splice`; for ``A == B`` B's own
reconstruction), and compared with the same splice after ablating c, ``x̂_B - z_c D̂_B[c]``.
The effect is ``KL(p(x̂_B) || p(x̂_B - z_c D̂_B[c]))`` of B's output, per image, averaged. The
control replaces ``D̂_B[c]`` by a random direction of the same norm (one per target and
concept, seeded), keeping the same code ``z_c``: the effect any direction would have at that
code's strength.

Agreement across networks: for a source A and two targets B1, B2, the Spearman correlation over
a group of concepts of their effects in B1 and in B2; groups are *universal* concepts (high
firing entropy on the evaluated tokens) and *unique* ones (firing in one model almost only);
the same correlation of the random-direction effects is the control.

Shapes: ``C`` concepts, ``M`` models, ``B`` images, ``T`` tokens per image.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats as scipy_stats

from usae_jax.analysis.splice import Observation, SpliceModel, divergence, standardise
from usae_jax.analysis.universality import firing_entropy
from usae_jax.config import USAEConfig
from usae_jax.model.inference import encode_eval
from usae_jax.model.usae import normalize_dictionary
from usae_jax.validation import require


@dataclasses.dataclass(frozen=True, kw_only=True)
class EffectConfig:
    """Which concepts to ablate and how to group them."""

    per_group: int = 16
    """Concepts per group (universal, unique), the most often firing ones of each group."""
    universal_min: float = 0.8
    """A concept is universal when its firing entropy is at least this."""
    unique_max: float = 0.2
    """A concept is unique when its firing entropy is at most this (and it fires)."""
    tau: float = 0.1
    """A concept fires on a token when its code exceeds this (the paper's threshold)."""
    seed: int = 0
    """Seed of the random control directions."""

    def __post_init__(self):
        require(self.per_group >= 2, "per_group", self.per_group, "need >= 2 concepts to rank")
        require(
            0 <= self.unique_max < self.universal_min <= 1,
            "unique_max",
            self.unique_max,
            f"need 0 <= unique_max < universal_min ({self.universal_min}) <= 1",
        )
        require(self.tau >= 0, "tau", self.tau, "must be >= 0")


@functools.partial(jax.jit, static_argnums=(0,))
def _codes(usae: USAEConfig, model_params: dict, stats: dict, rows: jax.Array) -> jax.Array:
    return encode_eval(usae, model_params, stats, rows).codes


def fire_counts(usae, params, stats, models, observed, tau: float) -> np.ndarray:
    """``[M, n]`` tokens on which each concept fires (code > ``tau``) in each model's own
    encoding, over the observed batches."""
    counts = np.zeros((len(models), usae.num_concepts), np.int64)
    for seen in observed:
        for i, (name, model) in enumerate(models.items()):
            rows = standardise(model, seen[name].tokens)
            codes = _codes(usae, params["models"][name], stats[name], rows)
            counts[i] += np.asarray(jnp.sum(codes > tau, axis=0))
    return counts


def concept_groups(counts: np.ndarray, config: EffectConfig) -> dict[str, list[int]]:
    """``{"universal": [...], "unique": [...]}``: up to ``per_group`` concepts per group, the
    most often firing first, from ``[M, n]`` fire counts."""
    entropy, total = firing_entropy(counts), counts.sum(axis=0)
    order = np.argsort(-total, kind="stable")
    universal = [int(c) for c in order if total[c] > 0 and entropy[c] >= config.universal_min]
    unique = [int(c) for c in order if total[c] > 0 and entropy[c] <= config.unique_max]
    return {"universal": universal[: config.per_group], "unique": unique[: config.per_group]}


def control_directions(params: dict, concepts: Sequence[int], seed: int) -> dict[str, np.ndarray]:
    """``{target: [C, d]}`` random directions with the norms of the targets' ``D̂[c]`` rows."""
    rng = np.random.default_rng(seed)
    out = {}
    for name in sorted(params["models"]):
        unit = np.asarray(normalize_dictionary(params["models"][name]["dictionary"]))[concepts]
        r = rng.standard_normal(unit.shape)
        r *= (np.linalg.norm(unit, axis=1) / np.linalg.norm(r, axis=1))[:, None]
        out[name] = r.astype(np.float32)
    return out


def concept_effects(
    usae: USAEConfig,
    params: dict,
    stats: dict,
    models: Mapping[str, SpliceModel],
    observed: Sequence[Mapping[str, Observation]],
    concepts: Sequence[int],
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Effects of ablating each concept of each source's code on each target's output.

    Returns:
      ``{"real": [M, M, C], "control": [M, M, C]}``, indexed ``[source, target, concept]`` in
      the order of ``models``: mean per-image KL (module docstring).
    """
    names, concepts = list(models), [int(c) for c in concepts]
    ids = jnp.asarray(concepts, jnp.int32)
    control = control_directions(params, concepts, seed)
    sums = {k: np.zeros((len(names), len(names), len(concepts))) for k in ("real", "control")}
    images = 0
    for seen in observed:
        batch = next(iter(seen.values())).tokens.shape[0]
        images += batch
        for i, a in enumerate(names):
            rows = standardise(models[a], seen[a].tokens)
            codes = _codes(usae, params["models"][a], stats[a], rows)
            for j, b in enumerate(names):
                model = models[b]
                unit = normalize_dictionary(params["models"][b]["dictionary"])
                base = codes @ unit  # [B * T, d_b] standardised
                clean = model.resume(_raw(model, base, batch), seen[b].rest)
                for kind, directions in (("real", unit[ids]), ("control", control[b])):
                    for k in range(len(concepts)):
                        edit = base - codes[:, ids[k], None] * directions[k][None, :]
                        out = model.resume(_raw(model, edit, batch), seen[b].rest)
                        sums[kind][i, j, k] += float(jnp.sum(divergence(model.kind, clean, out)))
    return {k: v / max(images, 1) for k, v in sums.items()}


def _raw(model: SpliceModel, rows: jax.Array, images: int) -> jax.Array:
    return (rows * model.std + model.mean).reshape(images, -1, rows.shape[-1])


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation; NaN when either side is constant."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(scipy_stats.spearmanr(x, y).statistic)


def effect_agreement(
    effects: Mapping[str, np.ndarray], names: Sequence[str], index: Mapping[str, Sequence[int]]
) -> dict:
    """Cross-network agreement of concept effects, per group, real vs control.

    Args:
      effects: :func:`concept_effects`' output over all concepts ``[M, M, C]``.
      index: ``{group: positions in the effects' concept axis}``.

    Returns:
      ``{group: {"real": mean rho, "control": mean rho, "pairs": [{"source", "targets",
      "real", "control"}]}}``: Spearman rho over the group's concepts between two targets'
      effects from the same source, for every source and pair of targets.
    """
    out = {}
    for group, positions in index.items():
        pairs = []
        for i, a in enumerate(names):
            for j, k in itertools.combinations(range(len(names)), 2):
                cell = {"source": a, "targets": [names[j], names[k]]}
                for kind in ("real", "control"):
                    e = np.asarray(effects[kind])[i][:, list(positions)]
                    cell[kind] = spearman(e[j], e[k])
                pairs.append(cell)
        out[group] = {
            kind: float(np.nanmean([p[kind] for p in pairs]))
            if any(np.isfinite(p[kind]) for p in pairs) else float("nan")
            for kind in ("real", "control")
        }  # fmt: skip
        out[group]["pairs"] = pairs
    return out


def rankings(effects: Mapping[str, np.ndarray], names, concepts, top: int = 10) -> dict:
    """Per target network, the ``top`` concepts by effect when it ablates its own code
    (``effects["real"][b, b]``), largest first: ``{name: [[concept, effect], ...]}``."""
    real = np.asarray(effects["real"])
    out = {}
    for b, name in enumerate(names):
        order = np.argsort(-real[b, b])[:top]
        out[name] = [[int(concepts[k]), float(real[b, b, k])] for k in order]
    return out
