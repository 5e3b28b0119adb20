"""Cross-model transfer through a USAE's shared concept space: search, steering, erasure.

Concept ``c`` has a unit direction ``D̂_m[c]`` (row ``c`` of model ``m``'s row-normalised
dictionary) in every model, in that model's *standardised* activation space ``s = (x - mu) /
sigma`` (one scalar ``mu``, ``sigma`` per model, the store's). Because the standardisation is
scalar, a direction has the same cosines in raw and standardised units; a *step* of ``alpha``
along ``D̂`` in standardised units is a step of ``alpha * sigma`` in raw units.

* :func:`search_concepts`: the concepts whose model-A rows best match a query (a direction, a
  concept id, or example activations), with their directions in every model.
* :func:`steer` / :func:`steering_effect`: add ``alpha * D̂_B[c]`` to model B's activations and
  measure every concept's change. The pre-activation of concept ``j`` changes by exactly
  ``alpha * <D̂_B[c], W_B[:, j]> * gamma_j / sqrt(var_j + eps)`` (the encoder is affine), which
  :func:`steering_effect` reports as the prediction next to the measurement.
* :func:`erase` / :func:`erasure_effect`: project ``D̂_B[c]`` out of B's activations; measure the
  concept's activation and the change of the USAE reconstruction.
* :func:`usae_jax.backbones.blocks.block_runner_for`: edits at layer ``l`` of a transformer
  backbone (ViT, DINOv2, CLIP, SigLIP; our own modules) can be carried on through blocks
  ``l+1 .. L`` (steer early, read later).
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from usae_jax.backbones.blocks import carry_edit
from usae_jax.backbones.tokens import resample_grid
from usae_jax.config import USAEConfig
from usae_jax.model.inference import encode_eval
from usae_jax.model.usae import decode, normalize_dictionary


class SearchResult(NamedTuple):
    """The best-matching concepts of a query, best first."""

    concepts: np.ndarray
    """``[top]`` concept ids."""
    cosines: np.ndarray
    """``[top]`` cosine of each concept's model-A row with the query."""
    directions: dict
    """``{model: [top, d_m]}`` unit direction ``D̂_m[c]`` of each found concept in every model."""


class EditEffect(NamedTuple):
    """Per-concept effect of an edit of ``B`` rows of one model's activations."""

    pre_change: np.ndarray
    """``[n]`` mean over rows of the change of each concept's pre-activation (BatchNorm output)."""
    predicted_pre_change: np.ndarray
    """``[n]`` the same, predicted in closed form from the encoder (the edit is linear)."""
    code_before: np.ndarray
    """``[n]`` mean code (ReLU + TopK, eval mode) of each concept before the edit."""
    code_after: np.ndarray
    """``[n]`` the same after the edit."""
    reconstruction_mse: tuple[float, float]
    """Mean squared error of the USAE's own reconstruction, before and after (standardised)."""
    reconstruction_change: float
    """Mean squared change of the reconstruction itself, ``mean((x̂_after - x̂_before)²)``."""


def unit_dictionaries(params: dict) -> dict[str, np.ndarray]:
    """``{model: [n, d_m]}`` row-normalised dictionaries (as the decoder uses them)."""
    return {
        name: np.asarray(normalize_dictionary(jnp.asarray(model["dictionary"])))
        for name, model in params["models"].items()
    }


def search_concepts(
    params: dict,
    model: str,
    *,
    direction: np.ndarray | None = None,
    concept: int | None = None,
    examples: np.ndarray | None = None,
    baseline: np.ndarray | None = None,
    top: int = 5,
) -> SearchResult:
    """Concepts whose model-``model`` dictionary rows have the largest cosine with a query.

    Give exactly one of:
      direction: ``[d]`` a direction in the model's activation space (raw or standardised units:
        the cosine is the same).
      concept: a concept id; the query is its own row ``D̂_A[c]`` (it ranks first).
      examples: ``[N, d]`` standardised activations showing the concept; the query is their mean
        minus the mean of ``baseline`` ``[N', d]`` (if given; otherwise minus nothing).
    """
    if sum(q is not None for q in (direction, concept, examples)) != 1:
        raise ValueError("give exactly one of direction, concept, examples")
    units = unit_dictionaries(params)
    if model not in units:
        raise ValueError(f"unknown model {model!r}; have {sorted(units)}")
    if concept is not None:
        query = units[model][int(concept)]
    elif examples is not None:
        query = np.mean(np.asarray(examples, np.float64), axis=0)
        if baseline is not None:
            query = query - np.mean(np.asarray(baseline, np.float64), axis=0)
    else:
        query = np.asarray(direction, np.float64)
    if query.shape != units[model].shape[1:]:
        raise ValueError(
            f"query has shape {query.shape}, model {model!r} has width {units[model].shape[1]}"
        )
    norm = np.linalg.norm(query)
    if not norm > 0:
        raise ValueError("the query direction is zero")
    cosines = units[model] @ (query / norm)
    order = np.argsort(-cosines)[:top]
    return SearchResult(
        concepts=order,
        cosines=cosines[order],
        directions={name: unit[order] for name, unit in units.items()},
    )


def steer(x: np.ndarray, direction: np.ndarray, alpha: float, std: float = 1.0) -> np.ndarray:
    """``x + alpha * std * direction``: ``[B, d]``; ``alpha`` in standardised units, ``std`` the
    model's standardisation scale (1 for standardised ``x``)."""
    return np.asarray(x) + alpha * std * np.asarray(direction)


