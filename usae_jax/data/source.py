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


STD_EPSILON = 1e-5
"""Added to the std before dividing, as the official code does: ``(x - mean) / (std + 1e-5)``."""


def check_finite(
    name: str, array: np.ndarray, where: str, row_ids: np.ndarray | None = None
) -> None:
    """Raise ``ValueError`` naming the model and the first bad row if ``array`` has NaN/Inf.

    Args:
      name: the model, named in the message.
      array: ``[rows, ...]`` values to check.
      where: what ``array`` is, for the message (e.g. ``"store runs/x"``).
      row_ids: ``[rows]`` the source's row number of each row of ``array`` (default: the position
        in ``array``), so a batch of sampled rows reports the row of the source, not of the batch.
    """
    finite = np.isfinite(array)
    if not finite.all():
        bad = np.nonzero(~finite.all(axis=tuple(range(1, array.ndim))))[0]
        first = int(bad[0]) if row_ids is None else int(np.asarray(row_ids)[bad[0]])
        raise ValueError(
            f"non-finite activations (NaN/Inf) for model {name!r} in {where}: "
            f"{bad.size} bad rows, first at row {first}"
        )


@dataclasses.dataclass(frozen=True)
class Standardisation:
    """One scalar mean and std per model, as the official code standardises activations.

    ``apply`` computes ``(x - mean) / (std + epsilon)`` with ``std`` the unbiased (``ddof=1``)
    standard deviation over all rows and channels, which is what the official code does with
    ``torch.std`` and ``1e-5``.
    """

    mean: Mapping[str, float]
    """Scalar mean per model."""

    std: Mapping[str, float]
    """Scalar unbiased (``ddof=1``) standard deviation per model (1.0 for constant data)."""

    epsilon: float = STD_EPSILON
    """Added to ``std`` before dividing (stores written before it existed used 0)."""

    @classmethod
    def fit(
        cls,
        arrays: Mapping[str, np.ndarray],
        max_rows: int | None = 200_000,
        row_ids: np.ndarray | None = None,
        epsilon: float = STD_EPSILON,
    ) -> Standardisation:
        """Scalar mean/std over (at most ``max_rows`` evenly spaced) rows and all channels.

        Args:
          arrays: ``{name: [rows, width]}``, the same number of rows per model.
          max_rows: sample at most this many evenly spaced rows (``None``: every row).
          row_ids: ``[rows]`` the source's row number of each row of ``arrays`` (for errors;
            default ``arange(rows)``).
          epsilon: stored as :attr:`epsilon`.

        Raises:
          ValueError: a sampled row holds NaN/Inf (naming the model and the first such row; a
            NaN would otherwise poison the mean and every row after standardisation), or fewer
            than two values to take an unbiased std of.
        """
        mean, std = {}, {}
        for name, array in arrays.items():
            stride = 1 if max_rows is None else max(1, len(array) // max_rows)
            sample = np.asarray(array[::stride], dtype=np.float64)
            ids = np.arange(len(array)) if row_ids is None else np.asarray(row_ids)
            check_finite(name, sample, "the rows the standardisation is fitted on", ids[::stride])
            if sample.size < 2:
                raise ValueError(
                    f"model {name!r}: need at least 2 values to fit a standardisation, "
                    f"got shape {sample.shape}"
                )
            mean[name] = float(sample.mean())
            std[name] = float(sample.std(ddof=1)) or 1.0
        return cls(mean=mean, std=std, epsilon=epsilon)

    def scale(self, name: str) -> float:
        """The divisor of model ``name``: ``std + epsilon``."""
        return self.std[name] + self.epsilon

    def apply(self, name: str, array: np.ndarray) -> np.ndarray:
        """``(array - mean) / (std + epsilon)`` as float32, any shape."""
        return ((np.asarray(array, np.float32) - self.mean[name]) / self.scale(name)).astype(
            np.float32
        )


class ArraySource:
    """A paired source over in-memory (or memory-mapped) arrays, one ``[rows, width]`` per model.

    Args:
      arrays: ``{name: [rows, width]}``; every model must have the same number of rows.
      standardise: fit one scalar mean/std per model and apply ``(x - mean) / (std + 1e-5)``
        (unbiased std) to every batch, the official recipe. Pass ``False`` for data that is
        already standardised.
      standardisation: apply this one instead of fitting (e.g. the training data's, to read
        held-out rows exactly as training read its own); needs ``standardise``.
    """

    def __init__(
        self,
        arrays: Mapping[str, np.ndarray],
        standardise: bool = True,
        standardisation: Standardisation | None = None,
    ):
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
        if standardisation is not None:
            if not standardise:
                raise ValueError("a standardisation was given with standardise=False")
            missing = [n for n in self._names if n not in standardisation.mean]
            if missing:
                raise ValueError(f"the standardisation given has no statistics for {missing}")
        elif standardise:
            standardisation = Standardisation.fit(self._arrays)
        self.standardisation = standardisation

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
        if isinstance(indices, slice):
            row_ids = np.arange(*indices.indices(self._rows))
        else:
            row_ids = np.asarray(indices)
        for name in self._names:
            block = np.asarray(self._arrays[name][indices], np.float32)
            if self.standardisation is not None:
                block = self.standardisation.apply(name, block)
            check_finite(name, block, "the requested rows", row_ids)
            out[name] = block
        return out

    def batch(self, step: int, batch_rows: int, seed: int) -> dict[str, np.ndarray]:
        return self.rows(epoch_rows(self._rows, step, batch_rows, seed))
