"""AuxK top-half selection: our exact selections (skipped when no row has more than n/2
candidates; the radix select, and the host one a step on a single CPU device uses) vs
``lax.top_k`` (the official ``torch.topk`` rule), per call on one batch.

Two batches of pre-activations ``[B, n]`` with the encoder's TopK codes removed: "few" (about
n/4 positive candidates per row, the search is skipped) and "many" (about n/2 + 20, the search
runs). Each round times ``--calls`` jitted calls per variant, alternating; the median round is
reported (compilation excluded). Prints a short table and one JSON line.

    python benchmarks/auxk_selection.py --rounds 5 --calls 50 --rows 1024 --concepts 256
"""

import argparse
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from usae_jax.model.top_half import host_top_half_mask
from usae_jax.train.losses import auxiliary_codes, top_half_codes_by_sort


def batch(rows: int, concepts: int, positive_share: float, k: int, seed: int):
    """``(pre_codes, codes)`` ``[rows, concepts]``: about ``positive_share`` of each row
    positive, the ``k`` largest of each row chosen as codes."""
    rng = np.random.default_rng(seed)
    pre = rng.normal(size=(rows, concepts)).astype(np.float32)
    shift = np.quantile(pre, 1 - positive_share)
    pre = jnp.asarray(pre - shift)
    values, indices = jax.lax.top_k(pre, k)
    codes = jnp.zeros_like(pre).at[jnp.arange(rows)[:, None], indices].set(jax.nn.relu(values))
    return pre, codes


def time_calls(fn, args, calls: int) -> float:
    jax.block_until_ready(fn(*args))
    tic = time.perf_counter()
    for _ in range(calls):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - tic) / calls * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1024, help="Rows per batch.")
    parser.add_argument("--concepts", type=int, default=256, help="Concepts n.")
    parser.add_argument("--k", type=int, default=8, help="TopK of the encoder.")
    parser.add_argument("--rounds", type=int, default=5, help="Rounds (median reported).")
    parser.add_argument("--calls", type=int, default=50, help="Calls per variant per round.")
    args = parser.parse_args()
    variants = {
        "radix": jax.jit(auxiliary_codes),
        "host": jax.jit(
            lambda pre, codes: auxiliary_codes(pre, codes, top_half=host_top_half_mask)
        ),
        "lax.top_k": jax.jit(top_half_codes_by_sort),
    }
    n = args.concepts
    batches = {
        "few": batch(args.rows, n, 0.25, args.k, 0),
        "many": batch(args.rows, n, (n // 2 + 20 + args.k) / n, args.k, 1),
    }
    for pre, codes in batches.values():  # every variant selects the same values
        reference = np.asarray(variants["lax.top_k"](pre, codes))
        for fn in variants.values():
            np.testing.assert_array_equal(np.asarray(fn(pre, codes)), reference)
    readings = {(b, v): [] for b in batches for v in variants}
    for _ in range(args.rounds):
        for b, data in batches.items():
            for v, fn in variants.items():
                readings[b, v].append(time_calls(fn, data, args.calls))
    median = {f"{b}/{v}": round(statistics.median(r), 3) for (b, v), r in readings.items()}
    print(f"AuxK top-half selection, [{args.rows}, {n}], ms per call (median of {args.rounds})")
    print(f"{'candidates per row':<20}" + "".join(f"{v:>12}" for v in variants))
    for b in batches:
        print(f"{b:<20}" + "".join(f"{median[f'{b}/{v}']:>12.3f}" for v in variants))
    print(json.dumps({
        "benchmark": "auxk_selection", "rows": args.rows, "concepts": n, "ms": median,
        "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2), "jax": jax.__version__,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
