"""Training-step throughput: usae_jax vs the official algorithm in PyTorch, in one run.

    python benchmarks/step_vs_official.py [--config=small,paper,paper4x|both] [--steps=3]

Both sides train on the same synthetic standardised activations with the same configuration.
The PyTorch side (tests/reference/official_torch.py, checked against the official numbers) computes
the way the official code does; ours computes the same math (tests/test_parity.py). Each side
runs in its own worker process (started by this command, set up and warmed up once; our
compilation is reported apart), so neither shares the other's malloc heap, thread pools or
process-wide settings. Ours runs as our training loop runs it (a ``StepRunner``, which on a CPU
keeps freed host memory mapped, :mod:`usae_jax.parallel.host_memory`); the PyTorch worker gets
the same malloc settings, since without them the official step page-faults its own large
temporaries every step too (``--no-retain_freed_memory``: glibc's defaults on both sides).
The command alternates ``--rounds`` rounds of ``--steps`` steps between the two workers and
reports medians. Prints a short table and one JSON line.

FLOPs "required" are those of the math itself: encoder forward and weight gradient, the k-sparse
decode, the auxiliary top-half product and its code gradient for every target, and the source
dictionary's gradient. The GEMM rate is measured in the same run (XLA, float32, 4096^3).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CONFIGS = {
    "paper": dict(widths=(768, 384, 768), num_concepts=6144, top_k=32, batch_rows=6272),
    "small": dict(widths=(256, 128, 256), num_concepts=2048, top_k=16, batch_rows=2048),
    # The default run's model (experiments/configs/default.py on the planted data).
    "default": dict(widths=(64, 48, 96), num_concepts=256, top_k=8, batch_rows=1024),
    # The paper config at 4x the concepts (the GPU suite's second point).
    "paper4x": dict(widths=(768, 384, 768), num_concepts=24576, top_k=32, batch_rows=6272),
}


def gemm_rate(size: int = 4096, repeats: int = 3) -> float:
    """Measured XLA float32 matrix-product rate in FLOP/s."""
    import jax
    import jax.numpy as jnp

    a = jnp.ones((size, size), jnp.float32)
    product = jax.jit(lambda x, y: x @ y)
    product(a, a).block_until_ready()
    start = time.perf_counter()
    for _ in range(repeats):
        product(a, a).block_until_ready()
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def required_flops(widths, num_concepts, top_k, batch_rows) -> float:
    """FLOPs of one official step's math, averaged over the source model."""
    total_width = sum(widths)
    per_source = [
        4 * batch_rows * d_source * num_concepts  # encoder forward + weight gradient
        + 2 * batch_rows * num_concepts * d_source  # source dictionary gradient (aux product)
        + 4 * batch_rows * num_concepts * total_width  # aux product forward + code gradient
        + 6 * batch_rows * top_k * total_width  # sparse decode forward + backward
        for d_source in widths
    ]
    return float(np.mean(per_source))


def jax_setup(spec, seed=0, retain_freed_memory=True):
    """``(config, optimizers, fresh state, batch)`` of our side: the benchmark's synthetic
    standardised batch ``{m_i: [B, d_i]}`` on the default device."""
    import jax

    from usae_jax.config import TrainConfig, USAEConfig
    from usae_jax.train.optim import build_optimizers
    from usae_jax.train.state import create_train_state

    names = tuple(f"m{i}" for i in range(len(spec["widths"])))
    config = TrainConfig(
        usae=USAEConfig(
            model_names=names,
            widths=spec["widths"],
            num_concepts=spec["num_concepts"],
            top_k=spec["top_k"],
            compute_dtype=spec.get("compute_dtype", "float32"),
        ),
        batch_rows=spec["batch_rows"],
        num_steps=1000,
        seed=seed,
        data_parallel=1,
        retain_freed_memory=retain_freed_memory,
    )
    optimizers, _ = build_optimizers(config, 1000, 100)
    rng = np.random.default_rng(seed)
    batch = {
        n: jax.device_put(rng.standard_normal((spec["batch_rows"], w), np.float32))
        for n, w in zip(names, spec["widths"], strict=True)
    }
    return config, optimizers, create_train_state(config, optimizers), batch