def erase(x: np.ndarray, direction: np.ndarray, mean: float = 0.0, std: float = 1.0) -> np.ndarray:
    """Project the unit ``direction`` ``[d]`` out of ``x`` ``[B, d]`` in standardised space:
    ``s' = s - <s, u> u`` with ``s = (x - mean) / std``, returned in ``x``'s units."""
    u = np.asarray(direction) / np.linalg.norm(direction)
    s = (np.asarray(x) - mean) / std
    return np.asarray(x) - std * (s @ u)[:, None] * u[None, :]


def linear_readout(usae: USAEConfig, model_params: dict, stats: dict, direction) -> np.ndarray:
    """``[n]`` change of every concept's pre-activation per unit step along ``direction``."""
    gain = model_params["batchnorm"]["scale"] / jnp.sqrt(stats["var"] + usae.batchnorm_eps)
    return np.asarray((jnp.asarray(direction) @ model_params["encoder"]["kernel"]) * gain)


def edit_effect(
    usae: USAEConfig, model_params: dict, stats: dict, before: np.ndarray, after: np.ndarray
) -> EditEffect:
    """Measure an edit ``before -> after`` (both standardised ``[B, d]``) through the encoder.

    ``predicted_pre_change`` is the encoder's linear response to the mean edit.
    """
    enc = [encode_eval(usae, model_params, stats, jnp.asarray(x)) for x in (before, after)]
    recon = [decode(e, model_params["dictionary"]) for e in enc]
    mse = tuple(
        float(jnp.mean(jnp.square(jnp.asarray(x) - r)))
        for x, r in zip((before, after), recon, strict=True)
    )
    delta = np.mean(np.asarray(after) - np.asarray(before), axis=0)
    return EditEffect(
        pre_change=np.asarray(jnp.mean(enc[1].pre_codes - enc[0].pre_codes, axis=0)),
        predicted_pre_change=linear_readout(usae, model_params, stats, delta),
        code_before=np.asarray(jnp.mean(enc[0].codes, axis=0)),
        code_after=np.asarray(jnp.mean(enc[1].codes, axis=0)),
        reconstruction_mse=mse,
        reconstruction_change=float(jnp.mean(jnp.square(recon[1] - recon[0]))),
    )


def steering_effect(
    usae: USAEConfig,
    params: dict,
    stats: dict,
    model: str,
    x: np.ndarray,
    concept: int,
    alpha: float,
) -> EditEffect:
    """Steer standardised activations ``x`` ``[B, d]`` of ``model`` by ``alpha * D̂[concept]``."""
    direction = unit_dictionaries(params)[model][concept]
    return edit_effect(usae, params["models"][model], stats[model], x, steer(x, direction, alpha))


def erasure_effect(
    usae: USAEConfig, params: dict, stats: dict, model: str, x: np.ndarray, concept: int
) -> EditEffect:
    """Project ``D̂[concept]`` out of standardised activations ``x`` ``[B, d]`` of ``model``."""
    direction = unit_dictionaries(params)[model][concept]
    return edit_effect(usae, params["models"][model], stats[model], x, erase(x, direction))


def standardised_rows(backbone, tokens, grid, mean: float, std: float) -> np.ndarray:
    """All tokens ``[B, prefix + h * w, d]`` of one layer -> the rows the store holds for them:
    patch tokens resampled to ``grid`` as extraction does, standardised: ``[B * gh * gw, d]``."""
    h, w = backbone.grid
    patches = tokens[:, backbone.num_prefix :].reshape(tokens.shape[0], h, w, tokens.shape[-1])
    rows = resample_grid(patches.astype(jnp.float32), grid).reshape(-1, tokens.shape[-1])
    return np.asarray((rows - mean) / std)


def layer_edit_effects(
    usae, params, stats, backbone, run_blocks, hidden, layers, context, concept, alpha
) -> list[dict]:
    """Steer (``+ alpha * std * D̂[c]``) or erase ``D̂[c]`` at the earliest of ``layers`` and read
    every model downstream with its own encoder.

    Args:
      hidden: ``[B, prefix + tokens, d]`` all tokens of the earliest layer.
      layers: ``{model name: block index}`` (the models are layers of this one backbone).
      context: :func:`usae_jax.analysis.load.store_context` of the store (grid, mean/std).

    Returns one dict per (edit, read model): the concept's mean code before/after and the mean
    and max absolute change of every other concept's mean code.
    """
    first = min(layers, key=layers.get)
    mean, std = context["models"][first]["mean"], context["models"][first]["std"]
    u = unit_dictionaries(params)[first][concept]
    patches = hidden[:, backbone.num_prefix :]
    projection = ((patches - mean) / std) @ u  # [B, T] in standardised units
    edits = {
        "steer": jnp.broadcast_to(alpha * std * u, patches.shape),
        "erase": -std * projection[..., None] * u,
    }
    rows = []
    for kind, delta in edits.items():
        carried = carry_edit(backbone, run_blocks, hidden, layers[first], layers.values(), delta)
        for name, layer in layers.items():
            ctx = context["models"][name]
            before, after = (
                standardised_rows(backbone, h, context["grid"], ctx["mean"], ctx["std"])
                for h in carried[layer]
            )
            effect = edit_effect(usae, params["models"][name], stats[name], before, after)
            others = np.delete(effect.code_after - effect.code_before, concept)
            rows.append(
                {
                    "concept": int(concept),
                    "edit": kind,
                    "at": first,
                    "read": name,
                    "code_before": float(effect.code_before[concept]),
                    "code_after": float(effect.code_after[concept]),
                    "others_mean_abs_change": float(np.mean(np.abs(others))),
                    "others_max_abs_change": float(np.max(np.abs(others))),
                    "reconstruction_mse": list(effect.reconstruction_mse),
                }
            )
    return rows
