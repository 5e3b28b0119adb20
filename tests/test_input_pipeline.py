"""The Grain source (chunked order, resume, workers) and the zarr store (tensorstore)."""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorstore as ts

from usae_jax.config import OptimConfig, TrainConfig, USAEConfig
from usae_jax.data import store as st
from usae_jax.data import zarr_store as zs
from usae_jax.data.grain_source import (
    GrainSource,
    PipelineConfig,
    StoreRows,
    batch_spans,
    open_store,
    spans_of,
)
from usae_jax.data.loader import StoreModels, StoreSource
from usae_jax.data.source import PairedSource
from usae_jax.parallel import hosts as distributed
from usae_jax.train.loop import train

GRID = (2, 3)  # 6 rows per image
IMAGES = 20
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_arrays(seed=0):
    rng = np.random.default_rng(seed)
    rows = IMAGES * 6
    return {
        "a": rng.normal(2.0, 3.0, (rows, 4)).astype(np.float32),
        "b": rng.normal(-1.0, 0.5, (rows, 5)).astype(np.float32),
    }


def write_memmap(path, dtype="float32"):
    ids = [f"img{i}" for i in range(IMAGES)]
    return st.write_store(path, make_arrays(), GRID, ids, chunk_images=7, dtype=dtype)


@pytest.fixture
def memmap(tmp_path):
    return write_memmap(tmp_path / "m")


def assert_batches_equal(got, want):
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])


def test_both_store_sources_select_their_models_alike(memmap):
    for cls in (StoreSource, GrainSource):
        source = cls(memmap, names=("b", "a"))
        assert isinstance(source, StoreModels)
        assert source.names == ("b", "a") and source.widths == (5, 4)
        assert source.num_rows == memmap.num_rows == IMAGES * 6
        assert set(source.standardisation.mean) == {"a", "b"}
        assert cls(memmap, standardise=False).standardisation is None
        with pytest.raises(st.StoreError, match=r"models \['c'\] are not in the store"):
            cls(memmap, names=("a", "c"))


# ----- the chunked order ------------------------------------------------------------------------


