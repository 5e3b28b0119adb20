"""The planted generator's presets, per-concept recovery and the shared variance share."""

import json

import numpy as np
import pytest

from experiments.configs import default, planted_hard
from usae_jax.config_io import bind_models
from usae_jax.data.synthetic import planted as pl
from usae_jax.pipelines.train_and_report import format_recovery, format_summary, written_outputs
from usae_jax.train import recovery as rec


def test_classic_preset_is_todays_data():
    assert pl.PRESETS["classic"] == pl.PlantedConfig()
    assert default.get_planted() == pl.planted_preset("classic", rows=32768, seed=0)
    # Checksums of the generator before presets existed (same seed, same draws).
    data = pl.generate_planted(pl.planted_preset("classic", rows=512, seed=3))
    sums = {n: float(np.abs(x.astype(np.float64)).sum()) for n, x in data.activations.items()}
    assert sums == pytest.approx({"alpha": 7686.061, "beta": 6496.098, "gamma": 9262.36}, abs=2e-3)
    assert float(data.shared_codes.astype(np.float64).sum()) == pytest.approx(1606.334013, abs=1e-4)


def test_concept_rates_closed_form():
    # weights 1, 1/2, 1/3 (sum 11/6), mean rate 0.1 -> 0.3 * w / (11/6)
    np.testing.assert_allclose(
        pl.concept_rates(3, 0.1, 1.0), [0.3 * 6 / 11, 0.15 * 6 / 11, 0.1 * 6 / 11]
    )
    np.testing.assert_allclose(pl.concept_rates(4, 0.05, 0.0), [0.05] * 4)
    assert pl.concept_rates(2, 0.9, 3.0)[0] == 1.0  # capped


def test_hard_preset_is_heavy_tailed_and_correlated():
    config = pl.planted_preset("hard", rows=40_000)
    assert config.widths == (64, 96, 128) and (config.num_shared, config.num_specific) == (48, 16)
    data = pl.generate_planted(config)
    present = data.shared_codes > 0
    frequency = present.mean(axis=0)
    rates = pl.concept_rates(48, 0.05, 1.0)
    # Unpaired concepts follow the power law: the most frequent unpaired one (concept 8) is
    # 5.6x as frequent as the rarest (concept 47).
    np.testing.assert_allclose(frequency[8:], rates[8:], rtol=0.15)
    assert frequency[8] > 5 * frequency[47]
    # Pairs: concept 2j + 1 joins concept 2j 80% of the time (plus its own events).
    for j in range(4):
        joined = present[present[:, 2 * j], 2 * j + 1].mean()
        assert joined == pytest.approx(0.8 + 0.2 * rates[2 * j + 1], abs=0.03)
    assert present[present[:, 8], 9].mean() == pytest.approx(rates[9], abs=0.03)  # unpaired
    # Exponential magnitudes, mean 1.25: a third of the events are weaker than 0.5, which the
    # classic uniform [0.5, 2] never makes.
    values = data.shared_codes[present]
    assert values.mean() == pytest.approx(1.25, rel=0.03)
    assert np.mean(values < 0.5) == pytest.approx(1 - np.exp(-0.4), abs=0.02)
    classic = pl.generate_planted(pl.planted_preset("classic", rows=2000)).shared_codes
    assert classic[classic > 0].min() >= 0.5
    for name, codes in data.specific_codes.items():
        assert codes.shape == (40_000, 16), name
        np.testing.assert_allclose(
            (codes > 0).mean(axis=0)[0], pl.concept_rates(16, 0.05, 1)[0], rtol=0.05
        )


def test_lognormal_magnitudes_have_the_documented_mean():
    config = pl.PlantedConfig(rows=20_000, magnitude="lognormal", magnitude_sigma=0.5)
    codes = pl.generate_planted(config).shared_codes
    assert codes[codes > 0].mean() == pytest.approx(1.25, rel=0.03)
    assert np.median(codes[codes > 0]) == pytest.approx(1.25 * np.exp(-0.125), rel=0.03)


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("magnitude", "gamma", "magnitude"),
        ("frequency_exponent", -1.0, "frequency_exponent"),
        ("correlated_pairs", 25, "correlated_pairs"),
        ("pair_correlation", 1.5, "pair_correlation"),
        ("magnitude_sigma", 0.0, "magnitude_sigma"),
    ],
)
def test_config_validation(field, value, match):
    with pytest.raises(ValueError, match=match):
        pl.PlantedConfig(**{field: value})
    with pytest.raises(ValueError, match="unknown planted preset"):
        pl.planted_preset("easyish")


def test_shared_variance_share_closed_form():
    only_shared = pl.PlantedConfig(num_specific=0, noise=0.0, rows=500)
    assert all(
        v == pytest.approx(1.0)
        for v in pl.shared_variance_share(pl.generate_planted(only_shared)).values()
    )
    only_private = pl.PlantedConfig(num_shared=0, rows=500)
    assert all(
        v == pytest.approx(0.0, abs=1e-12)
        for v in pl.shared_variance_share(pl.generate_planted(only_private)).values()
    )
    # Equal numbers and rates of shared and private concepts, little noise: about one half.
    half = pl.PlantedConfig(num_shared=16, num_specific=16, rows=8000, noise=0.01)
    for value in pl.shared_variance_share(pl.generate_planted(half)).values():
        assert value == pytest.approx(0.5, abs=0.06)


