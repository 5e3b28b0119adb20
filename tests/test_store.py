"""Store round trip, every corruption case, the store loader and the mesh prefetcher."""

import json
import os

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from usae_jax.data import store as st
from usae_jax.data.loader import StoreSource
from usae_jax.data.source import ArraySource, PairedSource
from usae_jax.parallel.prefetch import prefetch_to_mesh

GRID = (2, 3)


def make_arrays(images=10, seed=0):
    rng = np.random.default_rng(seed)
    rows = images * 6
    return {
        "a": rng.normal(2.0, 3.0, (rows, 4)).astype(np.float32),
        "b": rng.normal(-1.0, 0.5, (rows, 5)).astype(np.float32),
    }


@pytest.fixture
def stored(tmp_path):
    arrays = make_arrays()
    ids = [f"img{i}" for i in range(10)]
    store = st.write_store(tmp_path / "s", arrays, GRID, ids, chunk_images=4)
    return tmp_path / "s", arrays, store


def test_round_trip(stored):
    path, arrays, store = stored
    assert store.names == ("a", "b") and store.widths == (4, 5) and store.num_rows == 60
    assert len(store.manifest["shards"]) == 3
    assert store.manifest["image_ids"][3] == "img3" and store.manifest["grid"] == list(GRID)
    for name, array in arrays.items():
        np.testing.assert_array_equal(store.array(name), array)
        idx = np.array([0, 5, 23, 24, 59])
        np.testing.assert_array_equal(store.read(name, idx), array[idx])
    mean = store.models["a"]["mean"]
    assert abs(mean - arrays["a"].mean()) < 1e-5


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision(tmp_path, dtype):
    arrays = make_arrays()
    store = st.write_store(tmp_path, arrays, GRID, [str(i) for i in range(10)], dtype=dtype)
    np.testing.assert_allclose(store.array("a"), arrays["a"], rtol=1e-2, atol=1e-2)
    assert store.array("a").dtype == np.float32


def test_missing_shard(stored):
    path, _, _ = stored
    os.remove(path / "b" / "00001.bin")
    with pytest.raises(st.StoreError, match="missing shard .*00001.bin"):
        st.Store(path)


def test_wrong_size(stored):
    path, _, _ = stored
    with open(path / "a" / "00002.bin", "ab") as f:
        f.write(b"\0\0\0\0")
    with pytest.raises(st.StoreError, match="bytes, the manifest implies"):
        st.Store(path, verify=False)


def test_checksum_mismatch(stored):
    path, _, _ = stored
    with open(path / "a" / "00000.bin", "r+b") as f:
        f.seek(8)
        f.write(b"\x01\x02\x03\x04")
    st.Store(path, verify=False)  # sizes still agree
    with pytest.raises(st.StoreError, match="checksum mismatch"):
        st.Store(path)


