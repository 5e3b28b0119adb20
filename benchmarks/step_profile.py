"""Where one training step's time goes: a ``jax.profiler`` trace grouped by part of the step.

    python benchmarks/step_profile.py [--config=paper] [--source=0] [--steps=3]

Builds the official step (one source model, the benchmark configs of ``step_vs_official.py``),
compiles it once, times ``--steps`` steps without the profiler (the wall time per step), then
traces as many more with ``jax.profiler.trace`` and adds up the duration of every executed XLA
operation (thunk). Each operation is put in a part of the step by the named scope its HLO
metadata carries (``encode``, its ``top_k``, ``auxk_select``, ``auxk_product``, ``decode``,
``loss``, ``optimizer``; ``other`` where none applies) and in the forward or backward pass
(``transpose`` in its name). On a CPU, XLA runs independent operations on its worker threads
at the same time, and the profiler adds its own cost, so the summed operation time differs from
the wall time; the shares are what to read. Plain products that XLA runs asynchronously through
Eigen (not fused into a YNNPACK call; on this CPU the weight gradients whose contraction runs
over the batch) have trace events covering only their launch: they are listed below the table
with their GFLOP instead of a time. Freed host memory stays mapped, as the training loop keeps
it on a CPU (``--no-retain_freed_memory``: glibc's defaults, where every step page-faults its
temporaries). Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.step_vs_official import (  # noqa: E402
    CONFIGS,
    add_retain_flag,
    apply_retain_flag,
    jax_setup,
)

UNTRACED_RATE = 5e12
"""FLOP/s above which a product's traced duration cannot be its run time (only its launch)."""

PARTS = ("auxk_select", "auxk_product", "top_k", "encode", "decode", "loss", "optimizer")
"""Named scopes of :mod:`usae_jax.train.usae_step` (``top_k`` from
:func:`usae_jax.model.usae.encode`), most specific first."""


def build_step(spec: dict, source: int, seed: int = 0, default_options: bool = False):
    """``(compiled step, state, batch)`` of the official step with model ``source`` encoding,
    compiled as the training loop compiles it (``default_options``: with XLA's defaults)."""
    import jax

    from usae_jax.parallel.compiler import step_compiler_options
    from usae_jax.parallel.concept import sharded_ops
    from usae_jax.parallel.mesh import create_mesh
    from usae_jax.train.steps import make_steps

    config, optimizers, state, batch = jax_setup(spec, seed)
    names = config.usae.model_names
    mesh = create_mesh(1, 1)
    ops = sharded_ops(mesh)  # what the training loop uses on one device
    body = make_steps(config, optimizers, ops).bodies[names[source]]
    options = None if default_options else step_compiler_options(mesh)
    compiled = jax.jit(body, donate_argnums=(0,), compiler_options=options)
    compiled = compiled.lower(state, batch).compile()
    return compiled, state, batch


def operation_parts(hlo_text: str) -> dict[str, str]:
    """``{HLO instruction name: "part/pass"}`` from the named scopes in each op's metadata.

    A fusion without metadata of its own takes that of the first op in the computation it
    calls; an op XLA added itself (no metadata anywhere, e.g. the reduce-window of a tree
    reduction, a broadcast of a constant, a product split out of an einsum) takes that of its
    first attributed user, else of its first attributed operand.
    """
    op_names, calls, operands, computation, first_in = {}, {}, {}, None, {}
    for line in hlo_text.splitlines():
        header = re.match(r"\s*(?:ENTRY )?%?([\w.\-]+) .*\{\s*$", line)
        if header and " = " not in line:
            computation = header.group(1)
            continue
        match = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = [^(]*\(([^)]*)\)", line)
        if not match:
            continue
        name = match.group(1)
        operands[name] = re.findall(r"%([\w.\-]+)", match.group(2))
        op_name = re.search(r'op_name="([^"]+)"', line)
        called = re.search(r"calls=%?([\w.\-]+)", line)
        if op_name:
            op_names[name] = op_name.group(1)
            first_in.setdefault(computation, op_name.group(1))
        elif called:
            calls[name] = called.group(1)
    for name, computation in calls.items():
        if computation in first_in:
            op_names[name] = first_in[computation]
    users = collections.defaultdict(list)
    for name, inputs in operands.items():
        for operand in inputs:
            users[operand].append(name)
    for neighbours in (users, operands):
        changed = True
        while changed:
            changed = False
            for name in operands:
                if name not in op_names:
                    known = [op_names[n] for n in neighbours.get(name, []) if n in op_names]
                    if known:
                        op_names[name], changed = known[0], True
    parts = {}
    for name, op_name in op_names.items():
        part = next((p for p in PARTS if re.search(rf"\b{p}\b", op_name)), "other")
        parts[name] = f"{part}/{'backward' if 'transpose(' in op_name else 'forward'}"
    return parts


