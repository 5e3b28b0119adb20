"""How well a trained dictionary recovers planted concepts: best cosines per planted direction.

Scores a run on planted data (:mod:`usae_jax.data.synthetic.planted`) against its ground truth:
per model, each planted direction's best cosine with a dictionary row, summarised per group
(shared, model-specific) in cosine bands. Shapes: ``n`` concepts, ``d`` model width, ``c``
planted directions.
"""

from __future__ import annotations

import numpy as np

from usae_jax.data.synthetic.planted import PlantedData

RECOVERY_BANDS = (0.6, 0.75, 0.9)
"""Edges of the cosine bands recovery is counted in: <0.6, 0.6-0.75, 0.75-0.9, >=0.9."""


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


def recovery(params: dict, planted: PlantedData) -> dict[str, float]:
    """Per model, mean over planted shared concepts of the best cosine with a dictionary row."""
    return {
        name: mean_max_cosine(np.asarray(params["models"][name]["dictionary"]), directions)
        for name, directions in planted.shared_directions.items()
    }


def _describe(cosines: np.ndarray, rows: np.ndarray, frequency: np.ndarray, worst: int) -> dict:
    """Distribution of one group's best cosines; ``rows`` their best dictionary rows."""
    edges = (-np.inf, *RECOVERY_BANDS, np.inf)
    labels = [f"<{RECOVERY_BANDS[0]}"]
    labels += [f"{a}-{b}" for a, b in zip(RECOVERY_BANDS, RECOVERY_BANDS[1:], strict=False)]
    labels += [f">={RECOVERY_BANDS[-1]}"]
    counts = np.histogram(cosines, bins=edges)[0]
    if cosines.size == 0:
        stats = dict.fromkeys(("mean", "min", "p10", "median"))
        return {"count": 0, **stats, "bands": dict.fromkeys(labels, 0), "worst": [], "cosines": []}
    order = np.argsort(cosines, kind="stable")[:worst]
    return {
        "count": int(cosines.size),
        "mean": float(cosines.mean()),
        "min": float(cosines.min()),
        "p10": float(np.percentile(cosines, 10)),
        "median": float(np.median(cosines)),
        "bands": {label: int(n) for label, n in zip(labels, counts, strict=True)},
        "worst": [
            {
                "concept": int(i),
                "cosine": round(float(cosines[i]), 4),
                "frequency": round(float(frequency[i]), 4),
                "row": int(rows[i]),
            }
            for i in order
        ],
        "cosines": [round(float(c), 4) for c in cosines],
    }


def recovery_report(params: dict, planted: PlantedData, worst: int = 3) -> dict[str, dict]:
    """Per model and per planted concept, the best cosine with a row of that model's dictionary.

    Args:
      params: USAE parameters (``params["models"][name]["dictionary"]`` is ``[n, d]``).
      planted: the ground truth.
      worst: how many of the least recovered concepts to list per group.

    Returns:
      ``{name: {"shared": group, "specific": group, "shared_rows_reused": int}}``. A group
      holds ``count``, ``mean``, ``min``, ``p10``, ``median``, ``bands`` (concepts per cosine
      band, edges :data:`RECOVERY_BANDS`), ``worst`` (``concept``, ``cosine``, ``frequency``:
      fraction of rows holding it, ``row``: its best dictionary row) and ``cosines`` (every
      concept, in concept order); the statistics are ``None`` for an empty group.
      ``shared_rows_reused`` counts shared concepts whose best row
      is also the best row of another planted concept of that model (merged concepts).
    """
    report = {}
    shared_frequency = (planted.shared_codes > 0).mean(axis=0)
    for name, shared in planted.shared_directions.items():
        dictionary = np.asarray(params["models"][name]["dictionary"], np.float64)
        specific = planted.specific_directions[name]
        shared_cos, shared_rows = max_cosines(dictionary, shared)
        specific_cos, specific_rows = max_cosines(dictionary, specific)
        codes = planted.specific_codes.get(name)
        specific_frequency = (
            (codes > 0).mean(axis=0) if codes is not None else np.full(len(specific), np.nan)
        )
        every_row = np.concatenate([shared_rows, specific_rows])
        unique, counts = np.unique(every_row, return_counts=True)
        reused = np.isin(shared_rows, unique[counts > 1])
        report[name] = {
            "shared": _describe(shared_cos, shared_rows, shared_frequency, worst),
            "specific": _describe(specific_cos, specific_rows, specific_frequency, worst),
            "shared_rows_reused": int(reused.sum()),
        }
    return report
