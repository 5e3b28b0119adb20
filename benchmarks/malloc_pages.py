"""The training step with glibc's transparent-huge-page malloc against its default, paired.

    python benchmarks/malloc_pages.py [--config=small] [--steps=10] [--rounds=4]

A glibc tunable is read only at process start, so each side runs in a fresh child process:
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (what ``experiments/train.py --malloc_huge_pages``
sets) or without it. Each child compiles the official step (source model m0, a config of
``step_vs_official.py``, compiled as the training loop compiles it), runs one warm-up step,
then times ``--steps`` steps and reads its own minor page faults and kernel time for them.
The rounds alternate the order of the two sides, and the ratio huge/default is taken round by
round, so a machine whose speed drifts still gives a meaningful median. Prints one JSON line
and a short table.
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
from usae_jax.parallel.huge_pages import (  # noqa: E402
    TUNABLE,
    huge_page_environment,
    unsupported_reason,
)


def child(config: str, steps: int) -> dict:
    """Time ``steps`` steps in this process: ms per step, minor faults and kernel s per step."""
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


def run_child(config: str, steps: int, environ: dict) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--child", f"--config={config}"]
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
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds (2 children)")
    parser.add_argument("--child", action="store_true", help="internal: time steps, print JSON")
    args = parser.parse_args()
    if args.steps < 1 or args.rounds < 1:
        parser.error("--steps and --rounds must be positive")
    if args.child:
        print(json.dumps(child(args.config, args.steps)))
        return
    reason = unsupported_reason()
    if reason is not None:
        sys.exit(f"glibc's huge-page malloc cannot be used here: {reason}")
    plain = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    environments = {"huge": huge_page_environment(plain), "default": plain}
    readings = {side: [] for side in environments}
    ratios = []
    for round_ in range(args.rounds):
        order = list(environments) if round_ % 2 == 0 else list(environments)[::-1]
        for side in order:
            readings[side].append(run_child(args.config, args.steps, environments[side]))
        ratios.append(readings["huge"][-1]["ms_per_step"] / readings["default"][-1]["ms_per_step"])

    def median(side, key):
        return round(statistics.median(r[key] for r in readings[side]), 4)

    keys = ("ms_per_step", "minor_faults_per_step", "system_s_per_step")
    result = {
        "benchmark": "malloc_pages",
        "config": args.config,
        "tunable": f"{TUNABLE}=1",
        "steps": args.steps,
        "rounds": args.rounds,
        **{side: {key: median(side, key) for key in keys} for side in readings},
        "ratio_huge_over_default": round(statistics.median(ratios), 3),
        "ratios": [round(r, 3) for r in ratios],
    }
    print(json.dumps(result))
    print(f"{'side':<10}{'ms/step':>10}{'faults/step':>14}{'kernel s/step':>15}")
    for side in readings:
        row = result[side]
        print(
            f"{side:<10}{row['ms_per_step']:>10.1f}{row['minor_faults_per_step']:>14.0f}"
            f"{row['system_s_per_step']:>15.3f}"
        )
    print(
        f"huge/default step time: median {result['ratio_huge_over_default']:.3f} over "
        f"{args.rounds} rounds ({min(ratios):.3f}-{max(ratios):.3f})"
    )


if __name__ == "__main__":
    main()
