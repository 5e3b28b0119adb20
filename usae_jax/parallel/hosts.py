"""Multi-process (multi-host) start-up and each process's share of a batch.

Every process runs the same program. ``initialize`` connects them (on CPU through gloo
collectives, so that a localhost test exercises the real code path); afterwards
``jax.devices()`` lists every process's devices and a mesh spans them all. Each process reads
only its own rows of every global batch (:func:`process_rows`) and the global array is assembled
with ``jax.make_array_from_process_local_data`` (see :func:`usae_jax.parallel.mesh.shard_rows`).
"""

from __future__ import annotations

import jax
import numpy as np

from usae_jax.data.source import epoch_rows


def initialize(coordinator: str | None, num_processes: int, process_id: int) -> None:
    """Connect this process to the others; a no-op for a single process.

    Args:
      coordinator: ``host:port`` of process 0 (None: let JAX read the cluster environment,
        e.g. on Cloud TPU or SLURM).
      num_processes: total processes; 1 means single-process and does nothing.
      process_id: this process's index in ``[0, num_processes)``.
    """
    if num_processes <= 1 and coordinator is None:
        return
    if not 0 <= process_id < max(num_processes, 1):
        raise ValueError(f"process_id={process_id} is outside [0, {num_processes})")
    if jax.config.jax_platforms in (None, "", "cpu") or "cpu" in str(jax.config.jax_platforms):
        # CPU devices of different processes talk through gloo (TCP); accelerators use their own.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator, num_processes=num_processes, process_id=process_id
    )


def process_rows(global_indices: np.ndarray) -> np.ndarray:
    """This process's contiguous share of a global batch's row indices ``[B] -> [B / P]``.

    Concatenating every process's share in process order gives back the global batch, which is
    how ``make_array_from_process_local_data`` assembles it on a row-sharded mesh whose devices
    are ordered by process (``jax.make_mesh`` orders them so).
    """
    count, index = jax.process_count(), jax.process_index()
    if len(global_indices) % count:
        raise ValueError(
            f"batch of {len(global_indices)} rows does not split over {count} processes"
        )
    share = len(global_indices) // count
    return global_indices[index * share : (index + 1) * share]


class ProcessShare:
    """A view of a paired source whose ``batch`` returns only this process's rows.

    With one process it is the source's own ``batch``; with ``P`` processes each reads
    ``batch_rows / P`` rows (its share of the same global batch) through ``source.rows``; a
    source with a ``batch_indices(step, batch_rows, seed)`` method (e.g. the chunk-shuffled
    ``GrainSource``) names the global batch's rows itself.
    """

    def __init__(self, source):
        self.source = source

    def batch(self, step: int, batch_rows: int, seed: int) -> dict[str, np.ndarray]:
        if jax.process_count() == 1:
            return self.source.batch(step, batch_rows, seed)
        order = getattr(self.source, "batch_indices", None)  # a source with its own order
        if order is not None:
            indices = order(step, batch_rows, seed)
        else:
            indices = epoch_rows(self.source.num_rows, step, batch_rows, seed)
        return self.source.rows(process_rows(indices))
