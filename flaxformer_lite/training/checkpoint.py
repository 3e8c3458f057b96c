"""Orbax checkpoints: atomic, keep-last-K, asynchronous, resumable.

A checkpoint holds the train state and, beside it, the data iterator's state,
so a resumed run continues with exactly the batch it would have seen next,
and a small "run" record (the dropout PRNG implementation) that a resume must
match to draw the same masks.
Orbax writes each step to a temporary directory and renames it when complete,
so a run killed mid-save leaves the previous step intact; the unfinished
directory is ignored and cleaned up on the next start.
"""

import os

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

CHECKPOINT_DIR = "checkpoints"


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be restored (corrupt, or from another model)."""


class Checkpointer:
    """Save every `save_every` steps (the caller asks `should_save`), keep the last `keep`.

    `run` ({"prng_impl": ...}) is saved with every step and checked on restore.
    """

    def __init__(
        self,
        workdir: str,
        save_every: int,
        keep: int = 3,
        async_save: bool = True,
        run: dict | None = None,
    ):
        self.directory = os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)
        self.save_every = save_every
        self.run = run or {}
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep,
                enable_async_checkpointing=async_save,
                cleanup_tmp_directories=True,
            ),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def should_save(self, step: int) -> bool:
        return step % self.save_every == 0

    def save(self, step: int, state, data_iterator=None) -> None:
        """Start saving `state` (a host copy) at `step`; the writing finishes in the background."""
        items = {"state": ocp.args.StandardSave(state), "run": ocp.args.JsonSave(self.run)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        self.manager.save(step, args=ocp.args.Composite(**items), force=True)

    def restore(self, state_template, data_iterator=None, step: int | None = None):
        """The state saved at `step` (default: latest), shaped like `state_template`.

        Also moves `data_iterator` to where it was at that step. Raises
        CheckpointError naming the directory if the files cannot be read, or
        if they were written with another run record (e.g. prng_impl).
        """
        step = self.latest_step() if step is None else step
        template = jax.device_get(state_template)
        items = {"state": ocp.args.StandardRestore(template), "run": ocp.args.JsonRestore()}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as error:  # orbax raises many types; all mean "unusable"
            raise self._unusable(step, f"{type(error).__name__}: {str(error)[:300]}") from error
        mismatch = _first_shape_mismatch(template, restored["state"])
        if mismatch:
            raise self._unusable(step, mismatch)
        self._check_run_record(step, restored["run"])
        return restored["state"]

    def _check_run_record(self, step: int, saved: dict) -> None:
        for name, value in self.run.items():
            if saved.get(name) != value:
                raise CheckpointError(
                    f"Checkpoint step {step} in {self.directory} was trained with "
                    f"{name}={saved.get(name)!r}, this run asks for {name}={value!r}: resume "
                    f"with --config.{name}={saved.get(name)}, or train in a fresh --workdir."
                )

    def _unusable(self, step, problem: str) -> CheckpointError:
        return CheckpointError(
            f"Cannot restore checkpoint step {step} from {self.directory}: {problem}. The files "
            "are corrupt or were written by a different model or config; delete that step "
            "directory to fall back to an earlier one, or train in a fresh --workdir."
        )

    def wait(self) -> None:
        """Block until asynchronous saves have finished."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def _first_shape_mismatch(expected, restored) -> str | None:
    """Orbax restores saved shapes even where the template differs: catch that here."""
    expected_leaves = jax.tree_util.tree_leaves_with_path(expected)
    restored_leaves = jax.tree_util.tree_leaves(restored)
    if len(expected_leaves) != len(restored_leaves):
        return f"{len(restored_leaves)} arrays saved, {len(expected_leaves)} expected"
    for (path, want), got in zip(expected_leaves, restored_leaves, strict=True):
        if np.shape(want) != np.shape(got):
            name = jax.tree_util.keystr(path)
            return f"{name} has shape {np.shape(got)}, the model expects {np.shape(want)}"
    return None


def restore_params(workdir: str, step: int | None = None):
    """Only the model parameters of a training run, for inference and notebooks.

    Needs no model, optimizer or data: the parameter tree is read as saved, onto this
    process's first device, whatever mesh or processes wrote it.
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
    state_directory = os.path.join(directory, str(step), "state")
    checkpointer = ocp.PyTreeCheckpointer()
    try:
        # A checkpoint written under a mesh records shardings over devices this process
        # may not have: every array is read onto one local device instead.
        one_device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        restore_args = jax.tree.map(
            lambda leaf: (
                ocp.ArrayRestoreArgs(sharding=one_device)
                if isinstance(leaf, ocp.metadata.ArrayMetadata)
                else ocp.RestoreArgs()
            ),
            checkpointer.metadata(state_directory).item_metadata,
        )
        restored = checkpointer.restore(
            state_directory, args=ocp.args.PyTreeRestore(restore_args=restore_args)
        )
    except Exception as error:
        raise CheckpointError(
            f"Cannot read parameters of step {step} from {directory}: "
            f"{type(error).__name__}: {str(error)[:300]}."
        ) from error
    return restored["params"]
