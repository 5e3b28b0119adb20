"""Orbax checkpoints with auto-resume, plus a JSON record of the run's config beside them.

Each step is saved as three items: ``model`` (``{"params", "batch_stats"}``, all an analysis
needs), ``train`` (``{"step", "opt_states", "tokens_since_fired"}``, what resuming adds) and
``meta`` (JSON: the config and the step). Checkpoints written before this layout hold one
``state`` item (the whole :class:`~usae_jax.train.state.TrainState`); both are read.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp

from usae_jax.config_io import training_identity

MODEL_KEYS = ("params", "batch_stats")
"""The fields of a train state saved in the ``model`` item."""


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be used (corrupt, or from another configuration)."""


class Checkpointer:
    """Saves and restores :class:`~usae_jax.train.state.TrainState` under ``<workdir>/checkpoints``.

    Args:
      workdir: the run's directory.
      keep: how many recent checkpoints to keep.
      config_json: the run's config as a JSON-ready dict; stored with every checkpoint and
        compared on restore, so a workdir is never resumed under a configuration that computes
        something else (operational fields such as logging or device counts may change).
    """

    def __init__(self, workdir: str | os.PathLike, keep: int, config_json: dict):
        self.directory = os.path.abspath(os.path.join(os.fspath(workdir), "checkpoints"))
        self.config_json = json.loads(json.dumps(config_json))
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
            # every item's handler named up front: reading one item's metadata then does not
            # warn about the others ("found in the checkpoint, but could not be restored")
            item_handlers={
                "model": ocp.StandardCheckpointHandler(),
                "train": ocp.StandardCheckpointHandler(),
                "state": ocp.StandardCheckpointHandler(),  # before the model/train split
                "meta": ocp.JsonCheckpointHandler(),
            },
        )

    def latest_step(self) -> int | None:
        """The newest saved step, or None."""
        return self._manager.latest_step()

    def save(self, step: int, state, extra: dict | None = None) -> None:
        """Save ``state`` as step ``step`` and wait until it is on disk."""
        meta = {"config": self.config_json, "step": int(step), **(extra or {})}
        model, train = _split(state)
        self._manager.save(
            step,
            args=ocp.args.Composite(
                model=ocp.args.StandardSave(model),
                train=ocp.args.StandardSave(train),
                meta=ocp.args.JsonSave(meta),
            ),
            force=True,
        )
        self._manager.wait_until_finished()

    def _has_item(self, step: int, item: str) -> bool:
        return os.path.isdir(os.path.join(self.directory, str(step), item))

    def restore(self, abstract_state, step: int | None = None):
        """Restore ``(state, meta)`` at ``step`` (default: latest) onto ``abstract_state``'s layout.

        ``abstract_state`` is a state pytree (or its ``jax.ShapeDtypeStruct`` tree) with the
        target shardings. Raises :class:`CheckpointError` on a corrupt checkpoint or a config
        mismatch.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
        if self._has_item(step, "model"):
            model, train = _split(target)
            args = ocp.args.Composite(
                model=ocp.args.StandardRestore(model),
                train=ocp.args.StandardRestore(train),
                meta=ocp.args.JsonRestore(),
            )
        else:  # written before the model/train split
            args = ocp.args.Composite(
                state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()
            )
        restored = self._restore(step, args)
        meta = restored["meta"]
        self._check_config(meta)
        if "model" in restored:
            return abstract_state.replace(**restored["model"], **restored["train"]), meta
        return restored["state"], meta

    def restore_model(self, step: int | None = None) -> tuple[dict, dict]:
        """``({"params", "batch_stats"}, meta)`` of ``step`` (default: latest) as host numpy
        arrays, without the optimiser state (for analysis: no optimiser needs to be built).
        Reads checkpoints of both layouts; raises :class:`CheckpointError` as :meth:`restore`."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        item = "model" if self._has_item(step, "model") else "state"
        target = _host_target(self._manager.item_metadata(step)[item])
        restored = self._restore(
            step,
            ocp.args.Composite(
                **{item: ocp.args.StandardRestore(target)}, meta=ocp.args.JsonRestore()
            ),
        )
        self._check_config(restored["meta"])
        tree = restored[item]
        model = {key: jax.tree.map(np.asarray, tree[key]) for key in MODEL_KEYS}
        return model, restored["meta"]

    def _restore(self, step: int, args):
        try:
            return self._manager.restore(step, args=args)
        except Exception as err:  # orbax/tensorstore raise many types for damaged files
            raise CheckpointError(
                f"checkpoint of step {step} in {self.directory} is unreadable "
                f"({type(err).__name__}: {err}). Delete that step's folder to fall back to an "
                "earlier one, or use a fresh workdir."
            ) from err

    def _check_config(self, meta: dict) -> None:
        if not _same_training(meta.get("config"), self.config_json):
            raise CheckpointError(
                f"checkpoint in {self.directory} was written by a different configuration; "
                "use a fresh workdir or the same config.\n"
                f"saved: {meta.get('config')}\ncurrent: {self.config_json}"
            )

    def close(self) -> None:
        self._manager.close()


def _same_training(saved: dict | None, current: dict) -> bool:
    """Whether a saved config computes the same run as ``current`` (operational fields such as
    the progress bar, log interval or device counts may differ; new fields take defaults)."""
    if saved is None:
        return False
    try:
        return training_identity(saved) == training_identity(current)
    except (ValueError, TypeError, KeyError):
        return False


def _split(state) -> tuple[dict, dict]:
    """A train state (or its abstract tree) -> ``(model item, train item)`` dicts."""
    fields = {field: getattr(state, field) for field in state.__dataclass_fields__}
    model = {key: fields.pop(key) for key in MODEL_KEYS}
    return model, fields


def _host_target(metadata):
    """A restore target on the first local device from an item's array metadata (the saved
    shardings may name devices this process does not have)."""
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(
        lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=device), metadata
    )
