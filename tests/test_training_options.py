"""Training options that depart from the official recipe do what they claim, inside training:
``horizon="per_model"``, ``aux="dead_latents"``, ``source_sampling="all"``, bfloat16 products."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from usae_jax.config import OptimConfig, TrainConfig, USAEConfig
from usae_jax.data.synthetic.planted import PlantedConfig, generate_planted
from usae_jax.model.params import init_params
from usae_jax.model.usae import pre_activations
from usae_jax.train.loop import train
from usae_jax.train.metrics import evaluate
from usae_jax.train.optim import build_optimizers
from usae_jax.train.state import create_train_state
from usae_jax.train.steps import draw_source
from usae_jax.train.usae_step import make_source_step

PLANTED = PlantedConfig(widths=(12, 8, 16), num_shared=6, num_specific=3, rows=512, seed=1)


@pytest.fixture(scope="module")
def planted():
    return generate_planted(PLANTED)


def _config(usae=None, optim=None, **overrides) -> TrainConfig:
    model = dict(model_names=PLANTED.model_names, widths=PLANTED.widths, num_concepts=32, top_k=4)
    fields = dict(
        usae=USAEConfig(**{**model, **(usae or {})}),
        optim=OptimConfig(**{"learning_rate": 3e-3, **(optim or {})}),
        batch_rows=64,
        num_steps=8,
        checkpoint_every=100,
        log_every=100,
        eval_rows=128,
        progress_bar=False,
        data_parallel=1,
    )
    return TrainConfig(**{**fields, **overrides})


def test_per_model_horizon_ends_each_models_schedule_after_its_share_of_steps(planted, tmp_path):
    # 12 steps over 3 models: each "per_model" schedule spans ceil(12 / 3) = 4 updates, so with
    # final_lr = 0 (and no weight decay) a model's 5th and later updates change nothing. Under
    # the official horizon (12 updates) the 5th update still has lr = 3e-3 * (1 + cos(pi/3)) / 2.
    config = _config(
        num_steps=12,
        seed=1,
        optim=dict(horizon="per_model", final_lr=0.0, weight_decay=0.0, warmup_steps=0),
    )
    draws = [PLANTED.model_names[draw_source(1, s, 3)] for s in range(12)]
    name = next(n for n in PLANTED.model_names if draws.count(n) >= 5)
    fourth = [s for s, n in enumerate(draws) if n == name][3]
    first = train(config, tmp_path, planted.source(), stop_after=fourth + 1)
    after_four = jax.device_get(first.state.params["models"][name])
    whole = train(config, tmp_path, planted.source())
    final = jax.device_get(whole.state.params["models"][name])
    assert draws[fourth + 1 :].count(name) >= 1  # it was updated again after its 4th update
    for got, want in zip(jax.tree.leaves(final), jax.tree.leaves(after_four), strict=True):
        np.testing.assert_array_equal(got, want)


def test_dead_latent_aux_trains_dead_concepts_inside_the_step(planted):
    # aux="dead_latents": concepts that did not fire for dead_after_tokens rows reconstruct the
    # residual, so their encoder columns get a gradient even when no row selects them. With
    # nothing dead the auxiliary term is zero and unselected columns stay exactly as they were
    # (Adam's update of a zero gradient is zero; weight decay off).
    config = _config(
        usae=dict(
            num_concepts=256, top_k=2, aux="dead_latents", dead_k_aux=8, dead_after_tokens=100
        ),
        optim=dict(weight_decay=0.0),
    )
    optimizers, _ = build_optimizers(config, 8, 8)
    step = jax.jit(make_source_step(config.usae, optimizers, "alpha"))
    batch = planted.source().batch(0, 64, 0)
    alive = create_train_state(config, optimizers)
    counts = {**alive.tokens_since_fired, "alpha": jnp.full((256,), 100, jnp.int32)}
    dead = alive.replace(tokens_since_fired=counts)
    state_alive, metrics_alive = step(alive, batch)
    state_dead, metrics_dead = step(dead, batch)
    kernel = np.asarray(alive.params["models"]["alpha"]["encoder"]["kernel"])
    moved_alive = np.any(
        np.asarray(state_alive.params["models"]["alpha"]["encoder"]["kernel"]) != kernel, axis=0
    )
    moved_dead = np.any(
        np.asarray(state_dead.params["models"]["alpha"]["encoder"]["kernel"]) != kernel, axis=0
    )
    # Selected concepts (the ones that fired in this batch) move either way; the others only
    # when they are dead.
    fired = np.asarray(state_alive.tokens_since_fired["alpha"]) == 0
    assert moved_alive[fired].all() and not moved_alive[~fired].any()
    assert moved_dead[~fired].sum() >= 8, moved_dead
    assert float(metrics_dead.loss) > float(metrics_alive.loss)  # plus the auxiliary term


def test_all_sources_training_learns(planted, tmp_path):
    config = _config(source_sampling="all", num_steps=40, optim=dict(learning_rate=1e-2))
    source = planted.source()
    batch = source.batch(0, 128, 7)
    params, stats = init_params(jax.random.key(config.seed), config.usae)
    before = evaluate(config.usae, params, stats, batch)["r2"]
    result = train(config, tmp_path, source)
    trained = jax.device_get((result.state.params, result.state.batch_stats))
    after = evaluate(config.usae, *trained, batch)["r2"]
    print("R² before / after 40 all-sources steps:\n", before.round(3), "\n", after.round(3))
    # Every model learns to reconstruct itself and the others from its own code. Measured:
    # self-R² -0.21, -0.94, -0.45 -> 0.14, 0.31, 0.03; every entry rose by 0.24 to 1.25.
    assert np.mean(np.diag(after - before)) > 0.3, (before, after)
    assert np.all(after > before + 0.1), (before, after)


def test_bfloat16_products_round_their_inputs():
    usae = USAEConfig(model_names=("a",), widths=(64,), num_concepts=48, top_k=4)
    params, stats = init_params(jax.random.key(0), usae)
    model = params["models"]["a"]
    x = jax.random.normal(jax.random.key(1), (16, 64))
    kwargs = dict(train=False)
    full, _ = pre_activations(model, stats["a"], x, **kwargs)
    half, _ = pre_activations(model, stats["a"], x, compute_dtype=jnp.bfloat16, **kwargs)
    # The same affine map and eval BatchNorm applied to bfloat16-rounded inputs and kernel.
    rounded = {
        **model,
        "encoder": {**model["encoder"], "kernel": model["encoder"]["kernel"].astype(jnp.bfloat16)},
    }
    expected, _ = pre_activations(
        jax.tree.map(lambda a: a.astype(jnp.float32), rounded),
        stats["a"],
        x.astype(jnp.bfloat16).astype(jnp.float32),
        **kwargs,
    )
    np.testing.assert_allclose(half, expected, rtol=1e-5, atol=1e-5)
    gap = float(jnp.max(jnp.abs(half - full)))
    assert gap > 1e-3, gap  # bfloat16 keeps 8 significant bits: the products really differ
    assert half.dtype == jnp.float32