def product_flops(hlo_text: str) -> dict[str, float]:
    """``{name: FLOPs}`` of every plain ``dot`` / ``dot_general`` instruction (those XLA did not
    fuse into a YNNPACK call): ``2 x output elements x contracted length``."""
    shapes, flops = {}, {}
    for line in hlo_text.splitlines():
        match = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = \w+\[([\d,]*)\]", line)
        if match:
            shapes[match.group(1)] = [int(x) for x in match.group(2).split(",") if x]
    for line in hlo_text.splitlines():
        match = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = \S+ (?:dot|dot_general)\(%([\w.\-]+)", line)
        contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", line)
        if match and contracting and match.group(2) in shapes:
            lhs = shapes[match.group(2)]
            length = int(np.prod([lhs[int(i)] for i in contracting.group(1).split(",") if i]))
            flops[match.group(1)] = 2.0 * np.prod(shapes[match.group(1)]) * length
    return flops


def traced_durations(run, steps: int) -> dict[str, float]:
    """Summed microseconds per executed XLA operation name over ``steps`` traced calls."""
    import jax

    directory = tempfile.mkdtemp(prefix="step_profile_")
    with jax.profiler.trace(directory, create_perfetto_trace=True):
        for _ in range(steps):
            run()
    (path,) = glob.glob(f"{directory}/**/*.trace.json.gz", recursive=True)
    with gzip.open(path) as handle:
        events = json.load(handle)["traceEvents"]
    durations = collections.defaultdict(float)
    for event in events:
        if event.get("ph") == "X" and not event["name"].startswith("$"):
            durations[event["name"]] += event["dur"]
    return durations


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="paper", choices=sorted(CONFIGS), help="step size")
    parser.add_argument("--source", type=int, default=0, help="index of the encoding model")
    parser.add_argument("--steps", type=int, default=3, help="timed steps, then traced steps")
    parser.add_argument(
        "--ops", type=int, default=0, help="also list the N slowest operations with their HLO"
    )
    parser.add_argument(
        "--xla_defaults",
        action="store_true",
        help="compile with XLA's default options instead of the training loop's "
        "(usae_jax.parallel.compiler)",
    )
    add_retain_flag(parser)
    args = parser.parse_args()
    if args.steps < 1:
        parser.error("--steps must be positive")
    import jax

    apply_retain_flag(args)

    spec = CONFIGS[args.config]
    if not 0 <= args.source < len(spec["widths"]):
        parser.error(f"--source must be in [0, {len(spec['widths'])})")
    compiled, state, batch = build_step(spec, args.source, default_options=args.xla_defaults)
    parts = operation_parts(compiled.as_text())
    products = product_flops(compiled.as_text())
    holder = {"state": state}

    def run():
        holder["state"], metrics = compiled(holder["state"], batch)
        jax.block_until_ready(metrics.loss)

    run()  # warm-up
    wall = []
    for _ in range(args.steps):
        start = time.perf_counter()
        run()
        wall.append(time.perf_counter() - start)
    durations = traced_durations(run, args.steps)
    per_part = collections.defaultdict(float)
    untraced = []  # products whose trace event covers only their launch
    for name, micros in durations.items():
        if products.get(name, 0.0) / (micros / args.steps * 1e-6 + 1e-12) > UNTRACED_RATE:
            untraced.append((name, products[name]))
        elif name in parts:
            per_part[parts[name]] += micros / 1e3 / args.steps
        elif re.fullmatch(r"[\w\-]+(\.\d+)?", name) and "::" not in name:
            per_part["unattributed"] += micros / 1e3 / args.steps  # an op without metadata
    total = sum(per_part.values())
    rows = sorted(per_part.items(), key=lambda item: -item[1])
    print(
        f"Step profile, {args.config} config (widths {spec['widths']}, {spec['num_concepts']} "
        f"concepts, k={spec['top_k']}, {spec['batch_rows']} rows), source m{args.source}; "
        f"{jax.devices()[0].platform} ({platform.processor() or 'cpu'}), jax {jax.__version__}; "
        f"wall {statistics.median(wall):.3f} s/step (median of {args.steps}), "
        f"summed XLA operations {total / 1e3:.3f} s/step; "
        f"{'XLA default options' if args.xla_defaults else 'the training loop options'}"
    )
    print(f"{'part/pass':<24}{'ms/step':>10}{'share':>8}")
    for part, millis in rows:
        print(f"{part:<24}{millis:>10.1f}{millis / total:>8.1%}")
    for name, flops in untraced:
        print(
            f"not in the table: {name} ({parts.get(name, '?')}, {flops / 1e9:.1f} GFLOP) runs "
            "asynchronously; its trace event covers only the launch"
        )
    if args.ops:
        print(f"the {args.ops} slowest operations (ms/step, part, HLO instruction):")
        hlo = {
            m.group(1): m.group(0).strip()
            for m in re.finditer(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*$", compiled.as_text(), re.M)
        }
        listed = sorted((d for d in durations.items() if d[0] in parts), key=lambda d: -d[1])
        for name, micros in listed[: args.ops]:
            print(f"{micros / 1e3 / args.steps:8.1f}  {parts[name]:<24}{hlo[name][:160]}")
    print(
        json.dumps(
            {
                "benchmark": "step_profile",
                "config": args.config,
                "source": args.source,
                "wall_s_per_step": round(statistics.median(wall), 4),
                "xla_defaults": args.xla_defaults,
                "operations_ms_per_step": {p: round(m, 1) for p, m in rows},
                "untraced_products_gflop": {n: round(f / 1e9, 1) for n, f in untraced},
                "jax": jax.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
