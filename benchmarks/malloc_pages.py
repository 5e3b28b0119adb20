"""The training step with freed host memory kept mapped, and with glibc's huge pages, against
glibc's defaults, paired.

    python benchmarks/malloc_pages.py [--config=small] [--steps=10] [--rounds=4]

Malloc settings are process-wide, so each side runs in a fresh child process: ``default`` (glibc
as it starts), ``retained`` (:func:`usae_jax.parallel.host_memory.retain_freed_memory`, what the
training loop applies on a CPU mesh) and ``huge`` (``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``:
transparent huge pages for malloc's blocks, read by glibc at process start; shown for
comparison, not used by the library). Each child compiles the official step (source model m0, a
config of ``step_vs_official.py``, compiled as the training loop compiles it), runs one warm-up
step, then times ``--steps`` steps and reads its own minor page faults and kernel time for them.
The rounds rotate the order of the sides, and each side's ratio to ``default`` is taken round by
round, so a machine whose speed drifts still gives a meaningful median. Prints one JSON line and
a short table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.step_vs_official import CONFIGS  # noqa: E402
from usae_jax.parallel.host_memory import (  # noqa: E402
    retain_freed_memory,
    unsupported_reason,
)

SIDES = ("default", "retained", "huge")
"""The malloc settings compared (see the module docstring)."""

HUGE_PAGES = "glibc.malloc.hugetlb=1"


def child(config: str, steps: int, side: str) -> dict:
    """Time ``steps`` steps in this process: ms per step, minor faults and kernel s per step."""
    if side == "retained" and retain_freed_memory() is not None:
        raise RuntimeError("retain_freed_memory could not act in this process")
    import jax

    from benchmarks.step_profile import build_step

    compiled, state, batch = build_step(CONFIGS[config], source=0)
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics.loss)
    before, tic = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(steps):
        state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics.loss)
    seconds, after = time.perf_counter() - tic, resource.getrusage(resource.RUSAGE_SELF)
    return {
        "ms_per_step": 1e3 * seconds / steps,
        "minor_faults_per_step": (after.ru_minflt - before.ru_minflt) / steps,
        "system_s_per_step": (after.ru_stime - before.ru_stime) / steps,
    }


def run_child(config: str, steps: int, side: str) -> dict:
    environ = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    if side == "huge":
        environ["GLIBC_TUNABLES"] = HUGE_PAGES
    command = [sys.executable, os.path.abspath(__file__), f"--child={side}", f"--config={config}"]
    done = subprocess.run(
        [*command, f"--steps={steps}"], env=environ, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"child failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="small", choices=sorted(CONFIGS), help="step size")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per child")
    parser.add_argument("--rounds", type=int, default=4, help="rounds (one child per side each)")
    parser.add_argument("--child", choices=SIDES, help="internal: time one side, print JSON")
    args = parser.parse_args()
    if args.steps < 1 or args.rounds < 1:
        parser.error("--steps and --rounds must be positive")
    if args.child:
        print(json.dumps(child(args.config, args.steps, args.child)))
        return
    reason = unsupported_reason()
    if reason is not None:
        sys.exit(f"glibc's malloc settings cannot be used here: {reason}")
    readings = {side: [] for side in SIDES}
    ratios = {side: [] for side in SIDES[1:]}
    for round_ in range(args.rounds):
        shift = round_ % len(SIDES)
        for side in SIDES[shift:] + SIDES[:shift]:
            readings[side].append(run_child(args.config, args.steps, side))
        for side in ratios:
            ratios[side].append(
                readings[side][-1]["ms_per_step"] / readings["default"][-1]["ms_per_step"]
            )

    def median(side, key):
        return round(statistics.median(r[key] for r in readings[side]), 4)

    keys = ("ms_per_step", "minor_faults_per_step", "system_s_per_step")
    result = {
        "benchmark": "malloc_pages",
        "config": args.config,
        "steps": args.steps,
        "rounds": args.rounds,
        **{side: {key: median(side, key) for key in keys} for side in SIDES},
        "ratio_over_default": {s: round(statistics.median(r), 3) for s, r in ratios.items()},
        "ratios": {s: [round(x, 3) for x in r] for s, r in ratios.items()},
    }
    print(json.dumps(result))
    print(f"{'side':<10}{'ms/step':>10}{'faults/step':>14}{'kernel s/step':>15}{'/default':>10}")
    for side in SIDES:
        row = result[side]
        ratio = result["ratio_over_default"].get(side, 1.0)
        print(
            f"{side:<10}{row['ms_per_step']:>10.1f}{row['minor_faults_per_step']:>14.0f}"
            f"{row['system_s_per_step']:>15.3f}{ratio:>10.3f}"
        )
    spans = ", ".join(f"{s} {min(r):.3f}-{max(r):.3f}" for s, r in ratios.items())
    print(f"step time / default: medians over {args.rounds} rounds (range: {spans})")


if __name__ == "__main__":
    main()
