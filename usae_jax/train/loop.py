"""The training loop: ``train(config, workdir, source)``.

Auto-resumes from the newest checkpoint in ``workdir``; the source model of each step and the
rows of each batch depend only on ``(seed, step)``, so an interrupted and resumed run ends with
the same parameters as an uninterrupted one. Metrics go to ``workdir/metrics.jsonl``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable

import jax
import numpy as np

from usae_jax import config as config_lib
from usae_jax.config_io import bind_models, to_dict
from usae_jax.data.source import PairedSource
from usae_jax.parallel.compiler import step_compiler_options
from usae_jax.parallel.concept import sharded_ops
from usae_jax.parallel.host_memory import retain_freed_memory
from usae_jax.parallel.hosts import ProcessShare
from usae_jax.parallel.mesh import (
    DATA,
    chunk_row_sharded,
    make_training_mesh,
    must_block_each_step,
    replicated,
    row_sharded,
    runs_on_cpu,
    shard_chunk_rows,
    shard_rows,
)
from usae_jax.parallel.prefetch import prefetch_chunks_to_mesh, prefetch_to_mesh
from usae_jax.progress import progress
from usae_jax.train.checkpoint import Checkpointer
from usae_jax.train.metrics import dead_fraction, evaluate, r2_label
from usae_jax.train.optim import build_optimizers
from usae_jax.train.plots import plot_r2_matrix, plot_training_curves
from usae_jax.train.state import TrainState, abstract_train_state, init_train_state
from usae_jax.train.steps import make_steps
from usae_jax.train.writers import MetricWriter, jsonl_writer, read_jsonl


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or Inf."""


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` returns."""

    state: TrainState
    """The final training state (on the devices)."""

    final_metrics: dict
    """``r2`` and ``r2_per_feature`` ``[M, M]`` lists, ``r2_encoding``, ``l0``, ``dead_recent``
    (concepts not fired in the last ``dead_recent_rows`` training rows), ``steps``."""

    seconds: float
    """Wall time of this call (compilation included)."""

    compilations: int
    """How many times a step function was traced in this call (one per source model)."""

    config: config_lib.TrainConfig | None = None
    """The config as run: the recipe with the source's model names and widths bound."""


class StepRunner:
    """Jitted, sharded, donated steps; one compilation per source model (or one for "all").

    With ``config.steps_per_dispatch > 1`` a chunk of steps runs inside one jitted
    ``lax.scan`` instead (``lax.switch`` over the per-source bodies, the branch index of each
    step drawn on the host as before and passed as data): one compilation per chunk length.
    ``traces`` counts how often a step body was traced, so tests can pin compilations. Steps
    compile with :func:`~usae_jax.parallel.compiler.step_compiler_options` of the mesh; on a
    CPU mesh freed host memory stays mapped (``config.retain_freed_memory``).
    """

    def __init__(self, config: config_lib.TrainConfig, optimizers: dict, mesh, state_sharding):
        self.config = config
        self.mesh = mesh
        self.traces = 0
        self._plan = make_steps(config, optimizers, sharded_ops(mesh))
        self._keys = list(self._plan.bodies)
        options = step_compiler_options(mesh)
        if config.retain_freed_memory and runs_on_cpu(mesh):
            retain_freed_memory()  # glibc only; elsewhere it does nothing
        if config.steps_per_dispatch == 1:
            self._steps = {
                key: jax.jit(
                    self._counted(body),
                    in_shardings=(state_sharding, row_sharded(mesh)),
                    out_shardings=(state_sharding, replicated(mesh)),
                    donate_argnums=(0,),
                    compiler_options=options,
                )
                for key, body in self._plan.bodies.items()
            }
        else:
            self._chunk = jax.jit(
                self._scanned([self._counted(self._plan.bodies[k]) for k in self._keys]),
                in_shardings=(state_sharding, chunk_row_sharded(mesh), replicated(mesh)),
                out_shardings=(state_sharding, replicated(mesh)),
                donate_argnums=(0,),
                compiler_options=options,
            )
        self._block = must_block_each_step(mesh)

    def _counted(self, body):
        def counted(state, batch):
            self.traces += 1
            return body(state, batch)

        return counted

    @staticmethod
    def _scanned(branches):
        """``(state, {name: [T, B, d]}, branch [T]) -> (state, metrics of the last step)``."""

        def one(state, inputs):
            batch, branch = inputs
            if len(branches) == 1:
                return branches[0](state, batch)
            return jax.lax.switch(branch, branches, state, batch)

        def chunk(state, batches, branch):
            state, metrics = jax.lax.scan(one, state, (batches, branch))
            return state, jax.tree.map(lambda m: m[-1], metrics)

        return chunk

    def source_of(self, step: int) -> str | None:
        """The source model of ``step`` (None when every model is encoded every step)."""
        return self._plan.key_of(step)

    def __call__(self, state: TrainState, batch: dict, steps: int | range):
        """Run ``steps``: one step (an int, or a range of one), or with ``steps_per_dispatch >
        1`` a range of steps whose batches are stacked ``[len(steps), B, d]``."""
        steps = range(steps, steps + 1) if isinstance(steps, int) else steps
        if self.config.steps_per_dispatch == 1:
            (step,) = steps
            state, metrics = self._steps[self.source_of(step)](state, batch)
        else:
            branch = np.asarray([self._keys.index(self.source_of(s)) for s in steps], np.int32)
            state, metrics = self._chunk(state, batch, branch)
        if self._block:
            jax.block_until_ready(state)
        return state, metrics


def step_chunks(start: int, end: int, size: int) -> list[range]:
    """The steps ``[start, end)`` cut at multiples of ``size`` (so a resumed run, which starts
    at a checkpoint, runs the same chunks as an uninterrupted one)."""
    edges = [start, *range((start // size + 1) * size, end, size), end]
    return [range(a, b) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]


def _check_finite(value: float, first_step: int, last_step: int) -> None:
    if not np.isfinite(value):
        raise NonFiniteLossError(
            f"loss became {value} between steps {first_step} and {last_step}; the last "
            "checkpoint before that range is intact. Check the input activations and the "
            "learning rate."
        )


def train(
    config: config_lib.TrainConfig,
    workdir: str | os.PathLike,
    source: PairedSource,
    *,
    stop_after: int | None = None,
    make_writer: Callable[[str, int], MetricWriter] = jsonl_writer,
    plots: bool = True,
) -> TrainResult:
    """Train a USAE on ``source`` under ``config``, checkpointing into ``workdir``.

    Args:
      stop_after: stop (with a checkpoint) after this many total steps, as if interrupted;
        a later call resumes. For tests and preemptible jobs.
      make_writer: ``make_writer(workdir, resume_step) -> MetricWriter`` for the metric
        records (default: ``workdir/metrics.jsonl``; see :mod:`usae_jax.train.writers`).
      plots: draw ``losses.png`` and ``r2_matrix.png`` at the end.
    """
    started = time.perf_counter()
    config = bind_models(config, source.names, source.widths)
    usae = config.usae
    os.makedirs(workdir, exist_ok=True)
    total_steps = config.total_steps(source.num_rows)
    steps_per_epoch = max(1, source.num_rows // config.batch_rows)
    mesh = make_training_mesh(config)
    data_devices = mesh.shape[DATA]
    if config.batch_rows % data_devices:
        raise ValueError(
            f"batch_rows={config.batch_rows} is not divisible by {data_devices} data devices"
        )
    optimizers, _ = build_optimizers(config, total_steps, steps_per_epoch)
    config_json = to_dict(config)
    checkpointer = Checkpointer(workdir, config.keep_checkpoints, config_json)
    # Shapes first: a resume restores straight onto the sharded layout, a fresh run is
    # initialised by one jitted program with those output shardings. Either way no device
    # ever holds more than its shard of the state.
    abstract, shardings = abstract_train_state(config, optimizers, mesh)
    if checkpointer.latest_step() is not None:
        state, _ = checkpointer.restore(abstract)  # raises before anything in workdir is touched
    else:
        state = init_train_state(config, optimizers, shardings)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as handle:
            json.dump(config_json, handle, indent=2)
    start = int(state.step)
    runner = StepRunner(config, optimizers, mesh, shardings)
    writer = make_writer(os.fspath(workdir), start)
    end = total_steps if stop_after is None else min(total_steps, stop_after)

    last_checked = start
    bar = progress(
        total_steps, initial=start, desc="train USAE", unit="step", enabled=config.progress_bar
    )
    if config.steps_per_dispatch == 1:
        batches = prefetch_to_mesh(
            ProcessShare(source),
            range(start, end),
            config.batch_rows,
            config.seed,
            place=lambda host: shard_rows(host, mesh),
        )
    else:
        batches = prefetch_chunks_to_mesh(
            ProcessShare(source),
            step_chunks(start, end, config.steps_per_dispatch),
            config.batch_rows,
            config.seed,
            place=lambda host: shard_chunk_rows(host, mesh),
        )
    try:
        for steps, batch in batches:
            steps = range(steps, steps + 1) if isinstance(steps, int) else steps
            state, metrics = runner(state, batch, steps)
            step, done = steps[-1], steps.stop
            bar.update(len(steps))
            # Lines follow the schedule only (not ``stop_after``), so an interrupted and resumed
            # run writes exactly the lines of an uninterrupted one.
            if done % config.log_every == 0 or done == total_steps:
                metrics = jax.device_get(metrics)
                _check_finite(float(metrics.loss), last_checked, done)
                last_checked = done
                record = {
                    "loss": float(metrics.loss),
                    "target_losses": np.asarray(metrics.target_losses),
                    "l0": float(metrics.l0),
                    "source": runner.source_of(step) or "all",
                    "dead_recent": dead_fraction(
                        jax.device_get(state.tokens_since_fired), recent_rows(config, source)
                    ),
                    "dead_recent_rows": recent_rows(config, source),
                }
                writer.write(done, record)
                bar.set_postfix(loss=f"{record['loss']:.4f}")
            scheduled = done % config.checkpoint_every == 0
            if scheduled or done == end:
                _check_finite(float(jax.device_get(metrics.loss)), last_checked, done)
                if scheduled and done < total_steps:  # the final R² is in the final record
                    # Written before the save: a crash in between resumes from an earlier
                    # checkpoint, which drops this line and writes it again.
                    host = jax.device_get((state.params, state.batch_stats))
                    scores = evaluate(usae, *host, eval_batch(config, source))
                    writer.write(done, {"r2": scores["r2"], "r2_encoding": scores["encoding"]})
                checkpointer.save(done, state)
    finally:
        batches.close()
        bar.close()

    final = final_report(config, workdir, source, state, plots)
    final["steps"] = int(state.step)
    writer.write(int(state.step), {"final": final})
    writer.close()
    checkpointer.close()
    return TrainResult(state, final, time.perf_counter() - started, runner.traces, config)


def eval_batch(config, source: PairedSource) -> dict:
    """The rows R² is measured on: ``eval_rows`` rows drawn with seed ``config.seed + 1``."""
    return source.batch(0, min(config.eval_rows, source.num_rows), config.seed + 1)


def recent_rows(config, source: PairedSource) -> int:
    """The window of ``dead_recent``: the training rows of one epoch's whole steps."""
    return max(1, source.num_rows // config.batch_rows) * config.batch_rows


def final_report(
    config, workdir, source: PairedSource, state: TrainState, plots: bool = True
) -> dict:
    """R² matrices (both centrings, each model's own sparsity rule), L0 and ``dead_recent``
    fractions; with ``plots`` draws ``r2_matrix.png`` and (from ``metrics.jsonl``, when
    written) ``losses.png``."""
    usae = config.usae
    batch = eval_batch(config, source)
    rows = len(next(iter(batch.values())))
    host = jax.device_get((state.params, state.batch_stats, state.tokens_since_fired))
    params, stats, tokens = host
    result = evaluate(usae, params, stats, batch)
    report = {
        "r2": result["r2"].tolist(),
        "r2_per_feature": result["r2_per_feature"].tolist(),
        "r2_encoding": result["encoding"],
        "l0": dict(zip(usae.model_names, result["l0"].tolist(), strict=True)),
        "dead_recent": dead_fraction(tokens, recent_rows(config, source)),
        "dead_recent_rows": recent_rows(config, source),
        "eval_rows": rows,
    }
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    if plots and jax.process_index() == 0:
        records = []
        if os.path.exists(metrics_path):
            records = [r for r in read_jsonl(metrics_path) if "loss" in r]
        if records:
            plot_training_curves(records, usae.model_names, os.path.join(workdir, "losses.png"))
        plot_r2_matrix(
            result["r2"],
            usae.model_names,
            os.path.join(workdir, "r2_matrix.png"),
            title=f"{r2_label(usae)}, {rows} rows",
        )
    return report
