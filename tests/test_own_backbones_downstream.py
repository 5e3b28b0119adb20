"""Our own NNX backbones drop into extraction, CAM and layer continuation unchanged.

Tiny random torch models (the reference) are saved with ``save_pretrained`` and loaded with
:mod:`usae_jax.backbones.convert`; nothing here touches transformers' Flax classes."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
PIL = pytest.importorskip("PIL.Image")
import transformers as tf  # noqa: E402

from usae_jax.analysis import steering as transfer  # noqa: E402
from usae_jax.analysis.cam import optimize as cam  # noqa: E402
from usae_jax.backbones import convert  # noqa: E402
from usae_jax.config import USAEConfig  # noqa: E402
from usae_jax.data import extract as ex  # noqa: E402
from usae_jax.data import images  # noqa: E402
from usae_jax.model.params import init_params  # noqa: E402

TINY = dict(hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    base = tmp_path_factory.mktemp("own")
    torch.manual_seed(0)
    vit = tf.ViTModel(tf.ViTConfig(**TINY, image_size=32, patch_size=8)).eval()
    dino = tf.Dinov2Model(tf.Dinov2Config(**TINY, image_size=28, patch_size=7)).eval()
    vit.save_pretrained(base / "vit")
    dino.save_pretrained(base / "dino")
    backbones = {
        "vit": convert.load_hf_vision(base / "vit"),
        "dino": convert.load_hf_vision(base / "dino"),
    }
    return base, backbones, {"vit": vit, "dino": dino}


def test_extraction_writes_the_torch_models_tokens(tiny, tmp_path):
    base, backbones, torch_models = tiny
    rng = np.random.default_rng(0)
    for i in range(5):
        shape = (int(rng.integers(20, 60)), int(rng.integers(20, 60)), 3)
        (tmp_path / "imgs").mkdir(exist_ok=True)
        PIL.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(tmp_path / f"imgs/{i}.png")
    source = images.from_folder(tmp_path / "imgs", 32)
    models = (
        ex.ModelChoice(name="vit", backbone="vit", layer="final"),
        ex.ModelChoice(name="dino_l2", backbone="dino", layer="2"),
    )
    config = ex.ExtractConfig(models=models, grid=(3, 3), batch_images=2, chunk_images=3)
    store = ex.extract(config, backbones, source, str(tmp_path / "store"), progress=False)
    assert store.num_rows == 5 * 9 and store.widths == (16, 16)
    dino = backbones["dino"]
    pixels = np.asarray(dino.preprocess(source.load_many([3])))
    with torch.no_grad():
        out = torch_models["dino"](
            torch.tensor(pixels).permute(0, 3, 1, 2), output_hidden_states=True
        )
    grid = out.hidden_states[2][:, 1:].reshape(1, 4, 4, 16).permute(0, 3, 1, 2)
    ref = torch.nn.functional.interpolate(grid, size=(3, 3), mode="bilinear")
    np.testing.assert_allclose(
        store.array("dino_l2")[27:36], ref.permute(0, 2, 3, 1).numpy().reshape(9, 16), atol=1e-4
    )


def test_cam_raises_planted_concepts(tiny):
    """CAM (gradients through our modules) raises a planted concept in each model."""
    _, backbones, _ = tiny
    models = (
        cam.CAMModel("vit", backbones["vit"], "final", mean=0.1, std=2.0),
        cam.CAMModel("dino_l2", backbones["dino"], "2", mean=-0.2, std=0.5),
    )
    usae = USAEConfig(model_names=("vit", "dino_l2"), widths=(16, 16), num_concepts=12, top_k=3)
    params, stats = init_params(jax.random.key(0), usae)
    rng = np.random.default_rng(0)
    for name in usae.model_names:
        kernel = np.array(params["models"][name]["encoder"]["kernel"])
        for c in (3, 7):
            direction = rng.standard_normal(16)
            kernel[:, c] = direction / np.linalg.norm(direction)
        params["models"][name]["encoder"]["kernel"] = jnp.asarray(kernel)
    config = cam.CAMConfig(image_size=32, steps=12, learning_rate=0.1, jitter=2.0, seed=0)
    result = cam.run_cam(config, models, usae, params, stats, (3, 3), (3, 7))
    gain = result.final - result.start
    print(f"CAM gains on our modules: {np.round(gain, 3).tolist()}")
    # Measured at seed 0: gains 0.019 .. 0.163, the same to 4 decimals as with transformers'
    # Flax wrappers on the same weights; every one must be clearly positive.
    assert np.all(gain > 0.01), gain


def test_layer_continuation_through_transfer(tiny):
    """``Apply.run_blocks`` is the block runner transfer.py's steering takes."""
    _, backbones, _ = tiny
    dino = backbones["dino"]
    run = jax.jit(functools.partial(dino.forward.run_blocks, dino.params), static_argnums=(1, 2))
    pixels = jax.random.normal(jax.random.key(1), (2, 28, 28, 3))
    hidden = dino.apply(dino.params, pixels, ("1", "3"))
    np.testing.assert_allclose(run(hidden["1"], 1, 3), hidden["3"], atol=1e-5)
    carried = transfer.carry_edit(dino, run, hidden["1"], 1, (1, 3), np.ones(16))
    np.testing.assert_allclose(carried[3][0], hidden["3"], atol=1e-5)
    assert float(jnp.abs(carried[3][1] - carried[3][0]).max()) > 1e-2  # the edit propagates
    names = ("l1", "l3")
    usae = USAEConfig(model_names=names, widths=(16, 16), num_concepts=8, top_k=8)
    params, stats = init_params(jax.random.key(0), usae)
    unit = transfer.unit_dictionaries(params)["l1"][2]
    kernel = params["models"]["l1"]["encoder"]["kernel"]
    params["models"]["l1"]["encoder"]["kernel"] = kernel.at[:, 2].set(unit)
    context = {"grid": (3, 3), "models": {n: {"mean": 0.0, "std": 1.0} for n in names}}
    rows = transfer.layer_edit_effects(
        usae, params, stats, dino, run, hidden["1"], {"l1": 1, "l3": 3}, context, 2, 5.0
    )
    assert [(r["edit"], r["read"]) for r in rows][:2] == [("steer", "l1"), ("steer", "l3")]
    rise = rows[0]["code_after"] - rows[0]["code_before"]
    assert 4.0 < rise <= 5.0 + 1e-4
