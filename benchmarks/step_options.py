"""The training step compiled with the loop's XLA options against XLA's defaults, paired.

    python benchmarks/step_options.py [--config=paper] [--steps=2] [--rounds=6]

Compiles the official step (source model m0, a config of ``step_vs_official.py``) twice in one
process: with :func:`usae_jax.parallel.compiler.step_compiler_options` (what the training loop
uses) and with XLA's defaults. Then alternates ``--rounds`` rounds of ``--steps`` steps each
(the order flips every round) and takes the ratio options/defaults round by round, so a machine
whose speed drifts still gives a meaningful median. Freed host memory stays mapped for both, as
the training loop keeps it on a CPU (``--no-retain_freed_memory``: glibc's defaults). Prints one
JSON line and a short table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.step_vs_official import (  # noqa: E402
    CONFIGS,
    add_retain_flag,
    apply_retain_flag,
    jax_setup,
)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="paper", choices=sorted(CONFIGS), help="step size")
    parser.add_argument("--steps", type=int, default=2, help="steps per round and side")
    parser.add_argument("--rounds", type=int, default=6, help="alternating rounds")
    add_retain_flag(parser)
    args = parser.parse_args()
    if args.steps < 1 or args.rounds < 1:
        parser.error("--steps and --rounds must be positive")
    import jax

    apply_retain_flag(args)

    from usae_jax.parallel.compiler import step_compiler_options
    from usae_jax.parallel.concept import sharded_ops
    from usae_jax.parallel.mesh import create_mesh
    from usae_jax.train.steps import make_steps

    config, optimizers, state, batch = jax_setup(CONFIGS[args.config], 0)
    mesh = create_mesh(1, 1)
    body = make_steps(config, optimizers, sharded_ops(mesh)).bodies[config.usae.model_names[0]]
    options = step_compiler_options(mesh)
    if options is None:
        sys.exit("this platform or jaxlib gets no step options: nothing to compare")
    compiled = {
        side: jax.jit(body, compiler_options=opts).lower(state, batch).compile()
        for side, opts in (("options", options), ("defaults", None))
    }
    states = dict.fromkeys(compiled, state)
    for side, step in compiled.items():  # warm-up
        states[side], metrics = step(states[side], batch)
        jax.block_until_ready(metrics.loss)
    seconds = {side: [] for side in compiled}
    ratios = []
    for round_ in range(args.rounds):
        order = list(compiled) if round_ % 2 == 0 else list(compiled)[::-1]
        for side in order:
            tic = time.perf_counter()
            for _ in range(args.steps):
                states[side], metrics = compiled[side](states[side], batch)
            jax.block_until_ready(metrics.loss)
            seconds[side].append((time.perf_counter() - tic) / args.steps)
        ratios.append(seconds["options"][-1] / seconds["defaults"][-1])
    result = {
        "benchmark": "step_options",
        "config": args.config,
        "options": options,
        "seconds_per_step": {s: round(statistics.median(v), 4) for s, v in seconds.items()},
        "ratio_options_over_defaults": round(statistics.median(ratios), 3),
        "ratios": [round(r, 3) for r in ratios],
        "jax": jax.__version__,
    }
    print(json.dumps(result))
    print(f"{'side':<10}{'s/step':>10}")
    for side, value in result["seconds_per_step"].items():
        print(f"{side:<10}{value:>10.4f}")
    print(
        f"options/defaults: median {result['ratio_options_over_defaults']:.3f} over "
        f"{args.rounds} rounds ({min(ratios):.3f}-{max(ratios):.3f})"
    )


if __name__ == "__main__":
    main()
