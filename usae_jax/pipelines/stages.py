"""Resumable pipeline stages: run each unless its output is complete, and record in
``stages.json`` what it took (wall time, peak memory, load average around it)."""

from __future__ import annotations

import json
import os
import resource
import time
from collections.abc import Callable, Sequence
from pathlib import Path


def peak_memory_mb() -> float:
    """Peak resident memory of this process so far (``resource.getrusage``; Linux: KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


class Stages:
    """``stages.json`` of a pipeline of named stages (``names``, in order): per stage its wall
    time, peak memory and load average when it ran; a stage whose output is complete is
    skipped, so an interrupted pipeline resumes where it stopped."""

    def __init__(self, workdir: Path, names: Sequence[str], log: Callable[[str], None]):
        self.path = workdir / "stages.json"
        self.names = tuple(names)
        self.records = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.log = log
        self.skipped: list[str] = []
        self.ran: list[str] = []

    def run(self, name: str, done: Callable[[], bool], body: Callable[[], dict | None]) -> None:
        """Run ``body`` unless ``done()`` and no earlier stage ran in this invocation (a stage
        that reruns makes every later one rerun); record what it took."""
        number = f"[{self.names.index(name) + 1}/{len(self.names)}] {name}"
        if not self.ran and done():
            self.skipped.append(name)
            self.log(f"{number}: complete, skipped")
            return
        self.log(f"{number}: running")
        load_before, tic = os.getloadavg()[0], time.perf_counter()
        self.ran.append(name)
        extra = body() or {}
        self.records[name] = {
            "seconds": round(time.perf_counter() - tic, 1),
            "peak_rss_mb_after": peak_memory_mb(),
            "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
            **extra,
        }
        self.path.write_text(json.dumps(self.records, indent=2))
        self.log(f"{number}: done in {self.records[name]['seconds']:.0f} s, "
                 f"peak memory {self.records[name]['peak_rss_mb_after']:.0f} MB")  # fmt: skip
