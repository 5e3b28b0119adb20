"""Each model's own encoding at evaluation time: the one place analysis and metrics encode.

Evaluation encodes each model's activations as the paper's analysis does: its own encoder,
BatchNorm in eval mode (running statistics), and the model's own sparsity rule. A USAE and a
local-TopK SPARC model let each model keep its own top ``k``; a BatchTopK USAE keeps every
activation above the model's trained threshold (``stats["threshold"]``); a global-TopK SPARC
model picks one support per row from every stream's summed logits, and a crosscoder reads one
code from every model at once, so those two can only be encoded as a whole paired batch
(:func:`encode_models_eval`). Evaluation runs in float32 whatever ``compute_dtype`` says.

Shapes: ``B`` rows, ``d`` model width, ``n`` concepts.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from usae_jax.config import USAEConfig
from usae_jax.model.batch_topk import threshold_codes
from usae_jax.model.crosscoder import decode_model, encode_joint
from usae_jax.model.sparc import encode_streams
from usae_jax.model.usae import Encoded, affine, decode, encode, pre_activations, top_k_codes


def encode_eval(usae: USAEConfig, model_params: dict, stats: dict | None, x: jax.Array) -> Encoded:
    """Encode one model's rows ``x`` ``[B, d]`` for evaluation, with that model's own rule.

    ``architecture="usae"``: Linear -> BatchNorm with the running statistics -> ReLU -> TopK
    (or, for BatchTopK, the activations above ``stats["threshold"]``).
    ``"sparc"`` with local TopK: the affine stream encoder -> ReLU -> TopK (``stats`` unused).
    Only for rules where a model's code depends on its own rows alone; a global-TopK model or a
    crosscoder needs every model: use :func:`encode_models_eval`.
    """
    if usae.architecture == "crosscoder" or usae.sparsity == "global_topk":
        raise ValueError(
            f"architecture={usae.architecture!r} with sparsity={usae.sparsity!r} reads every "
            "model's rows for one code, so one model cannot be encoded alone: use "
            "encode_models_eval on a paired batch"
        )
    if usae.architecture == "sparc":
        h = affine(model_params, x)
        codes, values, indices = top_k_codes(jax.nn.relu(h), usae.top_k)
        return Encoded(h, codes, values, indices)
    if usae.sparsity == "batch_topk":
        pre, _ = pre_activations(
            model_params,
            stats,
            x,
            train=False,
            momentum=usae.batchnorm_momentum,
            eps=usae.batchnorm_eps,
        )
        return Encoded(pre, threshold_codes(jax.nn.relu(pre), stats["threshold"]), None, None)
    encoded, _ = encode(
        model_params,
        stats,
        x,
        top_k=usae.top_k,
        train=False,
        momentum=usae.batchnorm_momentum,
        eps=usae.batchnorm_eps,
    )
    return encoded


def encode_models_eval(
    usae: USAEConfig, params: dict, stats: dict, batch: dict[str, jax.Array]
) -> dict[str, Encoded]:
    """Encode every model's rows of a paired batch ``{name: [B, d_name]}`` with its own rule.

    USAE: each model's encoder, eval-mode BatchNorm and its own rule (:func:`encode_eval`).
    SPARC: the affine stream encoders under ``usae.sparsity`` (global TopK: one support per row
    for every stream). Crosscoder: the one joint code, the same :class:`Encoded` for every
    model. Returns ``{name: Encoded}`` with ``[B, n]`` codes.
    """
    if usae.architecture == "sparc":
        return encode_streams(usae, params["models"], batch, compute_dtype=jnp.float32)
    if usae.architecture == "crosscoder":
        threshold = stats[usae.model_names[0]].get("threshold")
        encoded, _ = encode_joint(
            usae,
            params["models"],
            batch,
            train=False,
            threshold=threshold,
            compute_dtype=jnp.float32,
        )
        return dict.fromkeys(usae.model_names, encoded)
    return {
        name: encode_eval(usae, params["models"][name], stats[name], batch[name])
        for name in usae.model_names
    }


def decode_eval(usae: USAEConfig, model_params: dict, encoded: Encoded) -> jax.Array:
    """One model's reconstruction ``[B, d]`` of an encoding: the row-normalised dictionary of a
    USAE or SPARC model, the raw dictionary plus decoder bias of a crosscoder."""
    if usae.architecture == "crosscoder":
        return decode_model(model_params, encoded)
    return decode(encoded, model_params["dictionary"])
