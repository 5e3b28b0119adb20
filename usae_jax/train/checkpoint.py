"""Orbax checkpoints with auto-resume, plus a JSON record of the run's config beside them."""

from __future__ import annotations

import json
import os

import jax
import orbax.checkpoint as ocp

from usae_jax.config import training_identity


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
        )

    def latest_step(self) -> int | None:
        """The newest saved step, or None."""
        return self._manager.latest_step()

    def save(self, step: int, state, extra: dict | None = None) -> None:
        """Save ``state`` as step ``step`` and wait until it is on disk."""
        meta = {"config": self.config_json, "step": int(step), **(extra or {})}
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )
        self._manager.wait_until_finished()

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
        try:
            restored = self._manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()
                ),
            )
        except Exception as err:  # orbax/tensorstore raise many types for damaged files
            raise CheckpointError(
                f"checkpoint of step {step} in {self.directory} is unreadable "
                f"({type(err).__name__}: {err}). Delete that step's folder to fall back to an "
                "earlier one, or use a fresh workdir."
            ) from err
        meta = restored["meta"]
        if not _same_training(meta.get("config"), self.config_json):
            raise CheckpointError(
                f"checkpoint in {self.directory} was written by a different configuration; "
                "use a fresh workdir or the same config.\n"
                f"saved: {meta.get('config')}\ncurrent: {self.config_json}"
            )
        return restored["state"], meta

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
