"""Official checkpoint import (.pth and plain arrays) and safetensors export."""

import json

import jax
import numpy as np
import pytest

from usae_jax.config import USAEConfig
from usae_jax.model.interop import (
    export_official_model,
    export_safetensors,
    import_official,
    import_official_model,
    import_safetensors,
    load_official_checkpoint,
)
from usae_jax.model.params import init_batch_stats, init_params


def _params():
    config = USAEConfig(model_names=("a", "b"), widths=(6, 4), num_concepts=16, top_k=2)
    params, stats = init_params(jax.random.key(3), config)
    return jax.device_get(params), jax.device_get(stats)


def test_safetensors_round_trip_is_exact(tmp_path):
    params, stats = _params()
    paths = export_safetensors(params, stats, tmp_path)
    assert len(paths) == 2 and json.loads((tmp_path / "usae.json").read_text())["b"]["width"] == 4
    back_params, back_stats = import_safetensors(tmp_path, ["a", "b"])
    for a, b in zip(
        jax.tree.leaves((params, stats)), jax.tree.leaves((back_params, back_stats)), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(FileNotFoundError, match="c.safetensors"):
        import_safetensors(tmp_path, ["c"])


def test_missing_official_key_is_named():
    params, stats = _params()
    state = export_official_model(params["models"]["a"], stats["a"])
    del state["dictionary._weights"]
    with pytest.raises(KeyError, match="dictionary._weights"):
        import_official_model(state)


def test_official_pth_checkpoint_loads_with_weights_only(tmp_path):
    torch = pytest.importorskip("torch")
    params, stats = _params()
    state = {
        k: torch.from_numpy(np.array(v))
        for k, v in export_official_model(params["models"]["b"], stats["b"]).items()
    }
    path = tmp_path / "uni_b_checkpoint_29.pth"
    torch.save({"model_state_dict": state, "epoch": 29}, path)
    loaded, loaded_stats = load_official_checkpoint(path)
    np.testing.assert_array_equal(
        loaded["encoder"]["kernel"], params["models"]["b"]["encoder"]["kernel"]
    )
    np.testing.assert_array_equal(loaded["dictionary"], params["models"]["b"]["dictionary"])
    assert int(loaded_stats["count"]) == 0
    (tmp_path / "broken.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read official checkpoint"):
        load_official_checkpoint(tmp_path / "broken.pth")
    with pytest.raises(FileNotFoundError):
        load_official_checkpoint(tmp_path / "absent.pth")


def test_import_official_builds_the_pytree(parity):
    states = {
        name: {k.split("/", 2)[2]: v for k, v in parity.items() if k.startswith(f"init/{name}/")}
        for name in ("alpha", "beta")
    }
    params, stats = import_official(states)
    assert params["models"]["beta"]["encoder"]["kernel"].shape == (32, 256)
    assert stats["alpha"]["var"].shape == (256,)
    assert init_batch_stats(256)["count"].shape == stats["alpha"]["count"].shape