def test_recovery_report_per_concept():
    config = pl.PlantedConfig(widths=(24, 16, 32), num_shared=6, num_specific=3, rows=400)
    data = pl.generate_planted(config)
    rng = np.random.default_rng(0)
    params = {"models": {}}
    for name in config.model_names:
        shared, specific = data.shared_directions[name], data.specific_directions[name]
        merged = shared[0] + shared[1]  # concepts 0 and 1 found only as their sum: cosine ~0.71
        rows = [merged, shared[2], 2.0 * shared[3], shared[4], shared[5], *specific]
        rows.append(rng.standard_normal(shared.shape[1]))
        params["models"][name] = {"dictionary": np.stack(rows)}
    report = rec.recovery_report(params, data, worst=2)
    json.dumps(report)
    for name in config.model_names:
        shared, specific = data.shared_directions[name], data.specific_directions[name]
        want = np.ones(6)
        want[:2] = (shared[:2] @ (shared[0] + shared[1])) / np.linalg.norm(shared[0] + shared[1])
        group = report[name]["shared"]
        np.testing.assert_allclose(group["cosines"], want, atol=2e-4)
        assert group["count"] == 6 and group["min"] == pytest.approx(want.min(), abs=1e-6)
        assert sum(group["bands"].values()) == 6 and group["bands"][">=0.9"] == 4
        assert {w["concept"] for w in group["worst"]} == {0, 1}
        assert group["worst"][0]["cosine"] <= group["worst"][1]["cosine"]
        assert all(w["row"] == 0 for w in group["worst"])
        frequency = (data.shared_codes[:, 0] > 0).mean()
        assert group["worst"][0]["frequency"] == pytest.approx(
            (data.shared_codes[:, group["worst"][0]["concept"]] > 0).mean(), abs=1e-4
        )
        assert 0 < frequency < 1
        assert report[name]["shared_rows_reused"] == 2  # 0 and 1 share row 0
        assert report[name]["specific"]["bands"][">=0.9"] == 3
        assert report[name]["specific"]["mean"] == pytest.approx(1.0, abs=1e-6)


def test_summary_prints_per_concept_recovery_and_variance_share():
    config = pl.PlantedConfig(widths=(8, 6, 10), num_shared=4, num_specific=2, rows=300)
    data = pl.generate_planted(config)
    params = {
        "models": {
            n: {
                "dictionary": np.concatenate(
                    [data.shared_directions[n], data.specific_directions[n]]
                )
            }
            for n in config.model_names
        }
    }
    summary = {
        "r2": np.eye(3).tolist(),
        "eval_rows": 300,
        "l0": dict.fromkeys(config.model_names, 8.0),
        "dead_fraction": dict.fromkeys(config.model_names, 0.0),
        "steps": 10,
        "seconds": 1.0,
        "recovery": rec.recovery(params, data),
        "recovery_per_concept": rec.recovery_report(params, data),
        "shared_variance_share": pl.shared_variance_share(data),
    }
    text = format_summary(config.model_names, summary)
    assert "per-concept max cosine, concepts per band <0.6 / 0.6-0.75 / 0.75-0.9 / >=0.9" in text
    assert "alpha shared     4: 0 / 0 / 0 / 4; min 1.000" in text
    assert "gamma specific   2: 0 / 0 / 0 / 2" in text
    share = summary["shared_variance_share"]["beta"]
    assert f"beta {share:.1%}" in text.splitlines()[-2]


def test_written_outputs_lists_only_existing_files(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("")
    (tmp_path / "export").mkdir()
    assert written_outputs(tmp_path) == ["metrics.jsonl", "export/"]
    assert written_outputs(tmp_path / "missing") == []


def test_hard_config_trains_on_the_hard_preset():
    assert planted_hard.get_planted() == pl.planted_preset("hard", rows=32768, seed=0)
    planted = planted_hard.get_planted()
    config = bind_models(planted_hard.get_config(), planted.model_names, planted.widths)
    assert config.usae.widths == (64, 96, 128)


def test_recovery_report_without_private_concepts():
    config = pl.PlantedConfig(widths=(8, 6, 10), num_shared=4, num_specific=0, rows=200)
    data = pl.generate_planted(config)
    params = {"models": {n: {"dictionary": d} for n, d in data.shared_directions.items()}}
    report = rec.recovery_report(params, data)
    assert report["beta"]["specific"]["count"] == 0 and report["beta"]["specific"]["min"] is None
    assert report["beta"]["shared"]["bands"][">=0.9"] == 4
    text = "\n".join(format_recovery(config.model_names, report))
    assert "beta  specific   0: 0 / 0 / 0 / 0" in text
