"""The independent-SAE baseline: one TopK SAE per model, matched to the USAE's dictionaries.

An independent SAE is a USAE with ``M = 1`` trained by the same code and settings on one model's
activations. Its atoms are matched one-to-one to the USAE's atoms for that model by the
Hungarian algorithm on cost ``1 - cos``; a pair with ``cos > match_cosine`` (paper: 0.5) is a
match. A chance level comes from random atoms with the independent dictionary's mean and
variance, matched the same way.
"""

from __future__ import annotations

import dataclasses
import os
from typing import NamedTuple

import jax
import numpy as np
from scipy.optimize import linear_sum_assignment

from usae_jax.config import TrainConfig
from usae_jax.config_io import replace_fields
from usae_jax.data.source import ArraySource
from usae_jax.model.usae import normalize_dictionary
from usae_jax.train.loop import train
from usae_jax.validation import require


@dataclasses.dataclass(kw_only=True, frozen=True)
class BaselineConfig:
    """Settings of the independent-SAE comparison."""

    num_steps: int = 300
    """Training steps of each independent SAE. Fewer than a full run by default so the whole
    analysis stays short; the report states the number."""

    match_cosine: float = 0.5
    """A Hungarian pair is a match when its cosine exceeds this (paper: 0.5)."""

    universal_entropy: float = 0.8
    """A firing concept is *universal* when its firing entropy is at least this."""

    specific_share: float = 0.9
    """A firing concept is *unique to model m* when m holds at least this share of its firings."""

    seed: int = 0
    """Seed of the random-atom chance baseline."""

    sae_seed: int | None = None
    """Seed of the independent SAEs' training (initialisation and data order); None: the USAE's
    own seed. Model ``m``'s parameters start from ``fold_in(key(seed), m)``, so with the USAE's
    seed the first model's SAE starts from exactly the USAE's first dictionary: after a short
    training both are still near that start and match by construction (a real-network run at
    100 steps matched 100% for the first model and 0% for the others). Set another seed there."""

    def __post_init__(self):
        require(self.num_steps >= 1, "num_steps", self.num_steps, "must be >= 1")
        require(-1 <= self.match_cosine <= 1, "match_cosine", self.match_cosine, "in [-1, 1]")
        entropy = self.universal_entropy
        require(0 <= entropy <= 1, "universal_entropy", entropy, "must be in [0, 1]")
        require(
            0.5 < self.specific_share <= 1,
            "specific_share",
            self.specific_share,
            "must be in (0.5, 1]",
        )


class Matching(NamedTuple):
    """A one-to-one matching of reference atoms ``[n, d]`` to candidate atoms ``[n', d]``."""

    candidate_of: np.ndarray
    """``[n]`` int index of the candidate atom assigned to each reference atom (-1: none, when
    there are fewer candidates than references)."""

    cosine: np.ndarray
    """``[n]`` cosine of each reference atom with its assigned candidate (NaN: none)."""

    matched: np.ndarray
    """``[n]`` bool, assigned and ``cosine > min_cosine``."""


def _unit(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, np.float64)
    return rows / (np.linalg.norm(rows, axis=1, keepdims=True) + 1e-12)


def match_dictionaries(reference: np.ndarray, candidate: np.ndarray, min_cosine: float = 0.5):
    """Hungarian matching (``scipy.optimize.linear_sum_assignment``, cost ``1 - cos``).

    Args:
      reference: ``[n, d]`` atoms (raw or normalised), e.g. the USAE's rows for one model.
      candidate: ``[n', d]`` atoms, e.g. an independent SAE's dictionary.
      min_cosine: a pair is a match when its cosine exceeds this.

    Returns:
      :class:`Matching` indexed by reference atom.
    """
    cosines = _unit(reference) @ _unit(candidate).T
    rows, cols = linear_sum_assignment(1.0 - cosines)
    candidate_of = np.full(len(reference), -1)
    cosine = np.full(len(reference), np.nan)
    candidate_of[rows], cosine[rows] = cols, cosines[rows, cols]
    matched = np.where(np.isnan(cosine), False, np.nan_to_num(cosine) > min_cosine)
    return Matching(candidate_of, cosine, matched)


def random_atoms_like(dictionary: np.ndarray, seed: int = 0) -> np.ndarray:
    """Gaussian atoms ``[n, d]`` with the scalar mean and standard deviation of ``dictionary``."""
    dictionary = np.asarray(dictionary, np.float64)
    rng = np.random.default_rng(seed)
    return dictionary.mean() + dictionary.std() * rng.standard_normal(dictionary.shape)


def independent_sae_config(
    config: TrainConfig, name: str, num_steps: int, seed: int | None = None
) -> TrainConfig:
    """The USAE's training config restricted to model ``name`` (``M = 1``), for ``num_steps``,
    with ``seed`` (None: the USAE's)."""
    width = config.usae.width_of(name)
    usae = dataclasses.replace(config.usae, model_names=(name,), widths=(width,))
    return replace_fields(
        dataclasses.replace(config, usae=usae, checkpoint_every=num_steps, progress_bar=False),
        num_steps=num_steps,
        seed=seed,
    )


