"""The dead-concept counter saturates at the int32 maximum instead of wrapping negative."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from usae_jax.config import OptimConfig, TrainConfig, USAEConfig
from usae_jax.model.usae import encode
from usae_jax.train.losses import auxiliary_codes
from usae_jax.train.metrics import dead_fraction
from usae_jax.train.optim import build_optimizers
from usae_jax.train.state import create_train_state
from usae_jax.train.updates import update_firing
from usae_jax.train.usae_step import make_source_step

INT32_MAX = 2**31 - 1


def test_counter_saturates_at_the_boundary():
    counts = jnp.array([INT32_MAX - 100, INT32_MAX - 64, INT32_MAX - 63, INT32_MAX, 5], jnp.int32)
    codes = jnp.zeros((64, 5)).at[0, 4].set(1.0)  # only concept 4 fires
    after = np.asarray(update_firing(counts, codes))
    assert after.dtype == np.int32
    np.testing.assert_array_equal(after, [INT32_MAX - 36, INT32_MAX, INT32_MAX, INT32_MAX, 0])
    again = np.asarray(update_firing(jnp.asarray(after), codes))
    np.testing.assert_array_equal(again, [INT32_MAX, INT32_MAX, INT32_MAX, INT32_MAX, 0])
    # still dead for the dead fraction at any threshold the config allows
    fraction = dead_fraction({"m": again}, threshold_rows=INT32_MAX)
    assert fraction == {"m": 0.8}


def test_long_dead_concepts_stay_dead_through_a_training_step():
    usae = USAEConfig(
        model_names=("a", "b"),
        widths=(6, 5),
        num_concepts=16,
        top_k=2,
        aux="dead_latents",
        dead_after_tokens=INT32_MAX,
    )
    config = TrainConfig(usae=usae, optim=OptimConfig(), batch_rows=4, num_steps=2)
    optimizers, _ = build_optimizers(config, 2, 2)
    state = create_train_state(config, optimizers)
    near_max = jnp.full((16,), INT32_MAX - 2, jnp.int32)  # a concept dead for ~2**31 rows
    state = state.replace(tokens_since_fired={"a": near_max, "b": near_max})
    keys = jax.random.split(jax.random.key(0), 2)
    batch = {"a": jax.random.normal(keys[0], (4, 6)), "b": jax.random.normal(keys[1], (4, 5))}

    new_state, _ = jax.jit(make_source_step(usae, optimizers, "a"))(state, batch)
    counts = np.asarray(new_state.tokens_since_fired["a"])
    # at most 4 rows x top 2 concepts fired (reset to 0); every other concept sits at the max
    assert set(np.unique(counts)) <= {0, INT32_MAX}
    still_dead = counts == INT32_MAX
    assert still_dead.sum() >= 16 - 4 * 2
    np.testing.assert_array_equal(new_state.tokens_since_fired["b"], near_max)  # not the source
    assert dead_fraction({"a": counts}, INT32_MAX)["a"] == pytest.approx(still_dead.mean())

    # the dead-latent AuxK of the next step still draws on exactly those concepts
    dead_mask = new_state.tokens_since_fired["a"] >= usae.dead_after_tokens
    np.testing.assert_array_equal(dead_mask, still_dead)
    encoded, _ = encode(
        new_state.params["models"]["a"],
        new_state.batch_stats["a"],
        batch["a"],
        top_k=usae.top_k,
        train=True,
    )
    aux = np.asarray(
        auxiliary_codes(encoded.pre_codes, encoded.codes, rule="dead_latents", dead_mask=dead_mask)
    )
    assert np.any(aux != 0)
    assert not np.any(aux[:, ~still_dead])


def test_dead_after_tokens_beyond_the_counter_is_rejected():
    base = USAEConfig(model_names=("a",), widths=(4,), num_concepts=8, top_k=2)
    with pytest.raises(ValueError, match="dead_after_tokens"):
        dataclasses.replace(base, dead_after_tokens=2**31)
