"""Per-concept statistics of a trained USAE over a dataset, in one streamed, jitted pass.

Every model encodes its own activations of each token (BatchNorm in eval mode, as the paper's
analysis does) under the model's own sparsity rule (``usae_jax.model.inference``: global TopK
for a global-TopK SPARC model). Shapes: ``M`` models, ``n`` concepts, ``B`` rows
per batch, ``t`` top examples.
Counts are accumulated on the host in int64/float64, so any number of rows can be streamed.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np

from usae_jax.config import USAEConfig
from usae_jax.model.inference import encode_models_eval
from usae_jax.model.usae import normalize_dictionary
from usae_jax.train.metrics import encoding_name, evaluate
from usae_jax.validation import require


class RowSource(Protocol):
    """Paired activations readable by row index (``usae_jax.data.source.ArraySource`` is one)."""

    @property
    def names(self) -> tuple[str, ...]: ...

    @property
    def num_rows(self) -> int: ...

    def rows(self, indices: np.ndarray | slice) -> dict[str, np.ndarray]:
        """Standardised rows ``{name: float32 [len(indices), width]}``."""


@dataclasses.dataclass(kw_only=True, frozen=True)
class StatisticsConfig:
    """How the concept statistics are gathered."""

    tau: float = 0.1
    """A concept fires on a token for a model when its code exceeds ``tau`` (paper: 0.1)."""

    batch_rows: int = 4096
    """Rows encoded per jitted call (the last batch is padded and masked, never recompiled)."""

    max_rows: int | None = None
    """Use only the first ``max_rows`` rows of the source; None: all of them."""

    num_top: int = 16
    """Top-activating rows kept per concept and model."""

    def __post_init__(self):
        require(self.tau >= 0, "tau", self.tau, "must be >= 0")
        require(self.batch_rows >= 1, "batch_rows", self.batch_rows, "must be >= 1")
        rows = self.max_rows
        require(rows is None or rows >= 1, "max_rows", rows, "must be >= 1 or None")
        require(self.num_top >= 1, "num_top", self.num_top, "must be >= 1")


@dataclasses.dataclass(frozen=True)
class ConceptStatistics:
    """Raw accumulated statistics (derived measures: :mod:`usae_jax.analysis.universality`)."""

    model_names: tuple[str, ...]
    """The ``M`` models, in the USAE config's order."""

    tau: float
    """Firing threshold used."""

    num_rows: int
    """Tokens analysed."""

    fire_counts: np.ndarray
    """``[M, n]`` int64 ``|F_c^m|``: tokens where concept c's code exceeds tau for model m."""

    nonzero_counts: np.ndarray
    """``[M, n]`` int64 tokens where the code is non-zero (selected by the TopK and > 0)."""

    activation_sum: np.ndarray
    """``[M, n]`` float64 sum of the codes over all tokens."""

    squared_activation_sum: np.ndarray
    """``[M, n]`` float64 sum of the squared codes over all tokens."""

    cofire_counts: np.ndarray
    """``[n]`` int64 ``|C_c|``: tokens where concept c fires for every model."""

    pairwise_cofire: np.ndarray
    """``[M, M, n]`` int64 tokens where concept c fires for both model i and model j (the
    diagonal equals ``fire_counts``)."""

    energy: np.ndarray
    """``[M, n]`` official importance per model: ``||E_x[z_c] D̂_c||`` (unsquared) computed per
    batch and averaged over batches (weighted by the rows in each batch)."""

    top_values: np.ndarray
    """``[M, n, t]`` largest codes of each concept for each model, descending."""

    top_rows: np.ndarray
    """``[M, n, t]`` int64 row indices of ``top_values`` in the source."""

    r2: np.ndarray
    """``[M, M]`` R² with the official scalar centring (row: encoding model, column: decoded
    model), per batch and averaged over batches weighted by rows."""

    r2_per_feature: np.ndarray
    """``[M, M]`` R² with per-feature centring (1 - FVU), averaged the same way."""

    encoding: str = "local TopK"
    """The sparsity rule every statistic was encoded with
    (``usae_jax.train.metrics.encoding_name``)."""

    @property
    def mean_activation(self) -> np.ndarray:
        """``[M, n]`` mean code over all tokens, ``E_x[z_c]`` for each model."""
        return self.activation_sum / max(self.num_rows, 1)

    @property
    def total_energy(self) -> np.ndarray:
        """``[n]`` importance summed over models (the official ranking)."""
        return self.energy.sum(axis=0)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _batch_statistics(usae: USAEConfig, tau: float, num_top: int, params, stats, batch, valid):
    """Statistics of one padded batch; ``valid`` ``[B]`` masks the padding rows."""
    encoded = encode_models_eval(usae, params, stats, batch)
    codes = jnp.stack([encoded[name].codes for name in usae.model_names])  # [M, B, n]
    codes = codes * valid[None, :, None]
    fires = (codes > tau).astype(jnp.float32)
    rows = jnp.sum(valid)
    top_values, top_rows = jax.lax.top_k(
        jnp.where(valid[None, None, :] > 0, jnp.swapaxes(codes, 1, 2), -jnp.inf), num_top
    )  # [M, n, t]
    return {
        "fire_counts": jnp.sum(fires, axis=1),
        "nonzero_counts": jnp.sum(codes > 0, axis=1),
        "activation_sum": jnp.sum(codes, axis=1),
        "squared_activation_sum": jnp.sum(jnp.square(codes), axis=1),
        "cofire_counts": jnp.sum(jnp.prod(fires, axis=0), axis=0),
        "pairwise_cofire": jnp.einsum("ibn,jbn->ijn", fires, fires),
        "batch_mean": jnp.sum(codes, axis=1) / rows,
        "top_values": top_values,
        "top_rows": top_rows,
    }


