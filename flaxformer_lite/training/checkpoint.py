"""Orbax checkpoints: atomic, keep-last-K, asynchronous, resumable.

A checkpoint holds the train state and, beside it, the data iterator's state,
so a resumed run continues with exactly the batch it would have seen next.
Orbax writes each step to a temporary directory and renames it when complete,
so a run killed mid-save leaves the previous step intact; the unfinished
directory is ignored and cleaned up on the next start.
"""

import os

import grain
import jax
import orbax.checkpoint as ocp

CHECKPOINT_DIR = "checkpoints"


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be restored (corrupt, or from another model)."""


class Checkpointer:
    """Save every `save_every` steps (and on demand), keep the last `keep`."""

    def __init__(self, workdir: str, save_every: int, keep: int = 3, async_save: bool = True):
        self.directory = os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                save_interval_steps=save_every,
                max_to_keep=keep,
                enable_async_checkpointing=async_save,
                cleanup_tmp_directories=True,
            ),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def should_save(self, step: int) -> bool:
        return self.manager.should_save(step)

    def save(self, step: int, state, data_iterator=None, *, force: bool = False) -> bool:
        """Start saving `state` (host copy, unreplicated) at `step`; returns whether it saves."""
        items = {"state": ocp.args.StandardSave(state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

    def restore(self, state_template, data_iterator=None, step: int | None = None):
        """The state saved at `step` (default: latest), shaped like `state_template`.

        Also moves `data_iterator` to where it was at that step. Raises
        CheckpointError naming the directory if the files cannot be read.
        """
        step = self.latest_step() if step is None else step
        items = {"state": ocp.args.StandardRestore(jax.device_get(state_template))}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as error:  # orbax raises many types; all mean "unusable"
            raise CheckpointError(
                f"Cannot restore checkpoint step {step} from {self.directory}: "
                f"{type(error).__name__}: {str(error)[:300]}. The files are corrupt or were "
                "written by a different model or config; delete that step directory to fall "
                "back to an earlier one, or train in a fresh --workdir."
            ) from error
        return restored["state"]

    def wait(self) -> None:
        """Block until asynchronous saves have finished."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def restore_params(workdir: str, step: int | None = None):
    """Only the model parameters of a training run, for inference and notebooks.

    Needs no model, optimizer or data: the parameter tree is read as saved.
    """
    directory = os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            f"No checkpoints in {directory}: train first (python train.py --workdir={workdir})."
        )
    with ocp.CheckpointManager(
        directory, options=ocp.CheckpointManagerOptions(read_only=True)
    ) as manager:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{directory} holds no finished checkpoint.")
        try:
            restored = manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore())
            )
        except Exception as error:
            raise CheckpointError(
                f"Cannot read parameters of step {step} from {directory}: "
                f"{type(error).__name__}: {str(error)[:300]}."
            ) from error
    return restored["state"]["params"]
