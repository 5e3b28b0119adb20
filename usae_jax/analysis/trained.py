"""A trained USAE as the analysis tools need it: restored parameters, the store's
standardisation, and concepts ranked by energy."""

from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from usae_jax.checkpoint import Checkpointer
from usae_jax.config import TrainConfig, USAEConfig, train_config_from_dict
from usae_jax.data.store import read_manifest
from usae_jax.loop import build_optimizers
from usae_jax.metrics import encode_models_eval
from usae_jax.train_state import create_train_state
from usae_jax.usae.model import normalize_dictionary


def load_trained_usae(workdir: str | os.PathLike, step: int | None = None):
    """``(config, params, batch_stats, step)`` from a training workdir (``config.json`` plus the
    orbax checkpoint of ``step``, default the newest). Arrays come back on the host."""
    with open(os.path.join(os.fspath(workdir), "config.json")) as handle:
        config_json = json.load(handle)
    config: TrainConfig = train_config_from_dict(config_json)
    # The optimiser's hyper-parameters do not change its state's shapes; any horizon will do.
    optimizers, _ = build_optimizers(config, total_steps=2, steps_per_epoch=1)
    checkpointer = Checkpointer(workdir, config.keep_checkpoints, config_json)
    try:
        state, meta = checkpointer.restore(create_train_state(config, optimizers), step)
    finally:
        checkpointer.close()
    params, stats = jax.device_get((state.params, state.batch_stats))
    return config, params, stats, int(meta["step"])


def store_context(store_dir: str | os.PathLike) -> dict:
    """From a store manifest: ``{"grid": (h, w), "models": {name: {"layer", "backbone", "mean",
    "std"}}}`` (``backbone`` is the key the extraction used, e.g. ``"dino"``)."""
    manifest = read_manifest(store_dir)
    models = {
        m["name"]: {
            "layer": m["layer"],
            "backbone": m["backbone"]["key"],
            "mean": float(m["mean"]),
            "std": float(m["std"]),
        }
        for m in manifest["models"]
    }
    return {"grid": tuple(manifest["grid"]), "models": models}


@functools.partial(jax.jit, static_argnums=(0,))
def _energy(usae: USAEConfig, params: dict, stats: dict, batch: dict) -> jax.Array:
    total = jnp.zeros((usae.num_concepts,), jnp.float32)
    encoded = encode_models_eval(usae, params, stats, batch)
    for name in usae.model_names:
        model = params["models"][name]
        codes = encoded[name].codes
        atoms = normalize_dictionary(model["dictionary"])
        total = total + jnp.linalg.norm(jnp.mean(codes, axis=0)[:, None] * atoms, axis=1)
    return total


def concept_energy(usae: USAEConfig, params: dict, stats: dict, batch: dict) -> np.ndarray:
    """``[n]`` energy of each concept on one paired standardised batch ``{name: [B, d]}``: the
    official analysis code's ``sum_m ||E_x[z_m(x)_c] D̂_m[c]||`` (unsquared norm, each model
    encoding its own activations, eval-mode BatchNorm, the model's own sparsity rule)."""
    return np.asarray(_energy(usae, params, stats, {k: jnp.asarray(v) for k, v in batch.items()}))


def most_energetic(energy: np.ndarray, count: int) -> list[int]:
    """Ids of the ``count`` concepts with the largest energy, largest first."""
    return [int(i) for i in np.argsort(-np.asarray(energy))[:count]]