def _merge_top(values, rows, new_values, new_rows, num_top):
    """Keep the ``num_top`` largest of two ``[M, n, t]`` candidate sets (stable on ties)."""
    values = np.concatenate([values, new_values], axis=-1)
    rows = np.concatenate([rows, new_rows], axis=-1)
    order = np.argsort(-values, axis=-1, kind="stable")[..., :num_top]
    return np.take_along_axis(values, order, -1), np.take_along_axis(rows, order, -1)


def compute_statistics(
    usae: USAEConfig,
    params: dict,
    batch_stats: dict,
    source: RowSource,
    config: StatisticsConfig = StatisticsConfig(),
) -> ConceptStatistics:
    """Stream ``source`` through every model's encoder and accumulate :class:`ConceptStatistics`.

    Args:
      usae: the USAE's config (model names must match ``source.names``).
      params, batch_stats: trained parameters and BatchNorm statistics (host or device arrays).
      source: paired rows; row r of every model is the same token.
      config: threshold, batch size, row limit and number of top examples.
    """
    if tuple(source.names) != usae.model_names:
        raise ValueError(
            f"source models {source.names} differ from the USAE's {usae.model_names}: analyse a "
            "run on the activations it was trained on (the same models, in the same order)"
        )
    num_rows = source.num_rows if config.max_rows is None else min(config.max_rows, source.num_rows)
    M, n = usae.num_models, usae.num_concepts
    num_top = min(config.num_top, num_rows)
    dictionary_norms = np.stack(
        [
            np.linalg.norm(
                np.asarray(normalize_dictionary(params["models"][m]["dictionary"])), axis=1
            )
            for m in usae.model_names
        ]
    )  # [M, n], 1 up to the 1e-8 of the normalisation
    totals = {
        key: np.zeros(shape, np.float64)
        for key, shape in {
            "fire_counts": (M, n),
            "nonzero_counts": (M, n),
            "activation_sum": (M, n),
            "squared_activation_sum": (M, n),
            "cofire_counts": (n,),
            "pairwise_cofire": (M, M, n),
            "energy": (M, n),
            "r2": (M, M),
            "r2_per_feature": (M, M),
        }.items()
    }
    top_values = np.full((M, n, 0), -np.inf)
    top_rows = np.zeros((M, n, 0), np.int64)
    batch_rows = min(config.batch_rows, num_rows)
    for start in range(0, num_rows, batch_rows):
        stop = min(start + batch_rows, num_rows)
        block = source.rows(slice(start, stop))
        pad = batch_rows - (stop - start)
        padded = {k: np.pad(v, ((0, pad), (0, 0))) for k, v in block.items()}
        valid = np.concatenate([np.ones(stop - start, np.float32), np.zeros(pad, np.float32)])
        out = jax.device_get(
            _batch_statistics(
                usae,
                float(config.tau),
                min(num_top, batch_rows),
                params,
                batch_stats,
                padded,
                valid,
            )
        )
        for key in ("fire_counts", "nonzero_counts", "activation_sum", "squared_activation_sum"):
            totals[key] += out[key]
        totals["cofire_counts"] += out["cofire_counts"]
        totals["pairwise_cofire"] += out["pairwise_cofire"]
        weight = stop - start
        totals["energy"] += (
            weight * np.abs(np.asarray(out["batch_mean"], np.float64)) * dictionary_norms
        )
        scores = evaluate(usae, params, batch_stats, block)
        totals["r2"] += weight * scores["r2"]
        totals["r2_per_feature"] += weight * scores["r2_per_feature"]
        top_values, top_rows = _merge_top(
            top_values,
            top_rows,
            out["top_values"],
            out["top_rows"].astype(np.int64) + start,
            num_top,
        )
    as_int = lambda a: np.rint(a).astype(np.int64)
    return ConceptStatistics(
        model_names=usae.model_names,
        tau=float(config.tau),
        num_rows=num_rows,
        fire_counts=as_int(totals["fire_counts"]),
        nonzero_counts=as_int(totals["nonzero_counts"]),
        activation_sum=totals["activation_sum"],
        squared_activation_sum=totals["squared_activation_sum"],
        cofire_counts=as_int(totals["cofire_counts"]),
        pairwise_cofire=as_int(totals["pairwise_cofire"]),
        energy=totals["energy"] / num_rows,
        top_values=top_values,
        top_rows=top_rows,
        r2=totals["r2"] / num_rows,
        r2_per_feature=totals["r2_per_feature"] / num_rows,
        encoding=encoding_name(usae),
    )


def statistics_summary(statistics: ConceptStatistics) -> Mapping[str, object]:
    """JSON-ready per-model dead fractions on the analysed rows and R² matrices.

    ``dead_on_data``: fraction of concepts never non-zero on the ``num_rows`` analysed rows;
    ``dead_on_data_above_tau``: never above tau there. (Training's ``dead_recent`` is another
    measure: not fired in the last epoch's training rows.) ``r2_encoding`` names the sparsity
    rule the codes and R² were computed with.
    """
    names = statistics.model_names
    return {
        "num_rows": statistics.num_rows,
        "tau": statistics.tau,
        "dead_on_data": dict(
            zip(names, np.mean(statistics.nonzero_counts == 0, axis=1).tolist(), strict=True)
        ),
        "dead_on_data_above_tau": dict(
            zip(names, np.mean(statistics.fire_counts == 0, axis=1).tolist(), strict=True)
        ),
        "r2_encoding": statistics.encoding,
        "r2_scalar_centring": statistics.r2.tolist(),
        "r2_per_feature_centring": statistics.r2_per_feature.tolist(),
    }
