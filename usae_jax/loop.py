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

import jax
import numpy as np

from usae_jax import config as config_lib
from usae_jax.checkpoint import Checkpointer
from usae_jax.concept_sharding import DATA, create_mesh_2d, sharded_ops, state_shardings
from usae_jax.data.loader import prefetch_to_mesh
from usae_jax.data.source import PairedSource, check_matches
from usae_jax.distributed import ProcessShare
from usae_jax.metrics import dead_fraction, evaluate, r2_label
from usae_jax.optim import make_optimizer, schedule_for
from usae_jax.plots import plot_r2_matrix, plot_training_curves
from usae_jax.progress import progress
from usae_jax.sharding import must_block_each_step, replicated, row_sharded, shard_rows
from usae_jax.train_state import TrainState, create_train_state
from usae_jax.train_step import (
    UNSHARDED,
    draw_source,
    make_all_sources_step,
    make_source_step,
)
from usae_jax.writers import JsonlWriter, read_jsonl


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


class StepRunner:
    """Jitted, sharded, donated steps; one compilation per source model (or one for "all").

    ``traces`` counts how often each step function was traced, so tests can pin compilations.
    """

    def __init__(self, config: config_lib.TrainConfig, optimizers: dict, mesh, state_sharding):
        self.config = config
        self.mesh = mesh
        self.traces = 0
        usae = config.usae
        batch_sharding = row_sharded(mesh)
        ops = sharded_ops(mesh)
        if usae.architecture == "sparc":  # every stream every step, local or global TopK
            from usae_jax.sparc import make_sparc_step

            if ops is not UNSHARDED:
                raise ValueError("SPARC steps do not support concept_parallel > 1 yet")
            bodies = {None: make_sparc_step(usae, optimizers)}
        elif config.source_sampling == "all":
            bodies = {None: make_all_sources_step(usae, optimizers, ops)}
        else:
            bodies = {
                name: make_source_step(usae, optimizers, name, ops) for name in usae.model_names
            }
        self._steps = {
            key: jax.jit(
                self._counted(body),
                in_shardings=(state_sharding, batch_sharding),
                out_shardings=(state_sharding, replicated(mesh)),
                donate_argnums=(0,),
            )
            for key, body in bodies.items()
        }
        self._block = must_block_each_step(mesh)

    def _counted(self, body):
        def counted(state, batch):
            self.traces += 1
            return body(state, batch)

        return counted

    def source_of(self, step: int) -> str | None:
        """The source model of ``step`` (None for "all" and for SPARC)."""
        if self.config.source_sampling == "all" or self.config.usae.architecture == "sparc":
            return None
        names = self.config.usae.model_names
        return names[draw_source(self.config.seed, step, len(names))]

    def __call__(self, state: TrainState, batch: dict, step: int):
        state, metrics = self._steps[self.source_of(step)](state, batch)
        if self._block:
            jax.block_until_ready(state)
        return state, metrics


def make_training_mesh(config: config_lib.TrainConfig):
    """The ``("data", "model")`` mesh of a run (``"model"`` has size ``concept_parallel``)."""
    data = config.data_parallel
    if data is None:
        data = max(1, jax.device_count() // config.concept_parallel)
    return create_mesh_2d(data, config.concept_parallel)


def build_optimizers(config: config_lib.TrainConfig, total_steps: int, steps_per_epoch: int):
    """One optimiser per model; warmup defaults to one epoch of steps."""
    warmup = config.optim.warmup_steps
    warmup = steps_per_epoch if warmup is None else warmup
    schedule = schedule_for(config.optim, total_steps, warmup, config.usae.num_models)
    optimizer = make_optimizer(config.optim, schedule)
    return {name: optimizer for name in config.usae.model_names}, schedule


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
) -> TrainResult:
    """Train a USAE on ``source`` under ``config``, checkpointing into ``workdir``.

    Args:
      stop_after: stop (with a checkpoint) after this many total steps, as if interrupted;
        a later call resumes. For tests and preemptible jobs.
    """
    started = time.perf_counter()
    usae = config.usae
    check_matches(source, usae.model_names, usae.widths)
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
    config_json = config_lib.to_dict(config)
    checkpointer = Checkpointer(workdir, config.keep_checkpoints, config_json)
    fresh = create_train_state(config, optimizers)
    shardings = state_shardings(fresh, mesh, usae.num_concepts)
    state = jax.device_put(fresh, shardings)
    if checkpointer.latest_step() is not None:
        state, _ = checkpointer.restore(state)  # raises before anything in workdir is touched
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as handle:
            json.dump(config_json, handle, indent=2)
    start = int(state.step)
    runner = StepRunner(config, optimizers, mesh, shardings)
    writer = JsonlWriter(os.path.join(workdir, "metrics.jsonl"), resume_step=start)
    end = total_steps if stop_after is None else min(total_steps, stop_after)

    last_checked = start
    bar = progress(
        total_steps, initial=start, desc="train USAE", unit="step", enabled=config.progress_bar
    )
    batches = prefetch_to_mesh(
        ProcessShare(source),
        range(start, end),
        config.batch_rows,
        config.seed,
        place=lambda host: shard_rows(host, mesh),
    )
    try:
        for step, batch in batches:
            state, metrics = runner(state, batch, step)
            done = step + 1
            bar.update(1)
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

    final = final_report(config, workdir, source, state)
    final["steps"] = int(state.step)
    writer.write(int(state.step), {"final": final})
    checkpointer.close()
    return TrainResult(state, final, time.perf_counter() - started, runner.traces)


def eval_batch(config, source: PairedSource) -> dict:
    """The rows R² is measured on: ``eval_rows`` rows drawn with seed ``config.seed + 1``."""
    return source.batch(0, min(config.eval_rows, source.num_rows), config.seed + 1)


def recent_rows(config, source: PairedSource) -> int:
    """The window of ``dead_recent``: the training rows of one epoch's whole steps."""
    return max(1, source.num_rows // config.batch_rows) * config.batch_rows


def final_report(config, workdir, source: PairedSource, state: TrainState) -> dict:
    """R² matrices (both centrings, each model's own sparsity rule), L0 and ``dead_recent``
    fractions; writes ``r2_matrix.png``."""
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
    if jax.process_index() == 0:
        records = [r for r in read_jsonl(os.path.join(workdir, "metrics.jsonl")) if "loss" in r]
        if records:
            plot_training_curves(records, usae.model_names, os.path.join(workdir, "losses.png"))
        plot_r2_matrix(
            result["r2"],
            usae.model_names,
            os.path.join(workdir, "r2_matrix.png"),
            title=f"{r2_label(usae)}, {rows} rows",
        )
    return report