def make_jax_step(spec, seed=0, retain_freed_memory=True):
    import jax

    from usae_jax.parallel.mesh import create_mesh, state_shardings
    from usae_jax.train.loop import StepRunner

    config, optimizers, fresh, batch = jax_setup(spec, seed, retain_freed_memory)
    names = config.usae.model_names
    mesh = create_mesh(1, 1)
    shardings = state_shardings(fresh, mesh, config.usae.num_concepts)
    state = jax.device_put(fresh, shardings)
    runner = StepRunner(config, optimizers, mesh, shardings)
    holder = {"state": state, "step": 0}

    def step():
        holder["state"], metrics = runner(holder["state"], batch, holder["step"])
        holder["step"] += 1
        jax.block_until_ready(metrics.loss)

    start = time.perf_counter()
    # until every source model's step has compiled (the source of a step is drawn at random),
    # then as many steps again
    while runner.traces < len(names) and holder["step"] < 1000:
        step()
    for _ in range(len(names) * 2):
        step()
    return step, time.perf_counter() - start


def make_torch_step(spec, seed=0, device="cpu"):
    import torch

    from tests.reference.official_torch import OfficialUSAE

    usae = OfficialUSAE(
        spec["widths"],
        spec["num_concepts"],
        spec["top_k"],
        total_iters=1000,
        warmup_iters=100,
        seed=seed,
        device=device,
    )
    rng = np.random.default_rng(seed)
    batch = [
        torch.from_numpy(rng.standard_normal((spec["batch_rows"], w), np.float32)).to(device)
        for w in spec["widths"]
    ]
    picks = np.random.default_rng(seed + 1)

    def step():
        usae.step(int(picks.integers(len(spec["widths"]))), batch)

    step()
    return step


PROTOCOL = "@@step_vs_official "
"""Prefix of the lines a worker writes for the parent (anything else on stdout is passed on)."""


def worker(side: str, spec: dict, device: str, threads: int, retain: bool) -> None:
    """A worker process: set up one side, say so, then run the steps the parent asks for.

    Reads lines ``N`` from stdin, runs ``N`` steps and answers with the seconds per step."""
    if side == "torch":
        import torch

        from usae_jax.parallel.host_memory import retain_freed_memory

        if retain and device == "cpu":  # the same malloc settings as our side
            retain_freed_memory()
        torch.set_num_threads(threads)
        step, setup = make_torch_step(spec, device=device), 0.0
    else:
        step, setup = make_jax_step(spec, retain_freed_memory=retain)
    print(PROTOCOL + json.dumps({"compile_seconds": setup}), flush=True)
    for line in sys.stdin:
        count = int(line)
        start = time.perf_counter()
        for _ in range(count):
            step()
        seconds = (time.perf_counter() - start) / count
        print(PROTOCOL + json.dumps({"seconds": seconds}), flush=True)


class Worker:
    """The parent's handle on one worker process."""

    def __init__(self, side: str, spec: dict, device: str, threads: int, retain: bool):
        retain_flag = "--retain_freed_memory" if retain else "--no-retain_freed_memory"
        command = [
            sys.executable,
            os.path.abspath(__file__),
            f"--worker={side}",
            f"--worker_spec={json.dumps(spec)}",
            f"--torch_device={device}",
            f"--threads={threads}",
            retain_flag,
        ]
        self.side = side
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.ready = self._answer()

    def _answer(self) -> dict:
        for line in self.process.stdout:
            if line.startswith(PROTOCOL):
                return json.loads(line[len(PROTOCOL) :])
            sys.stdout.write(line)
        raise RuntimeError(f"the {self.side} worker exited with {self.process.wait()}")

    def run(self, steps: int) -> float:
        """Seconds per step over ``steps`` steps."""
        self.process.stdin.write(f"{steps}\n")
        self.process.stdin.flush()
        return self._answer()["seconds"]

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


