"""The device mesh of every run, its axis names, and the shardings of states and batches.

The mesh is ``("data", "model")``: batches are split along rows over ``"data"``; with
``concept_parallel > 1`` encoders, dictionaries, BatchNorm vectors and their optimiser moments
are split along the concepts over ``"model"`` (:func:`state_shardings`), otherwise replicated.
Under ``jit`` the BatchNorm batch statistics are means over the global batch (XLA inserts the
all-reduce), identical to the single-device result. The axis names are defined here only.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from usae_jax.config import TrainConfig

DATA, MODEL = "data", "model"


def create_mesh(data_parallel: int, concept_parallel: int) -> Mesh:
    """A ``("data", "model")`` mesh over the first ``data_parallel * concept_parallel`` devices."""
    devices = jax.devices()
    count = data_parallel * concept_parallel
    if count > len(devices):
        raise ValueError(
            f"data_parallel x concept_parallel = {count} but only {len(devices)} devices exist"
        )
    return jax.make_mesh(
        (data_parallel, concept_parallel),
        (DATA, MODEL),
        axis_types=(AxisType.Auto, AxisType.Auto),
        devices=devices[:count],
    )


def make_training_mesh(config: TrainConfig) -> Mesh:
    """The ``("data", "model")`` mesh of a run (``"model"`` has size ``concept_parallel``;
    ``"data"`` defaults to every remaining device)."""
    data = config.data_parallel
    if data is None:
        data = max(1, jax.device_count() // config.concept_parallel)
    return create_mesh(data, config.concept_parallel)


def _spec_for(path, leaf, num_concepts: int) -> PartitionSpec:
    names = [getattr(key, "key", getattr(key, "name", None)) for key in path]
    shape = getattr(leaf, "shape", ())
    if "dictionary" in names and len(shape) == 2:
        return PartitionSpec(MODEL, None)
    if "kernel" in names and len(shape) == 2:
        return PartitionSpec(None, MODEL)
    if "decoder_bias" in names:  # [d]: a width, not concepts (even where d == n)
        return PartitionSpec()
    if len(shape) == 1 and shape[0] == num_concepts:
        return PartitionSpec(MODEL)
    return PartitionSpec()


def state_shardings(state, mesh: Mesh, num_concepts: int):
    """A pytree of ``NamedSharding`` for a train state (or any tree of USAE arrays)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: NamedSharding(mesh, _spec_for(path, leaf, num_concepts)), state
    )


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    return NamedSharding(mesh, PartitionSpec())


def row_sharded(mesh: Mesh) -> NamedSharding:
    """Rows (axis 0) split over ``"data"``; other axes whole (replicated over ``"model"``)."""
    return NamedSharding(mesh, PartitionSpec(DATA))


def shard_rows(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Host batch ``{name: [B, d]}`` -> device arrays split along rows over ``"data"``.

    With several processes each passes its own rows (``B / process_count`` of them) and the
    global array is assembled from the process-local parts.
    """
    return _place(batch, row_sharded(mesh))


def chunk_row_sharded(mesh: Mesh) -> NamedSharding:
    """A chunk of batches ``[steps, rows, d]``: rows (axis 1) split over ``"data"``."""
    return NamedSharding(mesh, PartitionSpec(None, DATA))


def shard_chunk_rows(chunk: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Host chunk ``{name: [T, B, d]}`` -> device arrays split along rows (axis 1) over
    ``"data"``; with several processes each passes its own ``B / process_count`` rows."""
    return _place(chunk, chunk_row_sharded(mesh))


def _place(arrays: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    if jax.process_count() > 1:
        return {
            name: jax.make_array_from_process_local_data(sharding, rows)
            for name, rows in arrays.items()
        }
    return jax.device_put(arrays, sharding)


def runs_on_cpu(mesh: Mesh) -> bool:
    """Whether every device of ``mesh`` is a CPU device."""
    return {device.platform for device in mesh.devices.flat} == {"cpu"}


def must_block_each_step(mesh: Mesh) -> bool:
    """Whether to wait for each step before dispatching the next.

    jax 0.10.x on several (fake) CPU devices can deadlock XLA's in-process collectives when
    steps are dispatched back to back ("Expected 8 threads to join the rendezvous"); waiting on
    each step's result avoids it. Accelerators and jax >= 0.12 need no such wait.
    """
    version = tuple(int(part) for part in jax.__version__.split(".")[:2])
    return mesh.size > 1 and runs_on_cpu(mesh) and version < (0, 12)
