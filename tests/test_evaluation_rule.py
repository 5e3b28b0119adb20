"""Evaluation uses each model's own sparsity rule, names it, and names each kind of "dead".

A global-TopK SPARC model must be evaluated with global TopK (one support per row from every
stream's summed logits), not with per-stream TopK; R² results say which encoding they used.
"""

import jax
import numpy as np
import pytest

from usae_jax.analysis.statistics import StatisticsConfig, compute_statistics, statistics_summary
from usae_jax.config import USAEConfig
from usae_jax.data.source import ArraySource
from usae_jax.model.inference import encode_eval
from usae_jax.model.params import init_params
from usae_jax.pipelines.train_and_report import format_summary
from usae_jax.train.metrics import evaluate, r2_label


def _sparc(sparsity: str) -> USAEConfig:
    return USAEConfig(
        model_names=("a", "b"),
        widths=(3, 5),
        num_concepts=6,
        top_k=2,
        architecture="sparc",
        sparsity=sparsity,
        loss="l2_auxk",
        aux="dead_latents",
    )


def _numpy_codes(models, batch, k, rule):
    """Codes ``{stream: [B, n]}`` of affine stream encoders under ``rule``, in numpy."""
    logits = {
        s: batch[s] @ models[s]["encoder"]["kernel"] + models[s]["encoder"]["bias"] for s in batch
    }
    codes = {}
    for s, h in logits.items():
        scores = sum(logits.values()) if rule == "global_topk" else np.maximum(h, 0)
        support = np.argsort(-scores, axis=1)[:, :k]
        mask = np.zeros_like(h, bool)
        np.put_along_axis(mask, support, True, axis=1)
        codes[s] = np.where(mask, np.maximum(h, 0), 0.0)
    return codes


def _numpy_r2(models, batch, codes):
    """Scalar-centred R² ``[M, M]`` (row: encoded stream, column: decoded stream)."""
    names = list(batch)
    r2 = np.zeros((len(names), len(names)))
    for i, s in enumerate(names):
        for j, t in enumerate(names):
            d = models[t]["dictionary"]
            unit = d / (np.linalg.norm(d, axis=1, keepdims=True) + 1e-8)
            x, x_hat = batch[t], codes[s] @ unit
            r2[i, j] = 1 - np.mean((x - x_hat) ** 2) / (np.mean((x - x.mean()) ** 2) + 1e-6)
    return r2


@pytest.fixture(scope="module")
def global_model():
    usae = _sparc("global_topk")
    params, stats = init_params(jax.random.key(3), usae)
    rng = np.random.default_rng(1)
    batch = {s: rng.standard_normal((32, w)).astype(np.float32) for s, w in (("a", 3), ("b", 5))}
    return usae, params, stats, batch


def test_global_topk_model_is_evaluated_with_global_topk(global_model):
    usae, params, stats, batch = global_model
    models = jax.tree.map(lambda a: np.asarray(a, np.float64), params["models"])
    scores = evaluate(usae, params, stats, batch)
    want = _numpy_r2(models, batch, _numpy_codes(models, batch, 2, "global_topk"))
    per_stream = _numpy_r2(models, batch, _numpy_codes(models, batch, 2, "local_topk"))
    # The two encodings really differ on this model, so the check below can tell them apart.
    assert np.max(np.abs(want - per_stream)) > 0.05, (want, per_stream)
    np.testing.assert_allclose(scores["r2"], want, atol=1e-4)
    assert scores["encoding"] == "global TopK"
    assert r2_label(usae) == "R² (global TopK encoding, scalar centring)"
    local = _sparc("local_topk")
    np.testing.assert_allclose(evaluate(local, params, stats, batch)["r2"], per_stream, atol=1e-4)
    assert evaluate(local, params, stats, batch)["encoding"] == "local TopK"


def test_analysis_statistics_use_the_models_rule(global_model):
    usae, params, stats, batch = global_model
    models = jax.tree.map(lambda a: np.asarray(a, np.float64), params["models"])
    codes = _numpy_codes(models, batch, 2, "global_topk")
    source = ArraySource(batch, standardise=False)
    result = compute_statistics(
        usae, params, stats, source, StatisticsConfig(tau=0.0, batch_rows=32)
    )
    for m, name in enumerate(usae.model_names):
        np.testing.assert_array_equal(result.nonzero_counts[m], np.sum(codes[name] > 0, axis=0))
        np.testing.assert_allclose(result.activation_sum[m], codes[name].sum(0), rtol=1e-4)
    summary = statistics_summary(result)
    assert summary["r2_encoding"] == "global TopK"
    np.testing.assert_allclose(
        summary["r2_scalar_centring"], _numpy_r2(models, batch, codes), atol=1e-4
    )


def test_one_stream_of_a_global_topk_model_cannot_be_encoded_alone(global_model):
    usae, params, stats, batch = global_model
    with pytest.raises(ValueError, match="encode_models_eval"):
        encode_eval(usae, params["models"]["a"], stats["a"], batch["a"])


def test_summary_names_the_encoding_and_the_dead_window():
    names = ("a", "b")
    summary = {
        "r2": [[0.9, 0.5], [0.4, 0.8]],
        "r2_encoding": "global TopK",
        "eval_rows": 64,
        "l0": {"a": 2.0, "b": 2.0},
        "dead_recent": {"a": 0.25, "b": 0.5},
        "dead_recent_rows": 512,
        "steps": 10,
        "seconds": 1.0,
    }
    text = format_summary(names, summary)
    assert "global TopK encoding, scalar centring, 64 rows" in text
    assert "dead concepts (not fired in the last 512 training rows): a 25.0%, b 50.0%" in text
    # A summary.json written before the names existed (always local TopK, "dead_fraction").
    old = {k: v for k, v in summary.items() if k not in ("r2_encoding", "dead_recent_rows")}
    old["dead_fraction"] = old.pop("dead_recent")
    text = format_summary(names, old)
    assert "local TopK encoding" in text
    assert "not fired in the last epoch's training rows): a 25.0%, b 50.0%" in text


def test_summary_matrix_keeps_negative_entries_apart():
    """Short model names made the columns narrower than a negative R² ("b  -0.495-0.466")."""
    summary = {
        "r2": [[-0.495, -12.25], [0.9, -150.0]],
        "eval_rows": 8,
        "l0": {"a": 2.0, "b": 2.0},
        "dead_recent": {"a": 0.0, "b": 0.0},
        "steps": 1,
        "seconds": 1.0,
    }
    lines = format_summary(("a", "b"), summary).splitlines()
    assert lines[1].split() == ["a", "b"]
    assert [line.split() for line in lines[2:4]] == [
        ["a", "-0.495", "-12.250"],
        ["b", "0.900", "-150.000"],
    ]
    # names as long as the entries keep the columns as they were: the names' width
    long_names = {**summary, "l0": {"alpha": 2.0, "gamma": 2.0}}
    long_names["dead_recent"] = {"alpha": 0.0, "gamma": 0.0}
    long_names["r2"] = [[0.925, 0.695], [0.713, 0.887]]
    lines = format_summary(("alpha", "gamma"), long_names).splitlines()
    assert lines[1] == "         alpha  gamma" and lines[2] == "alpha    0.925  0.695"