def train_independent_saes(
    config: TrainConfig,
    arrays: dict[str, np.ndarray],
    workdir: str | os.PathLike,
    num_steps: int,
    seed: int | None = None,
) -> dict[str, np.ndarray]:
    """Train one SAE per model into ``workdir/<name>``; return ``{name: unit dictionary [n, d]}``.
    ``seed``: :attr:`BaselineConfig.sae_seed`.

    Each SAE sees its model's activations standardised exactly as the USAE's training did (one
    scalar mean and std per model, fitted on the same array).
    """
    dictionaries = {}
    for name in config.usae.model_names:
        single = independent_sae_config(config, name, num_steps, seed)
        result = train(single, os.path.join(workdir, name), ArraySource({name: arrays[name]}))
        raw = jax.device_get(result.state.params["models"][name]["dictionary"])
        dictionaries[name] = np.asarray(normalize_dictionary(raw))
    return dictionaries


def _planted_specific_found(row_matches: np.ndarray, matched: np.ndarray) -> float:
    """Fraction of the planted specific concepts in ``row_matches`` ``[n]`` (strings such as
    "specific:3") with at least one of their USAE rows in ``matched`` ``[n]``."""
    planted = sorted({m for m in row_matches.tolist() if m.startswith("specific:")})
    if not planted:
        return float("nan")
    return float(np.mean([matched[row_matches == p].any() for p in planted]))


def _indices(mask: np.ndarray, limit: int = 50) -> list[int]:
    return np.flatnonzero(mask)[:limit].tolist()


def compare_with_independent(
    usae_dictionaries: dict[str, np.ndarray],
    sae_dictionaries: dict[str, np.ndarray],
    fire_counts: np.ndarray,
    entropy: np.ndarray,
    config: BaselineConfig = BaselineConfig(),
    planted_matches: np.ndarray | None = None,
) -> dict:
    """Which USAE concepts the independent SAEs also find.

    Args:
      usae_dictionaries: ``{name: [n, d_m]}`` the USAE's atoms for each model.
      sae_dictionaries: ``{name: [n', d_m]}`` each independent SAE's atoms.
      fire_counts: ``[M, n]`` USAE firing counts per model (names in ``usae_dictionaries``'
        order).
      entropy: ``[n]`` USAE firing entropy.
      planted_matches: optional ``[M, n]`` str, each USAE row's planted match from
        :func:`usae_jax.analysis.universality.label_planted_concepts` ("specific:3", ...); adds,
        per model, the fraction of the planted model-specific concepts (among those some USAE
        row matches) for which at least one such row is matched by the independent SAE.

    Returns:
      A JSON-ready dict per model: the fraction of its firing USAE concepts matched (and the
      random-atom chance level), of the universal concepts matched, of the concepts unique to
      that model matched, and lists (first 50 indices) of the universal concepts found and
      missed and of the unique concepts.
    """
    names = tuple(usae_dictionaries)
    fire_counts = np.asarray(fire_counts)
    totals = fire_counts.sum(axis=0)
    fired_any = totals > 0
    universal = fired_any & (entropy >= config.universal_entropy)
    share = np.divide(fire_counts, totals, out=np.zeros(fire_counts.shape), where=totals > 0)
    report = {"match_cosine": config.match_cosine, "num_universal": int(universal.sum())}
    for m, name in enumerate(names):
        matching = match_dictionaries(
            usae_dictionaries[name], sae_dictionaries[name], config.match_cosine
        )
        chance = match_dictionaries(
            usae_dictionaries[name],
            random_atoms_like(sae_dictionaries[name], config.seed + m),
            config.match_cosine,
        )
        fired = fire_counts[m] > 0
        unique = fired & (share[m] >= config.specific_share)
        fraction = lambda mask, match: float(match[mask].mean()) if mask.any() else float("nan")
        report[name] = {
            "matched_fraction": fraction(fired, matching.matched),
            "random_atoms_matched_fraction": fraction(fired, chance.matched),
            "mean_matched_cosine": float(np.nanmean(matching.cosine[fired])),
            "universal_matched_fraction": fraction(universal, matching.matched),
            "num_unique": int(unique.sum()),
            "unique_matched_fraction": fraction(unique, matching.matched),
            "universal_found": _indices(universal & matching.matched),
            "universal_missed": _indices(universal & ~matching.matched),
            "unique_concepts": _indices(unique),
            "unique_missed": _indices(unique & ~matching.matched),
        }
        if planted_matches is not None:
            report[name]["planted_specific_found_fraction"] = _planted_specific_found(
                np.asarray(planted_matches)[m], matching.matched
            )
    return report
