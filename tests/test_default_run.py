"""The README's default run: planted concepts must be recovered (mean max cosine >= 0.9)."""

import dataclasses

import pytest

from experiments.configs import default
from usae_jax.data.synthetic.planted import generate_planted
from usae_jax.pipelines.train_and_report import train_and_report


@pytest.mark.slow
def test_default_run_recovers_planted_shared_concepts(tmp_path):
    planted = generate_planted(default.get_planted())
    config = dataclasses.replace(default.get_config(), data_parallel=1, progress_bar=False)
    _, summary = train_and_report(config, tmp_path, planted.source(), planted)
    assert summary["steps"] == 8000
    for name, value in summary["recovery"].items():
        assert value >= 0.9, f"{name}: shared-concept recovery {value:.3f} < 0.9"
    r2 = summary["r2"]
    for i in range(3):
        assert r2[i][i] > 0.8, f"self-R² of model {i} is {r2[i][i]:.3f}"
        for j in range(3):
            if i != j:
                assert r2[i][j] > 0.5, f"cross-R² {i}->{j} is {r2[i][j]:.3f}"