def measure(name, spec, steps, rounds, gemm, device="cpu", threads=2, retain=True):
    """Median seconds per step of both sides (alternating rounds, each side in its own worker
    process) and the derived rates; the torch side runs on ``device`` (each step returns its
    loss as a float, so it is waited for)."""
    workers = {}
    try:
        for side in ("torch", "jax"):  # one at a time: set-up is not timed
            workers[side] = Worker(side, spec, device, threads, retain)
        times = {"torch": [], "jax": []}
        for _ in range(rounds):
            for side, handle in workers.items():
                times[side].append(handle.run(steps))
    finally:
        for handle in workers.values():
            handle.close()
    compile_seconds = workers["jax"].ready["compile_seconds"]
    torch_s, jax_s = float(np.median(times["torch"])), float(np.median(times["jax"]))
    flops = required_flops(
        **{k: spec[k] for k in ("widths", "num_concepts", "top_k", "batch_rows")}
    )
    return {
        "config": name,
        **{k: v for k, v in spec.items()},
        "torch_seconds_per_step": round(torch_s, 4),
        "jax_seconds_per_step": round(jax_s, 4),
        "torch_rows_per_s": round(spec["batch_rows"] / torch_s, 1),
        "jax_rows_per_s": round(spec["batch_rows"] / jax_s, 1),
        "speedup": round(torch_s / jax_s, 2),
        "required_gflop_per_step": round(flops / 1e9, 2),
        "jax_achieved_gflops": round(flops / jax_s / 1e9, 1),
        "jax_fraction_of_gemm_rate": round(flops / jax_s / gemm, 3),
        "jax_compile_seconds": round(compile_seconds, 1),
    }


def add_retain_flag(parser: argparse.ArgumentParser) -> None:
    """``--retain_freed_memory`` (default on): keep freed host memory mapped, as the training
    loop does on a CPU mesh (:mod:`usae_jax.parallel.host_memory`)."""
    parser.add_argument(
        "--retain_freed_memory",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep freed host memory mapped, as the training loop does on a CPU mesh "
        "(process-wide; --no-retain_freed_memory: glibc's defaults)",
    )


def apply_retain_flag(args: argparse.Namespace) -> None:
    """Apply ``--retain_freed_memory`` on a CPU backend (for benchmarks that jit the step
    themselves; a ``StepRunner`` applies its config's setting)."""
    import jax

    from usae_jax.parallel.host_memory import retain_freed_memory

    if args.retain_freed_memory and jax.default_backend() == "cpu":
        retain_freed_memory()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config",
        default="both",
        help="comma-separated configs (paper, small, paper4x = paper with 4x the concepts) or "
        "'both' (small,paper)",
    )
    parser.add_argument("--steps", type=int, default=3, help="steps per timed round and side")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per side")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    parser.add_argument("--bf16", action="store_true", help="also time our bfloat16 option")
    parser.add_argument(
        "--torch_device", default="auto", help="torch device: cpu, cuda or auto (cuda if present)"
    )
    add_retain_flag(parser)
    parser.add_argument("--worker", choices=("torch", "jax"), help="internal: a worker process")
    parser.add_argument("--worker_spec", help="internal: the worker's config as JSON")
    args = parser.parse_args()
    if args.worker:
        spec = json.loads(args.worker_spec)
        spec["widths"] = tuple(spec["widths"])
        worker(args.worker, spec, args.torch_device, args.threads, args.retain_freed_memory)
        return
    names = ["small", "paper"] if args.config == "both" else args.config.split(",")
    unknown = sorted(set(names) - set(CONFIGS))
    if unknown:
        parser.error(f"unknown config(s) {unknown}; choose from {sorted(CONFIGS)} or 'both'")
    import jax
    import torch

    device = args.torch_device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"

    gemm = gemm_rate()
    results = []
    for name in names:
        options = dict(device=device, threads=args.threads, retain=args.retain_freed_memory)
        results.append(measure(name, CONFIGS[name], args.steps, args.rounds, gemm, **options))
        if args.bf16:
            spec = {**CONFIGS[name], "compute_dtype": "bfloat16"}
            results.append(measure(f"{name}+bf16", spec, args.steps, args.rounds, gemm, **options))
    print(
        f"{'config':<12}{'torch rows/s':>14}{'jax rows/s':>12}{'speedup':>9}"
        f"{'GFLOP/step':>12}{'of GEMM':>9}"
    )
    for r in results:
        print(
            f"{r['config']:<12}{r['torch_rows_per_s']:>14.0f}{r['jax_rows_per_s']:>12.0f}"
            f"{r['speedup']:>8.2f}x{r['required_gflop_per_step']:>12.1f}"
            f"{r['jax_fraction_of_gemm_rate']:>9.1%}"
        )
    machine = {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor(),
        "jax": jax.__version__,
        "torch": torch.__version__,
        "device": str(jax.devices()[0]),
        "gemm_gflops": round(gemm / 1e9, 1),
        "torch_threads": args.threads,
        "torch_device": device,
        "workers_retain_freed_memory": args.retain_freed_memory,
        "sides": "one worker process each",
    }
    print(json.dumps({"machine": machine, "results": results}))


if __name__ == "__main__":
    main()
