"""The AuxK product of one official step: one product over the concatenated dictionaries vs one
per target, forward and backward, in one run.

    python benchmarks/auxk_product.py [--config=paper] [--rounds=6]

Both sides compute ``r_hat_t = aux @ D_hat_t`` for every target ``t`` and the gradient of
``sum_t <g_t, r_hat_t>`` with respect to the auxiliary codes and the source model's dictionary
(the other dictionaries are constants, as in the official step). *Per target* is plain JAX
autodiff of one product per target (the step before :func:`usae_jax.train.losses.auxiliary_decode`);
*concatenated* is ``auxiliary_decode``. The auxiliary codes have the density of the top-half
rule (about half the entries of each row non-zero). Rounds alternate the order (ABBA); the ratio
is the median of the per-round ratios. Prints a short table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.step_vs_official import CONFIGS  # noqa: E402


def make_functions(spec: dict, seed: int = 0):
    """``({name: jitted (aux, source, others) -> (value, (d aux, d source))}, arguments)``."""
    import jax
    import jax.numpy as jnp

    from usae_jax.train.losses import auxiliary_decode

    rows, concepts, widths = spec["batch_rows"], spec["num_concepts"], spec["widths"]
    keys = jax.random.split(jax.random.key(seed), 2 + 2 * len(widths))
    pre = jax.random.normal(keys[0], (rows, concepts))
    aux = jnp.where(pre > 0, pre, 0.0)  # about half of each row non-zero, as the top-half rule
    dictionaries = [
        jax.random.normal(keys[1 + i], (concepts, w)) / jnp.sqrt(w) for i, w in enumerate(widths)
    ]
    cotangents = [
        jax.random.normal(keys[1 + len(widths) + i], (rows, w)) for i, w in enumerate(widths)
    ]

    def objective(decoded):
        return sum(jnp.vdot(g, r) for g, r in zip(cotangents, decoded, strict=True))

    def per_target(aux, source, others):
        return objective([aux @ d for d in (source, *others)])

    def concatenated(aux, source, others):
        return objective(auxiliary_decode(aux, (source, *others)))

    functions = {
        "per_target": jax.jit(jax.value_and_grad(per_target, argnums=(0, 1))),
        "concatenated": jax.jit(jax.value_and_grad(concatenated, argnums=(0, 1))),
    }
    return functions, (aux, dictionaries[0], tuple(dictionaries[1:]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="paper", choices=sorted(CONFIGS), help="sizes")
    parser.add_argument("--rounds", type=int, default=6, help="timed rounds (ABBA order)")
    parser.add_argument("--calls", type=int, default=2, help="calls per side and round")
    args = parser.parse_args()
    if min(args.rounds, args.calls) < 1:
        parser.error("--rounds and --calls must be positive")
    import jax
    import numpy as np

    spec = CONFIGS[args.config]
    functions, arguments = make_functions(spec)
    results = {name: jax.block_until_ready(f(*arguments)) for name, f in functions.items()}
    difference = max(
        float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / (np.max(np.abs(np.asarray(b)))))
        for a, b in zip(
            jax.tree.leaves(results["concatenated"]),
            jax.tree.leaves(results["per_target"]),
            strict=True,
        )
    )
    seconds = {name: [] for name in functions}
    order = list(functions)
    for index in range(args.rounds):
        for name in order if index % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            for _ in range(args.calls):
                jax.block_until_ready(functions[name](*arguments))
            seconds[name].append((time.perf_counter() - start) / args.calls)
    paired = [p / c for p, c in zip(seconds["per_target"], seconds["concatenated"], strict=True)]
    flops = 2 * spec["batch_rows"] * spec["num_concepts"] * (2 * sum(spec["widths"]))
    flops += 2 * spec["batch_rows"] * spec["num_concepts"] * spec["widths"][0]
    print(
        f"AuxK product, {args.config} config (widths {spec['widths']}, {spec['num_concepts']} "
        f"concepts, {spec['batch_rows']} rows), forward + codes' and source dictionary's "
        f"gradients ({flops / 1e9:.0f} GFLOP); {jax.devices()[0].platform} "
        f"({platform.processor() or 'cpu'}), jax {jax.__version__}; largest relative "
        f"difference {difference:.1e}"
    )
    print(f"{'implementation':<16}{'median s':>10}{'GFLOP/s':>10}")
    for name, s in seconds.items():
        median = statistics.median(s)
        print(f"{name:<16}{median:>10.3f}{flops / median / 1e9:>10.1f}")
    print(f"per target / concatenated, median of per-round ratios: {statistics.median(paired):.3f}")
    print(
        json.dumps(
            {
                "benchmark": "auxk_product",
                "config": args.config,
                "per_target_s": round(statistics.median(seconds["per_target"]), 4),
                "concatenated_s": round(statistics.median(seconds["concatenated"]), 4),
                "speedup": round(statistics.median(paired), 3),
                "round_ratios": [round(r, 3) for r in paired],
                "max_relative_difference": difference,
                "jax": jax.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
