"""The default run's wall time: the whole command paired against an earlier commit, and where
its time goes.

    python benchmarks/default_run.py [--baseline=5b79c53] [--rounds=3]
    python benchmarks/default_run.py --parts [--floor_steps=2000]

Without ``--parts``: checks ``--baseline`` out into a temporary git worktree and runs the README's
default command (``python -m experiments.train --noprogress``) in it and in this checkout,
alternating which goes first, ``--rounds`` times; each command imports its own checkout's code.
Prints both sides' wall times, the ratio ``baseline / this checkout`` round by round and its
median, and the largest difference between the two runs' R² matrices (8000 steps amplify
float rounding: commits that compile the step differently end a little apart). The default
baseline is the commit before the speed issue (16) was worked on.

With ``--parts``: runs the default run in this process and times its phases (imports, measured in
a fresh interpreter; the planted data; setup and compilation; the training chunks; checkpoints;
the final evaluation, plots and export), then trains ``--floor_steps`` more steps of the same
model with both selections taken out: TopK keeps the first ``k`` columns and the AuxK rule every
positive candidate. That is not the algorithm, only a lower bound on what its step can cost with
TopK and the exact top-half selection free; the bound on the whole run is its fixed phases plus
the default run's steps at that rate. Prints one JSON line and a short table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

BEFORE_ISSUE_16 = "5b79c53"
"""The last commit before the speed issue's work (its README quoted 84 s on another VM)."""


def run_command(checkout: str, workdir: str) -> tuple[float, list[list[float]]]:
    """``(wall seconds, R² matrix from the run's summary.json)`` of the default command run in
    ``checkout``."""
    env = {**os.environ, "PYTHONPATH": checkout}
    tic = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "experiments.train", f"--workdir={workdir}", "--noprogress"],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - tic
    if done.returncode:
        raise RuntimeError(f"the default command failed in {checkout}:\n{done.stderr[-3000:]}")
    with open(os.path.join(workdir, "summary.json")) as handle:
        return seconds, json.load(handle)["r2"]


def paired(baseline: str, rounds: int) -> dict:
    """Alternate the whole default command at ``baseline`` and in this checkout."""
    with tempfile.TemporaryDirectory(prefix="default_run_") as scratch:
        tree = os.path.join(scratch, "baseline")
        subprocess.run(
            ["git", "-C", ROOT, "worktree", "add", "--detach", tree, baseline],
            check=True,
            capture_output=True,
        )
        try:
            seconds = {"baseline": [], "head": []}
            outputs = {}
            for round_ in range(rounds):
                order = ("head", "baseline") if round_ % 2 == 0 else ("baseline", "head")
                for side in order:
                    checkout = ROOT if side == "head" else tree
                    workdir = os.path.join(scratch, f"{side}_{round_}")
                    load = os.getloadavg()[0]
                    wall, outputs[side] = run_command(checkout, workdir)
                    seconds[side].append(round(wall, 2))
                    print(f"round {round_}: {side:<8} {wall:6.1f} s (load before {load:.2f})")
        finally:
            subprocess.run(
                ["git", "-C", ROOT, "worktree", "remove", "--force", tree], capture_output=True
            )
    ratios = [b / h for b, h in zip(seconds["baseline"], seconds["head"], strict=True)]
    return {
        "benchmark": "default_run",
        "mode": "paired",
        "baseline": baseline,
        "rounds": rounds,
        "seconds": seconds,
        "median_s": {side: round(statistics.median(s), 2) for side, s in seconds.items()},
        "ratios_baseline_over_head": [round(r, 3) for r in ratios],
        "ratio_baseline_over_head": round(statistics.median(ratios), 3),
        "r2_max_abs_difference": round(
            float(np.max(np.abs(np.subtract(outputs["baseline"], outputs["head"])))), 4
        ),
    }


def import_seconds(repeats: int = 3) -> float:
    """Median seconds a fresh interpreter takes to import ``experiments.train``."""
    code = "import time; t = time.perf_counter(); import experiments.train; "
    code += "print(time.perf_counter() - t)"
    readings = [
        float(subprocess.check_output([sys.executable, "-c", code], cwd=ROOT, text=True))
        for _ in range(repeats)
    ]
    return statistics.median(readings)


def floor_ops():
    """Sparse ops without selection work (not the algorithm; a lower bound only)."""
    import jax.numpy as jnp

    from usae_jax.model.sparse_ops import SparseOps

    def first_columns(activations, k):
        values = activations[:, :k]
        indices = jnp.broadcast_to(jnp.arange(k, dtype=jnp.int32), values.shape)
        dense = jnp.zeros_like(activations).at[:, :k].set(values)
        return dense, values, indices

    return SparseOps(top_k=first_columns, top_half=lambda values, keep: values > 0)


