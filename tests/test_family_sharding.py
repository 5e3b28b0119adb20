"""Every new rule gives the same training steps with the concept axis split over devices.

Two steps on a ("data", "model") mesh of 2 x 4 host devices against one device: the same
losses, BatchTopK thresholds and L0, and parameters within float32 rounding as AdamW rescales it
(see tests/test_concept_sharding.py for why the gap scales with the learning rate).
"""

import dataclasses

import jax
import numpy as np
import pytest

from usae_jax.config import OptimConfig, TrainConfig, USAEConfig
from usae_jax.data.synthetic.planted import PlantedConfig, generate_planted
from usae_jax.parallel.mesh import create_mesh, shard_rows
from usae_jax.train.loop import StepRunner
from usae_jax.train.optim import build_optimizers
from usae_jax.train.state import abstract_train_state, init_train_state

PLANTED = PlantedConfig(widths=(12, 8, 16), num_shared=6, num_specific=3, rows=256, seed=2)
LR = 3e-3
CASES = {  # each compiles twice (about a minute on 2 contended cores): kept to one per path
    "usae_matryoshka_batch_topk": dict(sparsity="batch_topk", matryoshka_prefixes=(8, 16)),
    "usae_matryoshka_topk": dict(matryoshka_prefixes=(4, 16)),
    "crosscoder_l1": dict(architecture="crosscoder", sparsity="l1"),
    "crosscoder_matryoshka_batch_topk": dict(
        architecture="crosscoder", sparsity="batch_topk", matryoshka_prefixes=(8,)
    ),
    "crosscoder_topk": dict(architecture="crosscoder", sparsity="local_topk"),
}


def _run(config, mesh, batches):
    optimizers, _ = build_optimizers(config, 4, 4)
    _, shardings = abstract_train_state(config, optimizers, mesh)
    state = init_train_state(config, optimizers, shardings)
    runner = StepRunner(config, optimizers, mesh, shardings)
    losses = []
    for step, batch in enumerate(batches):
        state, metrics = runner(state, shard_rows(batch, mesh), step)
        losses.append(jax.device_get(metrics))
    return jax.device_get(state), losses


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_sharded_steps_equal_single_device(case):
    overrides = CASES[case]
    config = TrainConfig(
        usae=USAEConfig(
            model_names=PLANTED.model_names,
            widths=PLANTED.widths,
            num_concepts=32,
            top_k=4,
            **overrides,
        ),
        optim=OptimConfig(learning_rate=LR, warmup_steps=0),
        batch_rows=64,
        num_steps=2,
        source_sampling="all",  # one compiled body per run (random_one: one per source)
        progress_bar=False,
    )
    source = generate_planted(PLANTED).source()
    batches = [source.batch(step, 64, 0) for step in range(2)]
    plain, plain_losses = _run(
        dataclasses.replace(config, data_parallel=1), create_mesh(1, 1), batches
    )
    split_config = dataclasses.replace(config, data_parallel=2, concept_parallel=4)
    split, split_losses = _run(split_config, create_mesh(2, 4), batches)
    for ours, theirs in zip(plain_losses, split_losses, strict=True):
        np.testing.assert_allclose(ours.target_losses, theirs.target_losses, rtol=1e-4)
        np.testing.assert_allclose(ours.l0, theirs.l0, rtol=1e-6)
    lr_sum = 2 * LR
    for name, ours in plain.batch_stats.items():
        theirs = split.batch_stats[name]
        for key in ours:
            # the running mean carries the encoder bias, whose AdamW walk is rounding noise
            # (below): 0.1 of the bias gap per update, as in tests/test_concept_sharding.py
            atol = 0.1 * 2 * 2 * lr_sum if key == "mean" else 1e-6
            np.testing.assert_allclose(ours[key], theirs[key], rtol=1e-5, atol=atol)
    if overrides.get("sparsity") == "batch_topk":  # the threshold was estimated on both
        assert all(float(s["threshold"]) > 0 for s in split.batch_stats.values())
    # Two updates of at most about LR each. A bias feeding BatchNorm (true gradient zero) or a
    # crosscoder's decoder bias (gradient = mean residual, near zero early) takes AdamW steps of
    # about LR whose sign is decided by rounding, so biases may part by up to 2 x the summed
    # learning rate; weights must agree to 1% of it (a wrong selection moves them by whole steps).
    flat_plain = jax.tree_util.tree_leaves_with_path(plain.params)
    for (path, a), b in zip(flat_plain, jax.tree.leaves(split.params), strict=True):
        bias = "bias" in jax.tree_util.keystr(path)
        atol = 2 * lr_sum if bias else 1e-2 * lr_sum
        np.testing.assert_allclose(a, b, rtol=0, atol=atol, err_msg=jax.tree_util.keystr(path))