def test_truncated_manifest(stored):
    path, _, _ = stored
    text = (path / st.MANIFEST).read_text()
    (path / st.MANIFEST).write_text(text[: len(text) // 2])
    with pytest.raises(st.StoreError, match="truncated"):
        st.Store(path)


def test_no_manifest_and_inconsistent_rows(stored, tmp_path):
    with pytest.raises(st.StoreError, match="does not exist"):
        st.Store(tmp_path / "empty")
    path, _, _ = stored
    manifest = json.loads((path / st.MANIFEST).read_text())
    manifest["num_rows"] += 6
    (path / st.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(st.StoreError, match="num_rows"):
        st.Store(path)


def test_incomplete_store_is_refused(tmp_path):
    writer = st.StoreWriter(tmp_path, [st.ModelSpec(name="a", width=4)], GRID, {})
    writer.append(["x"], {"a": np.zeros((6, 4), np.float32)})
    with pytest.raises(st.StoreError, match="incomplete"):
        st.Store(tmp_path)
    assert st.Store(tmp_path, require_complete=False).num_rows == 6


def test_writer_resumes_and_removes_uncommitted(tmp_path):
    specs = [st.ModelSpec(name="a", width=4)]
    writer = st.StoreWriter(tmp_path, specs, GRID, {"k": 1})
    writer.append(["x"], {"a": np.ones((6, 4), np.float32)})
    (tmp_path / "a" / "00001.bin").write_bytes(b"partial")  # a crash before the manifest
    again = st.StoreWriter(tmp_path, specs, GRID, {"k": 1})
    assert again.committed_images == 1 and not (tmp_path / "a" / "00001.bin").exists()
    with pytest.raises(st.StoreError, match="other meta"):
        st.StoreWriter(tmp_path, specs, GRID, {"k": 2})


def test_spec_validation():
    with pytest.raises(ValueError, match="dtype"):
        st.ModelSpec(name="a", width=3, dtype="int8")
    with pytest.raises(ValueError, match="folder name"):
        st.ModelSpec(name="a/b", width=3)


def test_store_source_matches_array_source(stored):
    path, arrays, _ = stored
    source = StoreSource(path)
    assert isinstance(source, PairedSource)
    reference = ArraySource(arrays)
    for step in (0, 3, 7):  # 60 rows / 16 = 3 steps per epoch: crosses epochs
        ours, ref = source.batch(step, 16, seed=5), reference.batch(step, 16, seed=5)
        for name in arrays:
            np.testing.assert_allclose(ours[name], ref[name], rtol=1e-5, atol=1e-5)
    # Unbiased std (ddof=1) over all values, divided by std + 1e-5 (the official formula).
    assert abs(float(source.rows(np.arange(60))["a"].std(ddof=1)) - 1) < 1e-4


def test_store_source_rejects_nan(tmp_path):
    arrays = make_arrays()
    arrays["a"][7, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite.*'a'.*first at row 7"):
        st.write_store(tmp_path, arrays, GRID, [str(i) for i in range(10)])
    with pytest.raises(st.StoreError, match="incomplete"):  # the statistics were never recorded
        StoreSource(tmp_path, standardise=False)


def test_prefetch_to_mesh(stored):
    path, _, _ = stored
    source = StoreSource(path)
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    got = list(prefetch_to_mesh(source, range(5), 16, 1, sharding, depth=2))
    assert [s for s, _ in got] == list(range(5))
    for step, batch in got:
        jax.block_until_ready(batch)
        assert batch["b"].sharding == sharding and batch["b"].shape == (16, 5)
        np.testing.assert_array_equal(np.asarray(batch["b"]), source.batch(step, 16, 1)["b"])


def test_prefetch_propagates_errors_and_stops(stored):
    path, _, _ = stored
    source = StoreSource(path)
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    with pytest.raises(ValueError, match="larger than"):
        list(prefetch_to_mesh(source, range(3), 1000, 0, sharding))
    gen = prefetch_to_mesh(source, range(1000), 8, 0, sharding, depth=1)
    next(gen)
    gen.close()  # must not hang


@pytest.mark.parametrize(
    "bad, message",
    [
        ("/etc/passwd", "is absolute"),
        ("../outside.bin", "contains '..'"),
        ("a/../../outside.bin", "contains '..'"),
        ("a/link.bin", "outside the store"),
    ],
)
def test_manifest_shard_paths_must_stay_inside_the_store(stored, bad, message):
    path, _, _ = stored
    outside = path.parent / "outside.bin"
    outside.write_bytes(bytes(4 * 4 * 6 * 4))  # as many bytes as the shard it replaces
    os.symlink(outside, path / "a" / "link.bin")
    manifest = json.loads((path / st.MANIFEST).read_text())
    manifest["shards"][0]["files"]["a"]["path"] = bad
    (path / st.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(st.StoreError, match=message):
        st.Store(path, verify=False)
    with pytest.raises(st.StoreError, match=message):
        st.StoreWriter(
            path, [st.ModelSpec(name="a", width=4), st.ModelSpec(name="b", width=5)], GRID, {}
        )
    assert outside.exists()


def test_writer_refuses_a_non_empty_folder_without_manifest(tmp_path):
    (tmp_path / "a").mkdir()
    kept = {
        tmp_path / "notes.txt": b"mine",
        tmp_path / "a" / "00000.bin": b"not a shard of ours",
        tmp_path / "a" / "photo.jpg": b"\xff\xd8",
    }
    for file, data in kept.items():
        file.write_bytes(data)
    with pytest.raises(st.StoreError, match="not empty .*manifest.json is missing"):
        st.StoreWriter(tmp_path, [st.ModelSpec(name="a", width=4)], GRID, {})
    for file, data in kept.items():
        assert file.read_bytes() == data, file  # nothing lost
    assert not (tmp_path / st.MANIFEST).exists()


def test_writer_accepts_an_empty_folder_and_a_torn_first_manifest(tmp_path):
    (tmp_path / st.MANIFEST).with_suffix(".json.tmp").write_text('{"form')  # crash while creating
    writer = st.StoreWriter(tmp_path, [st.ModelSpec(name="a", width=4)], GRID, {})
    writer.append(["x"], {"a": np.ones((6, 4), np.float32)})
    assert st.Store(tmp_path, require_complete=False).num_rows == 6


def test_writer_resume_removes_only_its_own_shard_files(tmp_path):
    specs = [st.ModelSpec(name="a", width=4)]
    st.StoreWriter(tmp_path, specs, GRID, {}).append(["x"], {"a": np.ones((6, 4), np.float32)})
    (tmp_path / "a" / "00001.bin.tmp").write_bytes(b"torn")
    (tmp_path / "a" / "README").write_text("a user's note")
    st.StoreWriter(tmp_path, specs, GRID, {})
    assert not (tmp_path / "a" / "00001.bin.tmp").exists()
    assert (tmp_path / "a" / "README").read_text() == "a user's note"
    assert (tmp_path / "a" / "00000.bin").exists()
