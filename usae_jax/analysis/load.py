"""A trained USAE as the analysis tools need it: restored parameters (:func:`load_run`, the one
restore path), the store's standardisation, and concepts ranked by energy."""

from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from usae_jax.config import TrainConfig, USAEConfig, train_config_from_dict
from usae_jax.data.loader import StoreSource
from usae_jax.data.store import Store, read_manifest
from usae_jax.model.usae import encode_eval, normalize_dictionary
from usae_jax.train.checkpoint import Checkpointer


def load_run(workdir: str | os.PathLike, step: int | None = None):
    """``(config, params, batch_stats, step)`` of a training workdir: the one restore path of
    every analysis. Reads ``config.json`` and the checkpoint of ``step`` (default: the newest)
    without building an optimiser or a train state; arrays come back on the host as numpy.
    Checkpoints of the layout before the parameter/optimiser split are read too."""
    with open(os.path.join(os.fspath(workdir), "config.json")) as handle:
        config_json = json.load(handle)
    config: TrainConfig = train_config_from_dict(config_json)
    checkpointer = Checkpointer(workdir, config.keep_checkpoints, config_json)
    try:
        model, meta = checkpointer.restore_model(step)
    finally:
        checkpointer.close()
    return config, model["params"], model["batch_stats"], int(meta["step"])


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
    for name in usae.model_names:
        model = params["models"][name]
        codes = encode_eval(usae, model, stats[name], batch[name]).codes
        atoms = normalize_dictionary(model["dictionary"])
        total = total + jnp.linalg.norm(jnp.mean(codes, axis=0)[:, None] * atoms, axis=1)
    return total


def concept_energy(usae: USAEConfig, params: dict, stats: dict, batch: dict) -> np.ndarray:
    """``[n]`` energy of each concept on one paired standardised batch ``{name: [B, d]}``: the
    official analysis code's ``sum_m ||E_x[z_m(x)_c] D̂_m[c]||`` (unsquared norm, each model
    encoding its own activations, eval-mode BatchNorm)."""
    return np.asarray(_energy(usae, params, stats, {k: jnp.asarray(v) for k, v in batch.items()}))


def most_energetic(energy: np.ndarray, count: int) -> list[int]:
    """Ids of the ``count`` concepts with the largest energy, largest first."""
    return [int(i) for i in np.argsort(-np.asarray(energy))[:count]]


def top_energy_concepts(
    usae: USAEConfig, params: dict, stats: dict, store_dir: str | os.PathLike, rows: int, count: int
) -> list[int]:
    """The ``count`` most energetic concepts on the first batch of ``rows`` store rows (the
    standardised batch of step 0, seed 0), largest first."""
    batch = StoreSource(Store(store_dir, verify=False)).batch(0, rows, 0)
    return most_energetic(concept_energy(usae, params, stats, batch), count)
