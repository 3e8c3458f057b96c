"""`create_datasets` end to end: the trainer's contract, resuming, and the tokenizer it picks."""

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest
from absl import flags

from flaxformer_lite.data import create_datasets, pipeline, tokenizers
from flaxformer_lite.special_tokens import BOS_ID, EOS_ID, NUM_SPECIAL_TOKENS, PAD_ID

KEYS = {
    f"{key}{suffix}"
    for key in ("inputs", "targets")
    for suffix in ("", "_segmentation", "_position")
}


def check_sequences(batch, length: int):
    """Every sequence of a batch ends in EOS, holds no BOS, and is followed by PAD only."""
    for key in ("inputs", "targets"):
        ids = batch[key].reshape(-1, length)
        segmentation = batch[f"{key}_segmentation"].reshape(-1, length)
        assert not (ids == BOS_ID).any()
        assert np.array_equal(ids == PAD_ID, segmentation == 0)
        for row, segments in zip(ids, segmentation, strict=True):
            for number in np.unique(segments[segments > 0]):
                sequence = row[segments == number]
                assert sequence[-1] == EOS_ID and EOS_ID not in sequence[:-1]


def test_batches_follow_the_trainer_contract(reverse_workdir, make_config):
    config = make_config(
        per_device_batch_size=3,
        per_device_eval_batch_size=5,
        max_source_length=32,
        max_target_length=32,
    )
    data = create_datasets(config, reverse_workdir, num_local_devices=2)
    assert data.tokenizer.vocab_size == NUM_SPECIAL_TOKENS + 256
    batch = next(data.train_iter)
    first_batch_tokens = pipeline.real_tokens(batch)  # The info line peeked at this batch.
    assert set(batch) == KEYS
    for value in batch.values():
        assert value.dtype == np.int32 and value.shape == (2, 3, 32)
    check_sequences(batch, 32)
    eval_batches = list(data.eval_batches("test"))
    assert len(eval_batches) == 5  # 50 examples in batches of 2 x 5.
    for batch in eval_batches:
        assert set(batch) == KEYS
        assert all(value.shape == (2, 5, 32) for value in batch.values())
        check_sequences(batch, 32)
        for inputs, targets in zip(batch["inputs"][0], batch["targets"][0], strict=True):
            source, target = data.tokenizer.decode(inputs), data.tokenizer.decode(targets)
            assert target == source[::-1] and len(source) >= 4
    assert data.num_eval_examples("test") == 50
    assert (
        list(data.eval_batches("test"))[0]["inputs"].tolist() == eval_batches[0]["inputs"].tolist()
    )
    assert "reverse: 10 symbols, lengths 4..12" in data.info
    assert "test_long: 50 examples, 0 over-long (cut for the model" in data.info
    source_tokens, target_tokens = first_batch_tokens
    assert f"source {source_tokens:,} of {2 * 3 * 32:,} slots" in data.info
    assert f"target {target_tokens:,} of {2 * 3 * 32:,}" in data.info


def test_length_generalisation_split_is_longer_and_counted(reverse_workdir, make_config):
    data = create_datasets(make_config(max_source_length=14), reverse_workdir, 1)
    report = data.length_reports["test_long"]
    assert report.examples == 50 and 0 < report.overlong < 50  # 13..24 symbols + EOS.
    assert data.num_eval_examples("test_long") == report.kept == 50  # Evaluation drops none.
    assert data.length_reports["train"].overlong == 0


def test_orbax_restores_the_iterator_to_the_next_batch(tmp_path, reverse_workdir, make_config):
    config = make_config()
    data = create_datasets(config, reverse_workdir, num_local_devices=2)
    for _ in range(30):  # 30 packed batches: into the second epoch of 300 examples.
        next(data.train_iter)
    manager = ocp.CheckpointManager(tmp_path / "checkpoints")
    manager.save(30, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(data.train_iter)))
    manager.wait_until_finished()
    expected = [next(data.train_iter) for _ in range(4)]

    resumed = create_datasets(config, reverse_workdir, num_local_devices=2)
    args = ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(resumed.train_iter))
    manager.restore(manager.latest_step(), args=args)
    for want in expected:
        got = next(resumed.train_iter)
        for key in KEYS:
            np.testing.assert_array_equal(got[key], want[key])
    manager.close()


def test_worker_processes_give_the_same_batches(reverse_workdir, make_config):
    flags.FLAGS.mark_as_parsed()  # grain's workers read absl flags; absl.app parses them.
    in_process = create_datasets(make_config(), reverse_workdir, 1).train_iter
    with_worker = create_datasets(make_config(grain_worker_count=1), reverse_workdir, 1).train_iter
    try:
        for _ in range(3):
            want, got = next(in_process), next(with_worker)
            for key in KEYS:
                np.testing.assert_array_equal(got[key], want[key])
    finally:
        with_worker.close()


def test_train_length_count_is_kept_for_the_resumed_run(tmp_path, make_config, monkeypatch):
    create_datasets(make_config(), str(tmp_path), 1)
    monkeypatch.setattr(pipeline, "scan_lengths", lambda *args: pytest.fail("counted again"))
    data = create_datasets(make_config(), str(tmp_path), 1)
    assert data.length_reports["train"].examples == 300


def test_sentencepiece_is_trained_on_train_and_reused_on_resume(tmp_path, make_config, monkeypatch):
    config = make_config(tokenizer="sentencepiece", vocab_size=300)
    data = create_datasets(config, str(tmp_path), 1)
    models = list(tmp_path.glob("sentencepiece_*_300.model"))
    assert len(models) == 1
    assert 260 < data.tokenizer.vocab_size <= 300
    batch = next(data.eval_batches("validation"))
    for inputs, targets in zip(batch["inputs"][0], batch["targets"][0], strict=True):
        assert data.tokenizer.decode(targets) == data.tokenizer.decode(inputs)[::-1]

    monkeypatch.setattr(tokenizers, "train_sentencepiece", lambda *a: pytest.fail("retrained"))
    resumed = create_datasets(config, str(tmp_path), 1)
    assert resumed.tokenizer.vocab_size == data.tokenizer.vocab_size
    np.testing.assert_array_equal(
        next(resumed.train_iter)["inputs"], next(data.train_iter)["inputs"]
    )
