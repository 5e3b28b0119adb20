"""Metric writers: JSONL by default, TensorBoard as an option; process 0 only.

:func:`usae_jax.train.loop.train` takes ``make_writer(workdir, resume_step) -> MetricWriter``:
:func:`jsonl_writer` (the default, ``workdir/metrics.jsonl``) or :func:`tensorboard_writer`
(the same JSONL file plus TensorBoard event files in ``workdir/tensorboard``; needs the optional
``tensorboardX`` package: ``pip install usae_jax[tensorboard]``).
"""

from __future__ import annotations

import json
import os
from typing import Protocol

import jax
import numpy as np


class MetricWriter(Protocol):
    """Receives scalars (and small arrays) keyed by name at a training step."""

    def write(self, step: int, metrics: dict) -> None: ...

    def close(self) -> None: ...


def _to_json(value):
    if isinstance(value, dict):
        return {key: _to_json(item) for key, item in value.items()}
    if isinstance(value, (np.ndarray, jax.Array)):
        return np.asarray(value).tolist()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value


class JsonlWriter:
    """Appends one JSON object per ``write`` to ``path`` (``{"step": s, ...metrics}``).

    Only process 0 writes. On resume from a checkpoint of step ``resume_step`` the file is cut
    to the lines of steps ``<= resume_step`` (what the checkpointed run had logged up to and
    including that step), without ``"final"`` records (each call writes its own at its end) and
    without a torn last line; then the resumed run appends, so the file reads as one
    uninterrupted run. The cut file replaces the old one atomically.
    """

    def __init__(self, path: str | os.PathLike, resume_step: int = 0):
        self.path = os.fspath(path)
        self._active = jax.process_index() == 0
        if not self._active:
            return
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        kept = []
        if os.path.exists(self.path):
            with open(self.path) as handle:
                for line in handle:
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                        step = int(record["step"])
                    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                        break  # a torn last line from an interrupted run
                    if step > resume_step:
                        break  # written after the checkpoint: the resumed run redoes them
                    if "final" not in record:
                        kept.append(line if line.endswith("\n") else line + "\n")
        tmp = self.path + ".tmp"
        with open(tmp, "w") as handle:
            handle.writelines(kept)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)

    def write(self, step: int, metrics: dict) -> None:
        if not self._active:
            return
        with open(self.path, "a") as handle:
            handle.write(json.dumps({"step": int(step), **_to_json(metrics)}) + "\n")

    def close(self) -> None:
        pass


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """All records of a JSONL metrics file."""
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def jsonl_writer(workdir: str, resume_step: int) -> JsonlWriter:
    """The default writer: ``workdir/metrics.jsonl``, truncated to ``resume_step`` on resume."""
    return JsonlWriter(os.path.join(workdir, "metrics.jsonl"), resume_step=resume_step)


def _scalars(prefix: str, value):
    """``(tag, float)`` pairs of every number in a nested record (arrays element by element)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _scalars(f"{prefix}/{key}" if prefix else str(key), item)
    elif isinstance(value, (list, tuple, np.ndarray, jax.Array)):
        for index, item in enumerate(np.asarray(value).reshape(-1).tolist()):
            yield from _scalars(f"{prefix}/{index}", item)
    elif isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool):
        yield prefix, float(value)


class TensorBoardWriter:
    """TensorBoard event files in ``logdir`` (tensorboardX); every number of a record is one
    scalar, nested keys joined by "/" (e.g. ``dead_fraction/alpha``, ``r2/0/1``)."""

    def __init__(self, logdir: str | os.PathLike):
        self._writer = None
        if jax.process_index() != 0:
            return
        try:
            from tensorboardX import SummaryWriter
        except ImportError as err:
            raise ImportError(
                "the TensorBoard writer needs tensorboardX: pip install tensorboardX"
            ) from err
        self._writer = SummaryWriter(os.fspath(logdir))

    def write(self, step: int, metrics: dict) -> None:
        if self._writer is None:
            return
        for tag, value in _scalars("", metrics):
            self._writer.add_scalar(tag, value, int(step))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


class MultiWriter:
    """Sends every record to each of ``writers``."""

    def __init__(self, *writers: MetricWriter):
        self.writers = writers

    def write(self, step: int, metrics: dict) -> None:
        for writer in self.writers:
            writer.write(step, metrics)

    def close(self) -> None:
        for writer in self.writers:
            writer.close()


def tensorboard_writer(workdir: str, resume_step: int) -> MultiWriter:
    """JSONL (as :func:`jsonl_writer`) plus TensorBoard events in ``workdir/tensorboard``."""
    return MultiWriter(
        jsonl_writer(workdir, resume_step),
        TensorBoardWriter(os.path.join(workdir, "tensorboard")),
    )
