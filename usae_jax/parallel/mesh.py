"""Device meshes and shardings for data-parallel training.

Parameters and optimiser states are replicated; every batch is split along its rows over the
mesh's ``"data"`` axis. Under ``jit`` the BatchNorm batch statistics are then means over the
global batch (XLA inserts the all-reduce), identical to the single-device result.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    return NamedSharding(mesh, PartitionSpec())


def row_sharded(mesh: Mesh) -> NamedSharding:
    """Rows (axis 0) split over ``"data"``; other axes whole (replicated over ``"model"``)."""
    return NamedSharding(mesh, PartitionSpec("data"))


def shard_rows(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Host batch ``{name: [B, d]}`` -> device arrays split along rows over ``"data"``.

    With several processes each passes its own rows (``B / process_count`` of them) and the
    global array is assembled from the process-local parts.
    """
    sharding = row_sharded(mesh)
    if jax.process_count() > 1:
        return {
            name: jax.make_array_from_process_local_data(sharding, rows)
            for name, rows in batch.items()
        }
    return jax.device_put(batch, sharding)


def must_block_each_step(mesh: Mesh) -> bool:
    """Whether to wait for each step before dispatching the next.

    jax 0.10.x on several (fake) CPU devices can deadlock XLA's in-process collectives when
    steps are dispatched back to back ("Expected 8 threads to join the rendezvous"); waiting on
    each step's result avoids it. Accelerators and jax >= 0.12 need no such wait.
    """
    version = tuple(int(part) for part in jax.__version__.split(".")[:2])
    return mesh.size > 1 and mesh.devices.flat[0].platform == "cpu" and version < (0, 12)
