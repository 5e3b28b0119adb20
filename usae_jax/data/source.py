"""Paired activation sources: what the training loop reads.

A *paired source* holds, for every model, a matrix of activations with one row per token, where
row ``r`` of every model is the same input (the same image patch, the same sentence). The loop
asks for the batch of a given step; the answer depends only on ``(seed, step)``, so a resumed run
reads exactly the rows an uninterrupted one would have read.

Shuffling is by epoch: epoch ``e`` visits the rows in the order
``numpy.random.default_rng([seed, e]).permutation(num_rows)``, in consecutive slices of
``batch_rows`` (the ragged tail of each epoch is dropped, as a torch ``DataLoader`` with
``drop_last=True`` would).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class PairedSource(Protocol):
    """Anything the training loop can read paired batches from."""

    @property
    def names(self) -> tuple[str, ...]:
        """Model names, in the order of the USAE config."""

    @property
    def widths(self) -> tuple[int, ...]:
        """Activation width per model."""

    @property
    def num_rows(self) -> int:
        """Number of paired rows (tokens) available."""

    def rows(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """Standardised rows at sorted ``indices``: ``{name: float32 [len(indices), width]}``."""

    def batch(self, step: int, batch_rows: int, seed: int) -> dict[str, np.ndarray]:
        """The standardised batch of ``step``: ``{name: float32 [batch_rows, width]}``."""


def epoch_rows(num_rows: int, step: int, batch_rows: int, seed: int) -> np.ndarray:
    """Row indices of the batch of ``step``: shape ``[batch_rows]``, sorted ascending.

    Sorting inside a batch does not change any loss (all are means over rows) and makes
    memory-mapped reads sequential.
    """
    steps_per_epoch = num_rows // batch_rows
    if steps_per_epoch < 1:
        raise ValueError(f"batch_rows={batch_rows} is larger than the source's {num_rows} rows")
    epoch, offset = divmod(step, steps_per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(num_rows)
    return np.sort(order[offset * batch_rows : (offset + 1) * batch_rows])


def check_finite(name: str, array: np.ndarray, where: str) -> None:
    """Raise ``ValueError`` naming the model and the first bad row if ``array`` has NaN/Inf."""
    finite = np.isfinite(array)
    if not finite.all():
        bad_rows = np.nonzero(~finite.all(axis=tuple(range(1, array.ndim))))[0]
        raise ValueError(
            f"non-finite activations (NaN/Inf) for model {name!r} in {where}: "
            f"{bad_rows.size} bad rows, first at row {int(bad_rows[0])}"
        )


@dataclasses.dataclass(frozen=True)
class Standardisation:
    """One scalar mean and std per model, as the official code standardises activations."""

    mean: Mapping[str, float]
    std: Mapping[str, float]

    @classmethod
    def fit(cls, arrays: Mapping[str, np.ndarray], max_rows: int = 200_000) -> Standardisation:
        """Scalar mean/std over (at most ``max_rows`` evenly spaced) rows and all channels."""
        mean, std = {}, {}
        for name, array in arrays.items():
            stride = max(1, len(array) // max_rows)
            sample = np.asarray(array[::stride], dtype=np.float64)
            mean[name] = float(sample.mean())
            std[name] = float(sample.std()) or 1.0
        return cls(mean=mean, std=std)

    def apply(self, name: str, array: np.ndarray) -> np.ndarray:
        """``(array - mean) / std`` as float32, any shape."""
        return ((np.asarray(array, np.float32) - self.mean[name]) / self.std[name]).astype(
            np.float32
        )


class ArraySource:
    """A paired source over in-memory (or memory-mapped) arrays, one ``[rows, width]`` per model.

    Args:
      arrays: ``{name: [rows, width]}``; every model must have the same number of rows.
      standardise: fit one scalar mean/std per model and apply it to every batch (the official
        recipe). Pass ``False`` for data that is already standardised.
    """

    def __init__(self, arrays: Mapping[str, np.ndarray], standardise: bool = True):
        if not arrays:
            raise ValueError("a paired source needs at least one model; got an empty mapping")
        rows = {name: int(np.shape(a)[0]) for name, a in arrays.items()}
        if len(set(rows.values())) != 1:
            raise ValueError(f"models have different row counts (rows must be paired): {rows}")
        for name, array in arrays.items():
            if np.ndim(array) != 2:
                raise ValueError(
                    f"activations of model {name!r} must be 2-D [rows, width], "
                    f"got shape {np.shape(array)}"
                )
        self._arrays = dict(arrays)
        self._names = tuple(arrays)
        self._rows = next(iter(rows.values()))
        self.standardisation = Standardisation.fit(self._arrays) if standardise else None

    @classmethod
    def from_npy(cls, paths: Mapping[str, str | os.PathLike], standardise: bool = True):
        """Open one ``.npy`` file per model, memory-mapped: ``{name: path}``."""
        arrays = {}
        for name, path in paths.items():
            if not os.path.exists(path):
                raise FileNotFoundError(f"activation file for model {name!r} not found: {path}")
            try:
                arrays[name] = np.load(path, mmap_mode="r")
            except ValueError as err:
                raise ValueError(f"cannot read {path} as a .npy array: {err}") from err
        return cls(arrays, standardise=standardise)

    @property
    def names(self) -> tuple[str, ...]:
        return self._names

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(int(self._arrays[n].shape[1]) for n in self._names)

    @property
    def num_rows(self) -> int:
        return self._rows

    def rows(self, indices: np.ndarray | slice) -> dict[str, np.ndarray]:
        """Standardised float32 rows ``{name: [len(indices), width]}``, checked for NaN/Inf."""
        out = {}
        for name in self._names:
            block = np.asarray(self._arrays[name][indices], np.float32)
            if self.standardisation is not None:
                block = self.standardisation.apply(name, block)
            check_finite(name, block, "the requested rows")
            out[name] = block
        return out

    def batch(self, step: int, batch_rows: int, seed: int) -> dict[str, np.ndarray]:
        return self.rows(epoch_rows(self._rows, step, batch_rows, seed))
