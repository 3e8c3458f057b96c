"""Faults a long training run meets: a stop signal, a NaN, a second run, bad input to the CLIs.

Each test provokes the fault for real (a signal to a subprocess, a learning rate
that overflows, a live process holding the lock) and checks what is left on disk.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from tiny_training import REPO, TINY_TRAINING, run_train_py

from configs.default import get_config
from flaxformer_lite.data import DataError
from flaxformer_lite.training.checkpoint import CheckpointError, restore_params
from flaxformer_lite.training.guards import (
    LOCK_FILE,
    NonFiniteError,
    WorkdirInUseError,
    WorkdirLock,
)
from flaxformer_lite.training.trainer import train_and_evaluate

TINY_FLAGS = [f"--config.{key}={value}" for key, value in TINY_TRAINING.items()]
NEVER = 10**6  # a step count no test reaches: no evaluation or checkpoint before the end


def tiny_config(**changes):
    config = get_config()
    config.update({**TINY_TRAINING, **changes})
    return config


def test_sigterm_saves_the_current_step_and_the_same_command_resumes_exactly(tmp_path):
    workdir = tmp_path / "interrupted"
    flags = [*TINY_FLAGS, f"--config.eval_every_steps={NEVER}"]
    flags += [f"--config.checkpoint_every_steps={NEVER}", f"--config.log_every_steps={NEVER}"]
    # The resumed command names a nearer end than the interrupted one. Cosine decays over
    # num_train_steps, so past the warm-up the two would follow different learning rates;
    # rsqrt depends on the step alone.
    flags += ["--config.schedule=rsqrt"]
    process = subprocess.Popen(
        [sys.executable, "train.py", f"--workdir={workdir}", f"--config.num_train_steps={NEVER}"]
        + flags,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in process.stdout:  # wait until the loop has started
        if line.startswith("Training steps"):
            break
    time.sleep(3.0)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    last_line = stdout.strip().splitlines()[-1]
    match = re.fullmatch(
        r"interrupted: SIGTERM: saved a checkpoint at step (\d+) in (\S+); "
        r"run the same command to resume\.",
        last_line,
    )
    assert match, last_line
    stopped_at = int(match.group(1))
    assert os.listdir(match.group(2)) == [str(stopped_at)]
    assert not (workdir / LOCK_FILE).exists()

    # The same command, asked to go a few steps further, ends where an uninterrupted run ends.
    end = stopped_at + 3
    resumed = run_train_py(f"--workdir={workdir}", f"--config.num_train_steps={end}", *flags)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"Resumed from step {stopped_at}" in resumed.stdout
    straight = tmp_path / "straight"
    config = tiny_config(
        num_train_steps=end,
        schedule="rsqrt",
        eval_every_steps=NEVER,
        checkpoint_every_steps=NEVER,
        log_every_steps=NEVER,
    )
    train_and_evaluate(config, str(straight))
    jax.tree_util.tree_map(
        np.testing.assert_array_equal, restore_params(str(workdir)), restore_params(str(straight))
    )


@pytest.fixture(scope="module")
def four_good_steps(tmp_path_factory):
    """A workdir with a checkpoint at step 4, and its parameters."""
    workdir = tmp_path_factory.mktemp("good") / "run"
    train_and_evaluate(tiny_config(num_train_steps=4), str(workdir))
    return workdir, restore_params(str(workdir))


def copy_of(workdir, tmp_path):
    subprocess.run(["cp", "-r", str(workdir), str(tmp_path / "copy")], check=True)
    return tmp_path / "copy"


def test_a_step_gone_nonfinite_stops_before_it_is_applied(four_good_steps, tmp_path):
    workdir = copy_of(four_good_steps[0], tmp_path)
    with pytest.raises(NonFiniteError, match=r"step \d+ .*last good checkpoint: step 4 in "):
        train_and_evaluate(tiny_config(num_train_steps=8, learning_rate=1e30), str(workdir))
    assert os.listdir(workdir / "checkpoints") == ["4"]  # nothing NaN was written
    jax.tree_util.tree_map(
        np.testing.assert_array_equal, restore_params(str(workdir)), four_good_steps[1]
    )


def test_skip_nonfinite_counts_the_steps_and_saves_only_finite_states(
    four_good_steps, tmp_path, capsys
):
    workdir = copy_of(four_good_steps[0], tmp_path)
    config = tiny_config(num_train_steps=8, learning_rate=1e30, skip_nonfinite=True)
    final = train_and_evaluate(config, str(workdir))
    assert final["skipped_steps"] >= 1
    assert "non-finite loss or update, skipped" in capsys.readouterr().out
    params = restore_params(str(workdir))  # step 8
    assert all(np.isfinite(leaf).all() for leaf in jax.tree_util.tree_leaves(params))
    assert np.isfinite(final["eval_loss"]) and final["eval_accuracy"] < 1.0


def test_resuming_with_another_dropout_generator_is_refused(four_good_steps, tmp_path):
    workdir = copy_of(four_good_steps[0], tmp_path)
    with pytest.raises(CheckpointError, match="prng_impl='threefry2x32'.*--config.prng_impl="):
        train_and_evaluate(tiny_config(num_train_steps=8, prng_impl="rbg"), str(workdir))


def test_a_live_run_holds_the_workdir_and_a_dead_ones_lock_is_taken_over(tmp_path, capsys):
    second_run = WorkdirLock(str(tmp_path))
    with (
        WorkdirLock(str(tmp_path)),
        pytest.raises(WorkdirInUseError, match=f"{os.getpid()}.*use another --workdir"),
    ):
        second_run.__enter__()
    assert not (tmp_path / LOCK_FILE).exists()  # released on exit

    ended = subprocess.Popen(["true"])
    ended.wait()  # its PID now names no process
    (tmp_path / LOCK_FILE).write_text(f"{socket.gethostname()} {ended.pid}")
    with WorkdirLock(str(tmp_path)):
        assert "Taking over the stale lock" in capsys.readouterr().out
        assert (tmp_path / LOCK_FILE).read_text() == f"{socket.gethostname()} {os.getpid()}"


def test_train_py_on_a_workdir_a_live_process_holds_stops_at_once(tmp_path):
    holder = subprocess.Popen(["sleep", "300"])
    try:
        (tmp_path / LOCK_FILE).write_text(f"{socket.gethostname()} {holder.pid}")
        result = run_train_py(f"--workdir={tmp_path}", *TINY_FLAGS)
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 1
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: ") and f"{holder.pid}" in last_line
    assert "Traceback" not in result.stderr and not (tmp_path / "checkpoints").exists()


def test_train_py_names_a_bad_config_value_in_one_line(tmp_path):
    result = run_train_py(f"--workdir={tmp_path}", *TINY_FLAGS, "--config.prng_impl=mersenne")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: prng_impl='mersenne'")
    assert "Traceback" not in result.stderr


def run_translate(*flags):
    return subprocess.run(
        [sys.executable, "-m", "flaxformer_lite.translate", *flags],
        cwd=REPO,
        capture_output=True,
        text=True,
        input="0123\n",
        timeout=300,
    )


def test_translate_without_a_run_or_with_a_corrupt_checkpoint_says_so_in_one_line(
    four_good_steps, tmp_path
):
    empty = run_translate(f"--workdir={tmp_path}")
    assert empty.returncode == 1 and "Traceback" not in empty.stderr
    assert empty.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "config.json is missing" in empty.stderr

    workdir = copy_of(four_good_steps[0], tmp_path)
    for path in (workdir / "checkpoints" / "4" / "state").rglob("*"):
        if path.is_file():
            path.write_bytes(b"garbage")
    corrupt = run_translate(f"--workdir={workdir}")
    assert corrupt.returncode == 1 and "Traceback" not in corrupt.stderr
    last_line = corrupt.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: Cannot read parameters of step 4")


def test_data_without_a_validation_split_stops_before_training(tmp_path):
    """A TSV without an eval_file used to train until the first evaluation, then crash."""
    data = tmp_path / "pairs.tsv"
    data.write_text("".join(f"{word}\t{word[::-1]}\n" for word in ("abc", "hello", "xyz")))
    config = tiny_config(dataset="tsv", train_file=str(data))
    with pytest.raises(DataError, match="no validation split.*config.eval_file") as raised:
        train_and_evaluate(config, str(tmp_path / "run"))
    assert "\n" not in str(raised.value)
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing trained, nothing saved
