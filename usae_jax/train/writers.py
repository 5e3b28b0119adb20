"""Metric writers: JSONL by default, process 0 only."""

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

    Only process 0 writes; on resume, lines at or after the resumed step are dropped first so
    the file reads as one uninterrupted run.
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
                    try:
                        if json.loads(line)["step"] < resume_step:
                            kept.append(line)
                    except (json.JSONDecodeError, KeyError):
                        break  # a torn last line from an interrupted run
        with open(self.path, "w") as handle:
            handle.writelines(kept)

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
