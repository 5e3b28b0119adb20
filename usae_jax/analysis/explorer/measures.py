"""What the concept explorer shows beyond the analysis statistics, all plain numpy on the host.

One streamed pass over the data (:func:`concept_pass`) gives each concept's firing histogram per
model and the concepts it fires together with; :func:`nearest_concepts` ranks each model's
dictionary rows by cosine; :func:`concept_table` gathers the index columns. Shapes: ``M``
models, ``n`` concepts, ``B`` rows per batch, ``k`` kept codes per row.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse

from usae_jax.analysis import universality as uni
from usae_jax.analysis.diffing import ModelDiffing
from usae_jax.analysis.statistics import ConceptStatistics, RowSource, StatisticsConfig
from usae_jax.config import USAEConfig
from usae_jax.model.inference import encode_models_eval
from usae_jax.model.usae import normalize_dictionary
from usae_jax.validation import require


@dataclasses.dataclass(kw_only=True, frozen=True)
class ExplorerConfig:
    """What the explorer site computes and shows."""

    statistics: StatisticsConfig = dataclasses.field(default_factory=StatisticsConfig)
    """Firing threshold, batch size, row limit and top rows kept (as the analysis)."""

    num_examples: int = 8
    """Top-activating rows listed per concept and model (at most ``statistics.num_top``)."""

    num_images: int = 4
    """Top images (with the concept's heatmap) per concept and model, for image runs."""

    image_concepts: int | None = 512
    """Concepts (highest energy first) that get image crops; None: every firing concept."""

    image_px: int = 128
    """Side in pixels of each saved image crop."""

    crop_patches: int | None = None
    """Crop images to this many grid cells around the heatmap's peak; None: whole images."""

    histogram_bins: int = 20
    """Bins of each firing histogram, over (tau, the concept's largest code for the model]."""

    num_neighbours: int = 8
    """Nearest concepts (cosine of dictionary rows) listed per model."""

    num_cofiring: int = 8
    """Concepts listed that fire together with the concept on the same token."""

    unique_share: float = 0.95
    """A firing concept is unique to a model when that model has this share of its firings."""

    page_rows: int = 100
    """Index table rows per page."""

    write_json: bool = True
    """Also write the JSON export (``json/index.json``, ``json/concepts/<id>.json``)."""

    def __post_init__(self):
        for name in ("num_examples", "num_images", "image_px", "histogram_bins", "page_rows"):
            require(getattr(self, name) >= 1, name, getattr(self, name), "must be >= 1")
        for name in ("num_neighbours", "num_cofiring"):
            require(getattr(self, name) >= 0, name, getattr(self, name), "must be >= 0")
        shown, crop = self.image_concepts, self.crop_patches
        require(shown is None or shown >= 0, "image_concepts", shown, "must be >= 0 or None")
        require(crop is None or crop >= 1, "crop_patches", crop, "must be >= 1 or None")
        require(
            0.5 < self.unique_share <= 1, "unique_share", self.unique_share, "must be in (0.5, 1]"
        )


@dataclasses.dataclass(frozen=True)
class ConceptPass:
    """Firing histograms and co-firing partners of every concept."""

    histogram: np.ndarray
    """``[M, n, bins]`` int64 tokens whose code is above tau, in equal bins over
    ``(tau, histogram_max]``."""

    histogram_max: np.ndarray
    """``[M, n]`` upper edge of the bins: the concept's largest code for the model (tau when it
    never fires)."""

    partners: np.ndarray
    """``[n, p]`` int64 the concepts that most often fire on the same token for the same model,
    most frequent first; -1 pads."""

    partner_counts: np.ndarray
    """``[n, p]`` int64 (token, model) pairs on which both fire, summed over models."""


@functools.partial(jax.jit, static_argnums=(0,))
def _top_codes(usae: USAEConfig, params: dict, stats: dict, batch: dict):
    """``(values, indices)``, each ``[M, B, k]``: every model's kept codes (eval mode, each
    model with its own sparsity rule: a global-TopK SPARC model shares one support per row).

    Rules that keep a varying number of codes per row (BatchTopK, L1) give each row's
    ``min(n, 4 k)`` largest codes: a row with more active concepts than that loses its
    weakest ones from the histograms and co-firing counts."""
    encodings = encode_models_eval(usae, params, stats, batch)
    values, indices = [], []
    for name in usae.model_names:
        e = encodings[name]
        if e.top_indices is None:
            v, i = jax.lax.top_k(e.codes, min(usae.num_concepts, 4 * usae.top_k))
        else:
            v, i = e.top_values, e.top_indices
        values.append(v)
        indices.append(i)
    return jnp.stack(values), jnp.stack(indices)


def _top_partners(matrix: scipy.sparse.csr_matrix, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row of a sparse ``[n, n]`` count matrix, the ``count`` largest columns (-1 pads)."""
    n = matrix.shape[0]
    ids = np.full((n, count), -1, np.int64)
    counts = np.zeros((n, count), np.int64)
    for row in range(n):
        start, stop = matrix.indptr[row], matrix.indptr[row + 1]
        cols, values = matrix.indices[start:stop], matrix.data[start:stop]
        order = np.lexsort((cols, -values))[:count]
        ids[row, : len(order)] = cols[order]
        counts[row, : len(order)] = values[order]
    return ids, counts


def concept_pass(
    usae: USAEConfig,
    params: dict,
    batch_stats: dict,
    source: RowSource,
    statistics: ConceptStatistics,
    config: ExplorerConfig,
) -> ConceptPass:
    """Stream the source once more: firing histograms and co-firing partners.

    Args:
      usae, params, batch_stats: the trained model (each model encodes its own rows with its
        own sparsity rule: a global-TopK SPARC model shares one support per row).
      source: paired standardised rows (the statistics' source).
      statistics: from :func:`~usae_jax.analysis.statistics.compute_statistics` on the same
        source (its largest codes set the histogram ranges; its row count is used).
      config: threshold, batch size, histogram bins and partners kept.
    """
    tau, bins = statistics.tau, config.histogram_bins
    M, n = usae.num_models, usae.num_concepts
    top = np.maximum(statistics.top_values[:, :, 0], tau)  # [M, n]
    width = np.where(top > tau, top - tau, 1.0)
    histogram = np.zeros(M * n * bins, np.int64)
    pairs = scipy.sparse.csr_matrix((n, n), dtype=np.int64)
    pending: list[tuple[np.ndarray, np.ndarray]] = []  # (i, j) pairs not yet summed

    def flush(pairs):
        if pending:
            rows_i = np.concatenate([p[0] for p in pending])
            cols_j = np.concatenate([p[1] for p in pending])
            pending.clear()
            ones = np.ones(len(rows_i), np.int64)
            pairs = pairs + scipy.sparse.csr_matrix((ones, (rows_i, cols_j)), shape=(n, n))
        return pairs

    batch_rows = min(config.statistics.batch_rows, statistics.num_rows)
    for start in range(0, statistics.num_rows, batch_rows):
        stop = min(start + batch_rows, statistics.num_rows)
        block = source.rows(np.arange(start, stop))
        pad = batch_rows - (stop - start)
        padded = {k: np.pad(v, ((0, pad), (0, 0))) for k, v in block.items()}
        values, indices = jax.device_get(_top_codes(usae, params, batch_stats, padded))
        values, indices = values[:, : stop - start], indices[:, : stop - start].astype(np.int64)
        fires = values > tau  # [M, B, k]
        for m in range(M):
            ids, v = indices[m][fires[m]], values[m][fires[m]]
            b = np.clip(((v - tau) / width[m, ids] * bins).astype(np.int64), 0, bins - 1)
            histogram += np.bincount((m * n + ids) * bins + b, minlength=M * n * bins)
            both = fires[m][:, :, None] & fires[m][:, None, :]
            rows_i = np.broadcast_to(indices[m][:, :, None], both.shape)
            cols_j = np.broadcast_to(indices[m][:, None, :], both.shape)
            keep = both & (rows_i != cols_j)
            pending.append((rows_i[keep], cols_j[keep]))
        if sum(len(p[0]) for p in pending) > 1 << 24:  # sum in chunks: bounded memory, few adds
            pairs = flush(pairs)
    partners, partner_counts = _top_partners(flush(pairs).tocsr(), config.num_cofiring)
    return ConceptPass(
        histogram=histogram.reshape(M, n, bins),
        histogram_max=top,
        partners=partners,
        partner_counts=partner_counts,
    )


def nearest_concepts(
    dictionaries: dict[str, np.ndarray], count: int, block: int = 2048
) -> tuple[np.ndarray, np.ndarray]:
    """Per model, each concept's ``count`` nearest other concepts by cosine of dictionary rows.

    Args:
      dictionaries: ``{name: [n, d]}`` (raw or unit rows).
      count: neighbours kept (at most ``n - 1``).
      block: rows per matrix product (bounds memory at ``block x n`` floats).

    Returns:
      ``(ids [M, n, count] int64, cosines [M, n, count] float32)``, nearest first.
    """
    names = list(dictionaries)
    n = len(next(iter(dictionaries.values())))
    count = min(count, n - 1)
    ids = np.zeros((len(names), n, count), np.int64)
    cosines = np.zeros((len(names), n, count), np.float32)
    for m, name in enumerate(names):
        atoms = np.asarray(dictionaries[name], np.float32)
        atoms = atoms / (np.linalg.norm(atoms, axis=1, keepdims=True) + 1e-12)
        for start in range(0, n, block):
            sims = atoms[start : start + block] @ atoms.T  # [b, n]
            rows = np.arange(sims.shape[0])
            sims[rows, start + rows] = -np.inf
            if count == 0:
                continue
            part = np.argpartition(-sims, count - 1, axis=1)[:, :count]
            order = np.argsort(-np.take_along_axis(sims, part, 1), axis=1, kind="stable")
            best = np.take_along_axis(part, order, 1)
            ids[m, start : start + len(rows)] = best
            cosines[m, start : start + len(rows)] = np.take_along_axis(sims, best, 1)
    return ids, cosines


def unit_dictionaries(usae: USAEConfig, params: dict) -> dict[str, np.ndarray]:
    """``{name: [n, d]}`` each model's dictionary with unit rows (as the model decodes)."""
    return {
        name: np.asarray(normalize_dictionary(params["models"][name]["dictionary"]))
        for name in usae.model_names
    }


def unique_model(fire_counts: np.ndarray, share: float) -> np.ndarray:
    """``[M, n] -> [n]`` int64: the model holding at least ``share`` of a concept's firings, or -1
    (also -1 for a concept that never fires)."""
    counts = np.asarray(fire_counts, np.float64)
    totals = counts.sum(axis=0)
    shares = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    best = np.argmax(shares, axis=0)
    return np.where(shares.max(axis=0) >= share, best, -1).astype(np.int64)


def concept_table(statistics: ConceptStatistics, config: ExplorerConfig) -> dict[str, np.ndarray]:
    """The index columns, each ``[n]`` or ``[M, n]``.

    Keys: ``energy``, ``firing_entropy``, ``cofire_count``, ``cofire_proportion`` ``[M, n]``
    (NaN where the model never fires), ``min_cofire_proportion`` (over models, NaN counted as
    0), ``fire_count`` ``[M, n]``, ``firing_rate`` ``[M, n]`` (share of tokens), ``energy_share``
    ``[M, n]``, ``mean_activation`` ``[M, n]``, ``unique_to`` (model index or -1).
    """
    proportions = uni.cofire_proportion(statistics.cofire_counts, statistics.fire_counts)
    return {
        "energy": statistics.total_energy,
        "firing_entropy": uni.firing_entropy(statistics.fire_counts),
        "cofire_count": statistics.cofire_counts,
        "cofire_proportion": proportions,
        "min_cofire_proportion": np.nan_to_num(proportions, nan=0.0).min(axis=0),
        "fire_count": statistics.fire_counts,
        "firing_rate": statistics.fire_counts / max(statistics.num_rows, 1),
        "energy_share": uni.energy_share(statistics.squared_activation_sum),
        "mean_activation": statistics.mean_activation,
        "unique_to": unique_model(statistics.fire_counts, config.unique_share),
    }


def diffing_columns(diffing: ModelDiffing) -> dict[str, list[float]]:
    """Explorer index columns ``{column: [n]}`` of the model-diffing measures
    (:mod:`usae_jax.analysis.diffing`): ``relative_norm:<model>``, ``latent_scaling:<model>``,
    ``diffing_class`` (index into ``diffing.CLASSES``) and ``diffing_artefact`` (1 or 0)."""
    columns: dict[str, list[float]] = {}
    for m, name in enumerate(diffing.model_names):
        columns[f"relative_norm:{name}"] = diffing.relative_norm[m].tolist()
        columns[f"latent_scaling:{name}"] = diffing.latent_scaling[m].tolist()
    columns["diffing_class"] = diffing.classes.astype(float).tolist()
    columns["diffing_artefact"] = diffing.artefact.astype(float).tolist()
    return columns