class Timed:
    """Wraps the training loop's parts to time them (blocking on each chunk's state)."""

    def __init__(self):
        import jax

        from usae_jax.train import checkpoint, loop

        self.chunks, self.saves, self.reports = [], [], []
        self._originals = []

        def wrap(owner, name, readings, block=False):
            original = getattr(owner, name)
            self._originals.append((owner, name, original))

            def timed(*args, **kwargs):
                tic = time.perf_counter()
                out = original(*args, **kwargs)
                if block:
                    jax.block_until_ready(out[0])
                readings.append(time.perf_counter() - tic)
                return out

            setattr(owner, name, timed)

        wrap(loop.StepRunner, "__call__", self.chunks, block=True)
        wrap(checkpoint.Checkpointer, "save", self.saves)
        wrap(loop, "final_report", self.reports)

    def restore(self):
        for owner, name, original in self._originals:
            setattr(owner, name, original)


def parts(floor_steps: int) -> dict:
    """Phases of the default run in this process, and the step's lower bound."""
    imports = import_seconds()
    from experiments.configs import default as default_config
    from usae_jax.data.synthetic.planted import generate_planted
    from usae_jax.pipelines.train_and_report import train_and_report
    from usae_jax.train import loop

    tic = time.perf_counter()
    planted = generate_planted(default_config.get_planted())
    data = time.perf_counter() - tic
    config = dataclasses.replace(default_config.get_config(), progress_bar=False)
    chunk = config.steps_per_dispatch
    timed = Timed()
    with tempfile.TemporaryDirectory(prefix="default_run_") as workdir:
        tic = time.perf_counter()
        result, _ = train_and_report(config, workdir, planted.source(), planted)
        total = time.perf_counter() - tic
    timed.restore()
    steps = int(result.state.step)
    steady = [1e3 * s / chunk for s in timed.chunks[1:]]
    step_ms = statistics.median(steady)

    floor = Timed()
    original_ops = loop.sharded_ops
    loop.sharded_ops = lambda mesh: floor_ops()
    try:
        with tempfile.TemporaryDirectory(prefix="default_run_floor_") as workdir:
            floor_config = dataclasses.replace(
                config, num_steps=floor_steps, checkpoint_every=10**9
            )
            loop.train(floor_config, workdir, planted.source(), plots=False)
    finally:
        loop.sharded_ops = original_ops
        floor.restore()
    floor_ms = statistics.median(1e3 * s / chunk for s in floor.chunks[1:])

    steps_s = step_ms * steps / 1e3
    phases = {
        "imports (fresh interpreter)": imports,
        "planted data": data,
        "setup, evaluations at checkpoints, export, writes": total
        - sum(timed.chunks)
        - sum(timed.saves)
        - sum(timed.reports),
        "step compilation (first chunk less its steps)": timed.chunks[0] - step_ms * chunk / 1e3,
        "training steps at the steady rate": steps_s,
        "checkpoints": sum(timed.saves),
        "final evaluation and plots": sum(timed.reports),
    }
    fixed = imports + data + total - steps_s
    return {
        "benchmark": "default_run",
        "mode": "parts",
        "steps": steps,
        "steps_per_dispatch": chunk,
        "command_s_estimate": round(imports + data + total, 2),
        "phases_s": {name: round(value, 2) for name, value in phases.items()},
        "step_ms": round(step_ms, 3),
        "step_ms_without_selections": round(floor_ms, 3),
        "fixed_s": round(fixed, 2),
        "bound_without_selections_s": round(fixed + floor_ms * steps / 1e3, 2),
        "load_after": round(os.getloadavg()[0], 2),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--baseline", default=BEFORE_ISSUE_16, help="commit to pair the whole command against"
    )
    parser.add_argument("--rounds", type=int, default=3, help="paired rounds (both sides each)")
    parser.add_argument(
        "--parts", action="store_true", help="time the phases in-process instead of pairing"
    )
    parser.add_argument(
        "--floor_steps", type=int, default=2000, help="steps of the selection-free lower bound"
    )
    args = parser.parse_args()
    from experiments.configs import default as default_config

    chunk = default_config.get_config().steps_per_dispatch  # the first chunk includes compiling
    if args.rounds < 1 or args.floor_steps < 2 * chunk:
        parser.error(f"--rounds must be positive and --floor_steps at least {2 * chunk}")
    if args.parts:
        result = parts(args.floor_steps)
        print(json.dumps(result))
        for name, value in result["phases_s"].items():
            print(f"{name:<56}{value:>8.2f} s")
        print(f"{'whole command (estimate)':<56}{result['command_s_estimate']:>8.2f} s")
        print(
            f"step: {result['step_ms']:.2f} ms; without TopK and the AuxK selection "
            f"{result['step_ms_without_selections']:.2f} ms; fixed phases "
            f"{result['fixed_s']:.1f} s; whole run at the selection-free rate "
            f"{result['bound_without_selections_s']:.1f} s"
        )
        return
    result = paired(args.baseline, args.rounds)
    print(json.dumps(result))
    print(
        f"median: baseline {result['median_s']['baseline']:.1f} s, this checkout "
        f"{result['median_s']['head']:.1f} s; baseline / this checkout "
        f"{result['ratio_baseline_over_head']:.2f}x (rounds "
        f"{', '.join(f'{r:.2f}' for r in result['ratios_baseline_over_head'])}); largest "
        f"difference of the R² entries {result['r2_max_abs_difference']:.4f}"
    )


if __name__ == "__main__":
    main()