def test_batch_spans_visit_each_row_once_per_epoch_in_few_runs():
    num_rows, batch, chunk = 103, 10, 7  # a short last chunk, batches crossing chunk bounds
    for seed in (0, 1):
        seen = []
        for step in range(num_rows // batch):
            spans = batch_spans(num_rows, step, batch, seed, chunk)
            assert (spans[:, 1] - spans[:, 0]).sum() == batch
            assert np.all(spans[1:, 0] > spans[:-1, 1])  # sorted, disjoint, merged
            assert len(spans) <= batch // chunk + 2  # contiguous runs, not scattered rows
            seen.append(np.concatenate([np.arange(a, b) for a, b in spans]))
        seen = np.concatenate(seen)
        assert len(np.unique(seen)) == len(seen) == (num_rows // batch) * batch
    # Deterministic in (seed, step); another epoch or seed gives another order.
    np.testing.assert_array_equal(batch_spans(103, 4, 10, 0, 7), batch_spans(103, 4, 10, 0, 7))
    assert not np.array_equal(batch_spans(103, 0, 10, 0, 7), batch_spans(103, 10, 10, 0, 7))
    assert not np.array_equal(batch_spans(103, 0, 10, 0, 7), batch_spans(103, 0, 10, 1, 7))
    with pytest.raises(ValueError, match="larger than"):
        batch_spans(10, 0, 11, 0, 2)


def test_spans_of_and_config_validation():
    runs = spans_of(np.array([1, 2, 3, 7, 9, 10]))
    np.testing.assert_array_equal(runs, [[1, 4], [7, 8], [9, 11]])
    with pytest.raises(ValueError, match="sorted"):
        spans_of(np.array([3, 1]))
    with pytest.raises(ValueError, match="chunk_rows"):
        PipelineConfig(chunk_rows=0)
    with pytest.raises(ValueError, match="workers"):
        PipelineConfig(workers=-1)


# ----- the Grain source over today's memmap store -----------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_grain_batches_are_paired_standardised_and_upcast(tmp_path, dtype):
    store = write_memmap(tmp_path / "m", dtype)
    source = GrainSource(store, PipelineConfig(chunk_rows=6))
    reference = StoreSource(store)  # today's reader: float32, (x - mean) / std per model
    assert isinstance(source, PairedSource) and source.widths == (4, 5)
    assert isinstance(source.data[3]["a"], np.ndarray) and len(source.data) == 120
    for step in (0, 5, 9):  # 120 rows / 24 = 5 steps per epoch: crosses epochs
        batch = source.batch(step, 24, seed=3)
        indices = source.batch_indices(step, 24, seed=3)
        want = reference.rows(indices)  # row r of every model is the same token
        for name in want:
            assert batch[name].dtype == np.float32 and batch[name].shape == want[name].shape
            np.testing.assert_allclose(batch[name], want[name], rtol=1e-6, atol=1e-6)
    source.close()


def test_grain_resume_mid_epoch_equals_uninterrupted(memmap):
    source = GrainSource(memmap, PipelineConfig(chunk_rows=6, threads=2))
    whole = [b for _, b in source.dataset(16, seed=2, stop_step=17)]  # 7 steps/epoch, 2+ epochs
    # The Grain iterator's own state: stop mid-epoch (step 10 is step 3 of epoch 1), restore.
    first = source.iterator(16, seed=2, stop_step=17)
    for step in range(10):
        assert next(first)[0] == step
    state = first.get_state()
    first.close()
    resumed = source.iterator(16, seed=2, stop_step=17)
    resumed.set_state(state)
    rest = list(resumed)
    assert [s for s, _ in rest] == list(range(10, 17))
    for (_, got), want in zip(rest, whole[10:], strict=True):
        assert_batches_equal(got, want)
    # What train() does: the checkpoint's step is the state; a new pipeline starts there.
    for (_, got), want in zip(source.dataset(16, 2, start_step=10), whole[10:], strict=False):
        assert_batches_equal(got, want)
    # batch(): random access, then sequential access served by the read-ahead iterator.
    fresh = GrainSource(memmap, PipelineConfig(chunk_rows=6))
    for step in (12, 10, 11, 12, 13):
        assert_batches_equal(fresh.batch(step, 16, 2), whole[step])
    assert fresh._stream is not None and fresh._stream[1] == 14
    assert_batches_equal(
        fresh.batch(0, 32, 9), StoreSource(memmap).rows(fresh.batch_indices(0, 32, 9))
    )  # another key: read directly, the stream stays
    assert_batches_equal(fresh.batch(14, 16, 2), whole[14])
    fresh.close()
    source.close()


def _tiny_config(**overrides):
    base = TrainConfig(
        usae=USAEConfig(model_names=("a", "b"), widths=(4, 5), num_concepts=16, top_k=3),
        optim=OptimConfig(learning_rate=3e-3),
        batch_rows=24,
        num_steps=7,
        checkpoint_every=3,
        log_every=1,
        eval_rows=48,
        progress_bar=False,
        data_parallel=1,
    )
    return dataclasses.replace(base, **overrides)


@pytest.mark.slow
def test_train_with_grain_source_resumes_exactly(memmap, tmp_path):
    config = _tiny_config()
    pipeline = PipelineConfig(chunk_rows=6)
    whole = train(config, tmp_path / "whole", GrainSource(memmap, pipeline))
    train(config, tmp_path / "split", GrainSource(memmap, pipeline), stop_after=4)  # mid-epoch
    resumed = train(config, tmp_path / "split", GrainSource(memmap, pipeline))
    for x, y in zip(
        jax.tree.leaves(jax.device_get(whole.state)),
        jax.tree.leaves(jax.device_get(resumed.state)),
        strict=True,
    ):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(ValueError, match="width"):  # a store that does not fit the config
        train(_tiny_config(usae=USAEConfig(model_names=("a", "b"), widths=(4, 6),
                                           num_concepts=16, top_k=3)),  # fmt: skip
              tmp_path / "bad", GrainSource(memmap, pipeline))  # fmt: skip


def test_process_share_reads_its_part_of_the_chunked_batch(memmap, monkeypatch):
    source = GrainSource(memmap, PipelineConfig(chunk_rows=6))
    whole = source.batch(3, 24, 1)
    monkeypatch.setattr(distributed.jax, "process_count", lambda: 2)
    parts = []
    for index in (0, 1):
        monkeypatch.setattr(distributed.jax, "process_index", lambda index=index: index)
        parts.append(distributed.ProcessShare(source).batch(3, 24, 1))
    for name in whole:
        np.testing.assert_array_equal(np.concatenate([p[name] for p in parts]), whole[name])


# ----- the zarr store -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "read_rows"),
    [("float32", None), ("bfloat16", None), ("float32", 1000)],
    ids=["float32-units-of-one-image", "bfloat16-units-of-one-image", "float32-one-unit-per-file"],
)
def test_zarr_store_equals_memmap_store_row_for_row(tmp_path, dtype, read_rows):
    memmap = write_memmap(tmp_path / "m", dtype)
    zarr = zs.convert_store(  # 8: not image-aligned
        tmp_path / "m", tmp_path / "z", chunk_rows=8, read_rows=read_rows
    )
    with open(tmp_path / "z" / "a" / "zarr.json") as f:
        codecs = [c["name"] for c in json.load(f)["codecs"]]
    if read_rows is None:  # files of 12 rows (8 rounded up to whole images), units of 6
        assert codecs == ["sharding_indexed"]
        assert zarr.manifest["arrays"]["a"] | {"sha256": ""} == {
            "path": "a/", "chunk_rows": 12, "read_rows": 6, "sha256": ""
        }  # fmt: skip
    else:  # the layout of stores written before read units: one checked unit per file
        assert codecs == ["bytes", "crc32c"]
        assert zarr.manifest["arrays"]["a"]["chunk_rows"] == 8
    again = zs.ZarrStore(tmp_path / "z", verify=True)
    for key in ("grid", "image_ids", "num_rows", "tokens_per_image", "complete", "models"):
        assert again.manifest[key] == memmap.manifest[key], key
    assert again.names == memmap.names and again.widths == memmap.widths
    for name in memmap.names:
        np.testing.assert_array_equal(again.array(name), memmap.array(name))
        raw = again.read_block(name, 3, 17)
        assert raw.dtype == np.dtype(st.DTYPES[dtype])  # stored as is, upcast on the way out
        idx = np.array([0, 5, 23, 24, 119])
        np.testing.assert_array_equal(again.read(name, idx), memmap.read(name, idx))
    for step in range(7):  # both stores through the Grain source: identical batches
        assert_batches_equal(
            GrainSource(zarr, PipelineConfig(chunk_rows=6)).batch(step, 20, 0),
            GrainSource(memmap, PipelineConfig(chunk_rows=6)).batch(step, 20, 0),
        )
    assert type(open_store(tmp_path / "z")) is zs.ZarrStore
    assert type(open_store(tmp_path / "m")) is st.Store  # today's stores read as before


def test_zarr_memory_driver(tmp_path):
    context = ts.Context()
    where = {"driver": "memory", "path": "stores/x"}
    arrays = make_arrays()
    ids = [str(i) for i in range(IMAGES)]
    zs.write_zarr_store(where, arrays, GRID, ids, dtype="float16", chunk_rows=16, context=context)
    store = zs.ZarrStore(where, context=context, verify=True)
    for name, array in arrays.items():
        np.testing.assert_array_equal(store.array(name), array.astype(np.float16))
    source = GrainSource(where, PipelineConfig(chunk_rows=6), context=context)
    assert source.batch(1, 24, 0)["a"].shape == (24, 4)
    with pytest.raises(st.StoreError, match="memory.*workers=0"):
        GrainSource(store, PipelineConfig(workers=1))
    with pytest.raises(st.StoreError, match="no zarr store"):
        zs.ZarrStore(where)  # another context: another (empty) memory store


def test_zarr_bad_input_is_a_clear_error(memmap, tmp_path):
    zs.convert_store(memmap.directory, tmp_path / "z", chunk_rows=16)
    z = tmp_path / "z"
    with pytest.raises(st.StoreError, match="no zarr store .*does not exist"):
        zs.ZarrStore(tmp_path / "nothing")
    manifest = json.loads((z / st.MANIFEST).read_text())

    (z / st.MANIFEST).write_text(json.dumps(manifest)[:50])
    with pytest.raises(st.StoreError, match="truncated"):
        zs.ZarrStore(z)

    wide = json.loads(json.dumps(manifest))
    wide["models"][1]["width"] = 6  # the manifest and the array disagree on the width
    (z / st.MANIFEST).write_text(json.dumps(wide))
    with pytest.raises(st.StoreError, match=r"model 'b' has shape \(120, 5\).*\(120, 6\)"):
        zs.ZarrStore(z)

    (z / st.MANIFEST).write_text(json.dumps(manifest))
    chunk = z / "a" / "c" / "2" / "0"
    data = bytearray(chunk.read_bytes())
    data[5] ^= 0xFF
    chunk.write_bytes(bytes(data))
    store = zs.ZarrStore(z)  # opening reads metadata only
    with pytest.raises(st.StoreError, match="cannot read model 'a'"):  # the chunk's crc32c
        store.read_block("a", 0, 120)
    with pytest.raises(st.StoreError, match="cannot read model 'a'"):
        zs.ZarrStore(z, verify=True)

    os.remove(z / "b" / "zarr.json")
    with pytest.raises(st.StoreError, match="missing or corrupt zarr array for model 'b'"):
        zs.ZarrStore(z)
    with pytest.raises(st.StoreError, match="no store at"):
        open_store(tmp_path / "nothing")


# ----- workers ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_workers_give_the_same_batches_and_resume(memmap, tmp_path):
    inline = [b for _, b in GrainSource(memmap).dataset(16, 4, stop_step=9)]
    source = GrainSource(memmap, PipelineConfig(workers=2))
    iterator = source.iterator(16, 4, stop_step=9)
    for step in range(5):
        got_step, got = next(iterator)
        assert got_step == step
        assert_batches_equal(got, inline[step])
    state = iterator.get_state()  # a multi-worker iterator's state, mid-epoch
    iterator.close()
    resumed = source.iterator(16, 4, stop_step=9)
    resumed.set_state(state)
    rest = list(resumed)
    assert [s for s, _ in rest] == [5, 6, 7, 8]
    for (_, got), want in zip(rest, inline[5:], strict=True):
        assert_batches_equal(got, want)
    resumed.close()
    # A zarr store in a worker process: reopened there, same batches as in this process.
    zs.convert_store(memmap.directory, tmp_path / "z", chunk_rows=12)
    zarr = GrainSource(tmp_path / "z", PipelineConfig(workers=1))
    with zarr:
        for step in (0, 1, 2, 3):
            assert_batches_equal(zarr.batch(step, 16, 4), inline[step])  # from 1 on: workers
        assert zarr._stream is not None


def test_store_rows_pickle_reopens_memmap(memmap):
    import pickle

    rows = StoreRows(memmap, ("a",), None)
    payload = pickle.dumps(rows)
    assert len(payload) < 2000  # the store is reopened by path, its data not copied
    again = pickle.loads(payload)
    np.testing.assert_array_equal(again[7]["a"], memmap.array("a")[7])


# ----- the command-line tools ------------------------------------------------------------------


def test_convert_command_and_benchmark_run(memmap, tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT)
    dst = tmp_path / "z"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.convert_store",
            f"--src={memmap.directory}",
            f"--dst={dst}",
            "--chunk_rows=32",
        ],  # fmt: skip
        check=True,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,  # fmt: skip
    )
    np.testing.assert_array_equal(zs.ZarrStore(dst).array("b"), memmap.array("b"))
    # The training command reads the zarr store through Grain (imported only for such a run).
    run = tmp_path / "run"
    trained = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.train",
            f"--store={dst}",
            f"--workdir={run}",
            "--steps=4",
            "--batch_rows=12",
            "--num_concepts=16",
            "--top_k=2",
            "--data_parallel=1",
            "--noprogress",
        ],  # fmt: skip
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,  # fmt: skip
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "R² matrix" in trained.stdout
    assert json.loads((run / "summary.json").read_text())["steps"] == 4
    out = subprocess.run(
        [
            sys.executable,
            "benchmarks/input_pipeline.py",
            "--rows=1200",
            "--widths=8,4",
            "--batch_rows=120",
            "--steps=2",
            "--workers=0",
            "--threads=1",
            "--rounds=1",
        ],  # fmt: skip
        check=True,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,  # fmt: skip
    ).stdout
    result = json.loads(out.splitlines()[0])
    assert result["benchmark"] == "input_pipeline"
    assert {(r["medium"], r["store"]) for r in result["rows"]} == {
        (medium, store) for medium in ("page_cache", "disk") for store in ("memmap", "zarr")
    }
    assert all(r["rows_per_s"] > 0 and r["raw_MB_per_s"] > 0 for r in result["rows"])
