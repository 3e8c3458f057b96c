"""The training loop end to end: train.py, metrics, checkpoints, exact resume, bad checkpoints."""

import json
import os
import re
import shutil

import jax
import numpy as np
import pytest
from tiny_training import LEARNING_STEPS, TINY_TRAINING, run_train_py

from configs.default import get_config
from flaxformer_lite.training.checkpoint import CheckpointError, restore_params
from flaxformer_lite.training.trainer import train_and_evaluate


def tiny_config(**changes):
    config = get_config()
    config.update({**TINY_TRAINING, **changes})
    return config


def final_metrics(stdout: str) -> dict[str, float]:
    """The numbers of the run's last line, `final: step=200 exact_match=1 ...`."""
    final_line = stdout.strip().splitlines()[-1]
    assert final_line.startswith("final: ")
    pairs = (item.split("=") for item in final_line.split()[1:])
    return {key: float(value) for key, value in pairs}


def test_train_py_end_to_end(trained_run):
    workdir, result = trained_run
    final = final_metrics(result.stdout)
    assert final["step"] == LEARNING_STEPS
    for key in (
        "eval_loss",
        "eval_accuracy",
        "exact_match",
        "tokens_per_s",
        "mfu",
        "learning_rate",
    ):
        assert np.isfinite(final[key]), key

    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    record = json.loads(lines[-1])
    assert record["step"] == LEARNING_STEPS
    assert record["eval_loss"] == pytest.approx(final["eval_loss"], rel=1e-5)
    assert list(workdir.glob("events.out.tfevents.*")), "no TensorBoard event file"
    assert sorted(os.listdir(workdir / "checkpoints"), key=int) == ["100", "200"]
    assert "(reference " in result.stdout  # decoded examples are printed beside their references


def test_a_short_run_learns_to_copy(trained_run):
    """Exact match of greedy decoding on held-out strings: about 0 untrained, about 1 here.

    A finite loss alone would pass with a learning rate of 0 or a broken gradient.
    """
    _, result = trained_run
    final = final_metrics(result.stdout)
    assert final["exact_match"] >= 0.9, result.stdout[-2000:]


def run_params(workdir, steps, **changes):
    train_and_evaluate(tiny_config(num_train_steps=steps, **changes), str(workdir))
    return restore_params(str(workdir))


def test_resume_equals_uninterrupted_training(tmp_path):
    uninterrupted = run_params(tmp_path / "straight", 8)
    run_params(tmp_path / "resumed", 4)
    resumed = run_params(tmp_path / "resumed", 8)
    jax.tree_util.tree_map(np.testing.assert_array_equal, resumed, uninterrupted)


def test_a_save_cut_short_leaves_the_last_good_checkpoint(tmp_path):
    workdir = tmp_path / "run"
    first = run_params(workdir, 4)
    checkpoints = workdir / "checkpoints"
    # What a kill during the step-8 save leaves behind: an unfinished temporary directory.
    shutil.copytree(checkpoints / "4", checkpoints / "8.orbax-checkpoint-tmp")
    (checkpoints / "8.orbax-checkpoint-tmp" / "commit_success.txt").unlink(missing_ok=True)
    jax.tree_util.tree_map(np.testing.assert_array_equal, restore_params(str(workdir)), first)
    run_params(workdir, 8)  # resumes from step 4 and finishes
    assert sorted(os.listdir(checkpoints)) == ["4", "8"]


def test_corrupt_checkpoint_gives_a_clear_error(tmp_path):
    workdir = tmp_path / "run"
    run_params(workdir, 4)
    for path in (workdir / "checkpoints" / "4" / "state").rglob("*"):
        if path.is_file():
            path.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=re.escape(str(workdir / "checkpoints"))):
        train_and_evaluate(tiny_config(num_train_steps=8), str(workdir))


def test_incompatible_checkpoint_gives_a_clear_error(tmp_path):
    workdir = tmp_path / "run"
    run_params(workdir, 4)
    with pytest.raises(CheckpointError, match="different model or config"):
        train_and_evaluate(tiny_config(num_train_steps=8, d_model=48), str(workdir))


def test_an_undownloadable_dataset_stops_with_one_line(tmp_path):
    result = run_train_py(
        "--config=configs/wmt14_ende_base.py",
        f"--workdir={tmp_path}",
        "--config.download=False",
        f"--config.data_dir={tmp_path / 'tfds'}",
    )
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: ") and "wmt14_translate" in last_line
    assert "Traceback" not in result.stderr


def test_a_missing_tsv_is_named_in_one_line(tmp_path):
    missing = tmp_path / "nowhere.tsv"
    result = run_train_py(
        f"--workdir={tmp_path / 'run'}", "--config.dataset=tsv", f"--config.train_file={missing}"
    )
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: ") and str(missing) in last_line
