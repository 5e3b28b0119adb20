"""A trained USAE as the analysis tools need it: restored parameters (:func:`load_run`, the one
restore path), the store's standardisation, concepts ranked by energy, and each concept's best
natural image."""

from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from usae_jax.config import TrainConfig, USAEConfig
from usae_jax.config_io import train_config_from_dict
from usae_jax.data.loader import StoreSource
from usae_jax.data.source import PairedSource
from usae_jax.data.store import Store, read_manifest
from usae_jax.model.inference import encode_models_eval
from usae_jax.model.usae import normalize_dictionary, pre_activations
from usae_jax.train.checkpoint import Checkpointer


def load_run(workdir: str | os.PathLike, step: int | None = None):
    """``(config, params, batch_stats, step)`` of a training workdir: the one restore path of
    every analysis. Reads ``config.json`` and the checkpoint of ``step`` (default: the newest)
    without building an optimiser or a train state; arrays come back on the host as numpy.
    Checkpoints of the layout before the parameter/optimiser split are read too."""
    path = os.path.join(os.fspath(workdir), "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"no training run in {workdir}: {path} does not exist (the training loop writes it "
            "when a run starts)"
        )
    with open(path) as handle:
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
    "std"}}}`` (``backbone`` is the key the extraction used, e.g. ``"dino"``). ``"std"`` is the
    divisor the loader standardises with: the manifest's std plus its ``std_epsilon``."""
    manifest = read_manifest(store_dir)
    epsilon = float(manifest.get("std_epsilon", 0.0))
    models = {
        m["name"]: {
            "layer": m["layer"],
            "backbone": m["backbone"]["key"],
            "mean": float(m["mean"]),
            "std": float(m["std"]) + epsilon,
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


def top_energy_concepts(
    usae: USAEConfig, params: dict, stats: dict, store_dir: str | os.PathLike, rows: int, count: int
) -> list[int]:
    """The ``count`` most energetic concepts on the first batch of ``rows`` store rows (the
    standardised batch of step 0, seed 0), largest first."""
    batch = StoreSource(Store(store_dir, verify=False)).batch(0, rows, 0)
    return most_energetic(concept_energy(usae, params, stats, batch), count)


@functools.partial(jax.jit, static_argnums=(0, 4))
def _image_means(usae: USAEConfig, model: dict, stats: dict, x: jax.Array, tokens: int, concepts):
    z, _ = pre_activations(
        model, stats, x, train=False, momentum=usae.batchnorm_momentum, eps=usae.batchnorm_eps
    )
    return z[:, concepts].reshape(-1, tokens, concepts.shape[0]).mean(axis=1)


def natural_image_maxima(
    usae: USAEConfig,
    params: dict,
    stats: dict,
    source: PairedSource,
    tokens_per_image: int,
    concepts: list[int],
    batch_images: int = 64,
) -> dict[str, dict[str, np.ndarray]]:
    """Per model and concept, the largest CAM objective over the natural images of a store.

    The CAM objective (:mod:`usae_jax.analysis.cam`) is a concept's pre-ReLU BatchNorm output
    (eval mode) averaged over an image's tokens; here it is evaluated on every image of the store
    (rows ``[i * T, (i + 1) * T)`` are image ``i``, ``T = tokens_per_image``), standardised as
    for training, so a CAM image's activation can be compared with the best real image's.

    Args:
      source: the store's paired source (standardised), ``num_rows = images * T``.
      tokens_per_image: ``T``.
      concepts: the ``C`` concept ids.
      batch_images: images encoded per jitted call.

    Returns:
      ``{name: {"value": [C] float, "image": [C] int}}``: the best token-mean pre-activation of
      each concept and the index of the image reaching it.
    """
    if tokens_per_image < 1 or source.num_rows % tokens_per_image:
        raise ValueError(
            f"{source.num_rows} rows are not whole images of {tokens_per_image} tokens"
        )
    ids = jnp.asarray(concepts, jnp.int32)
    images = source.num_rows // tokens_per_image
    best = {n: np.full(len(concepts), -np.inf) for n in usae.model_names}
    where = {n: np.zeros(len(concepts), np.int64) for n in usae.model_names}
    for start in range(0, images, batch_images):
        stop = min(images, start + batch_images)
        rows = source.rows(np.arange(start * tokens_per_image, stop * tokens_per_image))
        for name in usae.model_names:
            means = np.asarray(
                _image_means(
                    usae, params["models"][name], stats[name], rows[name], tokens_per_image, ids
                )
            )  # [images in batch, C]
            top = means.max(axis=0)
            better = top > best[name]
            best[name] = np.where(better, top, best[name])
            where[name] = np.where(better, start + means.argmax(axis=0), where[name])
    return {n: {"value": best[n], "image": where[n]} for n in usae.model_names}
