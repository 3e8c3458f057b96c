"""Bad options give one-line errors naming them; an interrupted preparation is redone."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from flaxformer_lite.data import DataError, create_datasets, options, synthetic


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(dataset="wmt99"), r"config\.dataset='wmt99' is not a dataset .* reverse, .* tsv"),
        (dict(max_source_length=1), r"config\.max_source_length=1 is too small: .* EOS"),
        (dict(max_target_length=0), r"config\.max_target_length=0 is too small"),
        (dict(overlong="cut"), r"config\.overlong='cut' must be one of \('filter', 'truncate'\)"),
        (dict(tokenizer="bpe"), r"config\.tokenizer='bpe' must be one of"),
        (dict(synthetic_num_symbols=63), r"config\.synthetic_num_symbols=63 must be between 2"),
        (dict(synthetic_min_length=5, synthetic_max_length=4), r"synthetic_max_length=4 must"),
        (dict(per_device_batch_size=0), r"config\.per_device_batch_size=0 must be a positive"),
        (dict(max_source_length="32"), r"config\.max_source_length='32' must be an integer"),
    ],
)
def test_bad_options_are_named(tmp_path, make_config, overrides, message):
    with pytest.raises(DataError, match=message):
        create_datasets(make_config(**overrides), str(tmp_path), num_local_devices=1)


def test_a_split_that_does_not_exist_is_named(reverse_workdir, make_config):
    data = create_datasets(make_config(), reverse_workdir, num_local_devices=1)
    with pytest.raises(
        DataError, match=r"Split 'valid' does not exist .* validation, test, test_long"
    ):
        data.eval_batches("valid")
    with pytest.raises(DataError, match=r"Split 'train' does not exist"):
        data.num_eval_examples("train")


def test_no_device_is_an_error(reverse_workdir, make_config):
    with pytest.raises(DataError, match="num_local_devices=0"):
        create_datasets(make_config(), reverse_workdir, num_local_devices=0)


def test_limits_that_drop_every_training_example_are_an_error(reverse_workdir, make_config):
    with pytest.raises(
        DataError, match=r"Every training example is longer .*config\.overlong='truncate'"
    ):
        create_datasets(make_config(max_source_length=3), reverse_workdir, num_local_devices=1)


def test_failed_preparation_leaves_nothing_and_is_redone(tmp_path, make_config, monkeypatch):
    config = make_config(dataset="copy")
    real_generate = synthetic.SyntheticTask._generate_examples

    def fail_midway(self, examples):
        for count, example in enumerate(real_generate(self, examples)):
            if count == 100:
                raise KeyboardInterrupt  # As if the user pressed Ctrl-C.
            yield example

    monkeypatch.setattr(synthetic.SyntheticTask, "_generate_examples", fail_midway)
    with pytest.raises(KeyboardInterrupt):
        create_datasets(config, str(tmp_path), num_local_devices=1)
    assert not list((tmp_path / "data" / "synthetic_task").glob("*/*"))  # Not even a temp dir.
    monkeypatch.undo()
    data = create_datasets(config, str(tmp_path), num_local_devices=1)
    assert data.length_reports["train"].examples == config.num_train_examples


KILLED_PREPARATION = """
import sys, time
from configs import default
from flaxformer_lite.data import create_datasets, synthetic
real_generate = synthetic.SyntheticTask._generate_examples
def hang_midway(self, examples):
    for count, example in enumerate(real_generate(self, examples)):
        if count == 100:
            open(sys.argv[2], "w").close()
            time.sleep(600)
        yield example
synthetic.SyntheticTask._generate_examples = hang_midway
config = default.get_config()
config.update(dataset="copy", num_train_examples=300, num_eval_examples=50)
create_datasets(config, sys.argv[1], 1)
"""


def test_killed_preparation_is_redone_not_read(tmp_path, make_config):
    """A preparation killed with SIGKILL (no clean-up possible) is prepared again."""
    workdir, marker = tmp_path / "work", tmp_path / "halfway"
    script = textwrap.dedent(KILLED_PREPARATION)
    child = subprocess.Popen([sys.executable, "-c", script, str(workdir), str(marker)])
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert child.poll() is None and time.monotonic() < deadline, "child never got halfway"
            time.sleep(0.05)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    prepared = workdir / "data" / "synthetic_task"
    assert [p.name for p in prepared.glob("*/*")][0].startswith("incomplete.")
    data = create_datasets(make_config(dataset="copy"), str(workdir), num_local_devices=1)
    assert data.length_reports["train"].examples == 300
    assert data.num_eval_examples("test") == 50
    assert len(list(prepared.glob("*/1.0.0/*.array_record-*"))) == 4


def test_other_hosts_read_what_process_zero_prepared(reverse_workdir, make_config):
    data = create_datasets(make_config(), reverse_workdir, 1, process_index=1, process_count=2)
    assert data.length_reports["train"].examples == 150  # Its half of the 300 examples.
    assert "host 2 of 2" in data.info


def test_other_hosts_give_up_if_process_zero_never_prepares(tmp_path, make_config, monkeypatch):
    monkeypatch.setattr(options, "WAIT_TIMEOUT_SECONDS", 0.1)
    with pytest.raises(DataError, match="waiting for process 0 to prepare synthetic_task"):
        create_datasets(make_config(), str(tmp_path), 1, process_index=1, process_count=2)
