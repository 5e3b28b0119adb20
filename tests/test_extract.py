"""Extraction end to end with tiny random backbones; interrupted + resumed == uninterrupted."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
PIL = pytest.importorskip("PIL.Image")
import transformers as tf  # noqa: E402

from usae_jax.backbones.registry import load_backbone  # noqa: E402
from usae_jax.backbones.tokens import resample_grid  # noqa: E402
from usae_jax.data import extract as ex  # noqa: E402
from usae_jax.data import images  # noqa: E402
from usae_jax.data.loader import StoreSource  # noqa: E402

TINY = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("extract")
    torch.manual_seed(0)
    tf.ViTModel(tf.ViTConfig(**TINY, image_size=32, patch_size=8)).save_pretrained(base / "vit")
    tf.Dinov2Model(tf.Dinov2Config(**TINY, image_size=28, patch_size=7)).save_pretrained(
        base / "dino"
    )
    rng = np.random.default_rng(0)
    for i in range(11):
        folder = base / "imgs" / f"class{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        shape = (int(rng.integers(20, 60)), int(rng.integers(20, 60)), 3)
        PIL.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(folder / f"{i}.png")
    backbones = {
        "vit": load_backbone(f"hf:{base / 'vit'}"),
        "dino": load_backbone(f"hf:{base / 'dino'}"),
    }
    models = (
        ex.ModelChoice(name="vit", backbone="vit", layer="final"),
        ex.ModelChoice(name="dino_l1", backbone="dino", layer="1"),
        ex.ModelChoice(name="dino_l2", backbone="dino", layer="2"),
    )
    config = ex.ExtractConfig(models=models, grid=(3, 3), batch_images=2, chunk_images=3)
    return base, backbones, config, images.from_folder(base / "imgs", 32)


def test_resample_grid_matches_torch_bilinear():
    x = np.random.default_rng(0).normal(size=(2, 16, 16, 5)).astype(np.float32)
    ours = resample_grid(jax.numpy.asarray(x), (14, 14))
    ref = torch.nn.functional.interpolate(
        torch.tensor(x).permute(0, 3, 1, 2), size=(14, 14), mode="bilinear", align_corners=False
    ).permute(0, 2, 3, 1)
    np.testing.assert_allclose(np.asarray(ours), ref.numpy(), atol=1e-5)


def test_end_to_end(setup, tmp_path):
    base, backbones, config, source = setup
    store = ex.extract(config, backbones, source, str(tmp_path), progress=False)
    assert store.names == ("vit", "dino_l1", "dino_l2") and store.widths == (16, 16, 16)
    assert store.num_rows == 11 * 9 and len(store.manifest["shards"]) == 4
    assert store.manifest["image_ids"] == source.ids
    assert store.manifest["meta"]["backbones"]["dino"]["native_grid"] == [4, 4]
    # Row 9 * i + t of every model is token t of image i: recompute image 4 directly.
    img = source.load_many([4])
    dino = backbones["dino"]
    grids = dino.patch_tokens(dino.params, dino.preprocess(img), ("2",))["2"]
    ref = torch.nn.functional.interpolate(
        torch.tensor(np.asarray(grids)).permute(0, 3, 1, 2), size=(3, 3), mode="bilinear"
    ).permute(0, 2, 3, 1)
    np.testing.assert_allclose(
        store.array("dino_l2")[36:45], ref.numpy().reshape(9, 16), rtol=1e-4, atol=1e-4
    )
    batch = StoreSource(store).batch(0, 32, seed=0)
    assert all(abs(float(v.mean())) < 1.0 for v in batch.values())


class CrashError(RuntimeError):
    pass


def test_interrupted_then_resumed_equals_uninterrupted(setup, tmp_path):
    _, backbones, config, source = setup
    full = ex.extract(config, backbones, source, str(tmp_path / "full"), progress=False)

    def crashing(i):
        if i == 7:
            raise CrashError("simulated crash while loading image 7")
        return source.load(i)

    flaky = images.ImageSource(
        source.ids,
        crashing,
        source.size,
        **{k: v for k, v in source.description.items() if k not in ("size", "count")},
    )
    with pytest.raises(CrashError):
        ex.extract(config, backbones, flaky, str(tmp_path / "resumed"), progress=False)
    with open(tmp_path / "resumed" / "manifest.json") as f:
        partial = json.load(f)
    assert len(partial["image_ids"]) == 6 and not partial["complete"]
    resumed = ex.extract(config, backbones, source, str(tmp_path / "resumed"), progress=False)
    assert resumed.manifest["image_ids"] == full.manifest["image_ids"]
    assert resumed.manifest["models"] == full.manifest["models"]
    for name in full.names:
        np.testing.assert_array_equal(resumed.array(name), full.array(name))
    again = ex.extract(config, backbones, source, str(tmp_path / "resumed"), progress=False)
    assert again.num_rows == full.num_rows


def test_config_validation():
    with pytest.raises(ValueError, match="at least one"):
        ex.ExtractConfig(models=())
    m = ex.ModelChoice(name="a", backbone="b")
    with pytest.raises(ValueError, match="unique"):
        ex.ExtractConfig(models=(m, m))


def test_cli(setup, tmp_path):
    base, *_ = setup
    env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    script = os.path.join(ROOT, "experiments", "extract.py")
    helptext = subprocess.run(
        [sys.executable, script, "--helpfull"], capture_output=True, text=True, env=env
    ).stdout
    for flag in ("--workdir", "--images", "--backbone", "--model", "--grid", "--chunk_images"):
        assert flag in helptext
    cmd = [sys.executable, script, f"--workdir={tmp_path / 's'}", f"--images={base / 'imgs'}",
           f"--backbone=v=hf:{base / 'vit'}", "--model=vit=v:final", "--grid=4",
           "--image_size=32", "--max_images=4", "--dtype=float16"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "64 rows" in done.stdout


def test_extract_store_train_r2_end_to_end(setup, tmp_path):
    """Generated images -> tiny random backbones -> store -> USAE training -> R² matrix."""
    from usae_jax.config import OptimConfig, TrainConfig, USAEConfig
    from usae_jax.train.loop import train

    _, backbones, config, source = setup
    store = ex.extract(config, backbones, source, str(tmp_path / "store"), progress=False)
    data = StoreSource(str(tmp_path / "store"))
    train_config = TrainConfig(
        usae=USAEConfig(model_names=data.names, widths=data.widths, num_concepts=24, top_k=3),
        optim=OptimConfig(learning_rate=3e-3),
        batch_rows=32,
        num_steps=6,
        log_every=3,
        checkpoint_every=6,
        eval_rows=store.num_rows,
        data_parallel=2,
        progress_bar=False,
    )
    result = train(train_config, tmp_path / "run", data)
    r2 = np.asarray(result.final_metrics["r2"])
    assert r2.shape == (3, 3) and np.isfinite(r2).all()
    assert (tmp_path / "run" / "r2_matrix.png").stat().st_size > 1000


def test_killed_extraction_resumes_to_the_same_store(tmp_path):
    """SIGKILL the extraction process half way (no cleanup runs), resume, compare bitwise."""
    import signal
    import time

    torch.manual_seed(1)
    tf.ViTModel(tf.ViTConfig(**TINY, image_size=32, patch_size=8)).save_pretrained(tmp_path / "v")
    rng = np.random.default_rng(1)
    for i in range(240):
        folder = tmp_path / "imgs" / f"c{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        PIL.fromarray(rng.integers(0, 256, (36, 36, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    env = dict(os.environ, PYTHONPATH=ROOT, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    script = os.path.join(ROOT, "experiments", "extract.py")

    def command(store):
        return [sys.executable, script, f"--workdir={store}", f"--images={tmp_path / 'imgs'}",
                f"--backbone=v=hf:{tmp_path / 'v'}", "--model=vit=v:final", "--grid=2",
                "--image_size=32", "--batch_images=2", "--chunk_images=2"]  # fmt: skip

    full = subprocess.run(command(tmp_path / "full"), env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert full.returncode == 0, full.stderr[-2000:]

    victim = subprocess.Popen(command(tmp_path / "killed"), env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)  # fmt: skip
    manifest = tmp_path / "killed" / "manifest.json"
    committed = 0
    deadline = time.time() + 300
    while time.time() < deadline and victim.poll() is None:
        try:
            committed = len(json.loads(manifest.read_text())["image_ids"])
        except (OSError, ValueError, KeyError):
            committed = 0
        if committed >= 20:
            victim.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    victim.wait(timeout=60)
    assert victim.returncode == -signal.SIGKILL, "the extraction finished before it was killed"
    assert 20 <= committed < 240

    resumed = subprocess.run(command(tmp_path / "killed"), env=env, capture_output=True,
                             text=True, timeout=600)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    from usae_jax.data.store import Store

    a, b = Store(tmp_path / "full"), Store(tmp_path / "killed")
    assert a.manifest["image_ids"] == b.manifest["image_ids"]
    np.testing.assert_array_equal(a.array("vit"), b.array("vit"))


def test_extraction_progress_is_plain_lines_in_a_log(setup, tmp_path, capsys):
    base, backbones, config, source = setup
    ex.extract(config, backbones, source, str(tmp_path), progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err  # stderr is captured here, not a terminal: no bar redraws
    lines = [line.split(",")[0] for line in err.splitlines() if line.startswith("extract: ")]
    assert lines[-1] == "extract: 11/11 img (100%)" and len(lines) <= 11, lines
