"""The synthetic tasks: right answers, deterministic per seed, held-out splits kept apart."""

import ml_collections
import pytest
import tensorflow_datasets as tfds

from configs import default
from flaxformer_lite.data import DataError, DataOptions, synthetic

ALPHABET = synthetic.ALPHABET


def data_options(**overrides) -> DataOptions:
    """The experiment defaults with `overrides`, as the data pipeline reads them."""
    config = ml_collections.ConfigDict({**default.get_config().to_dict(), **overrides})
    return DataOptions.from_config(config)


def splits_for(**options) -> dict[str, list[tuple[str, str]]]:
    counts = dict(num_train_examples=2000, num_eval_examples=200)
    return synthetic.generate_splits(
        synthetic.builder_config(data_options(**{**counts, **options}))
    )


@pytest.mark.parametrize("task", synthetic.TASKS)
def test_same_seed_same_data_other_seed_other_data(task):
    first = splits_for(dataset=task, data_seed=3)
    assert splits_for(dataset=task, data_seed=3) == first
    other = splits_for(dataset=task, data_seed=4)
    for split in synthetic.SPLITS:
        assert other[split] != first[split]


def test_tasks_compute_the_right_targets():
    for source, target in splits_for(dataset="copy")["train"]:
        assert target == source
    for source, target in splits_for(dataset="reverse")["train"]:
        assert target == source[::-1]
    for source, target in splits_for(dataset="sort", synthetic_num_symbols=40)["train"]:
        assert target == "".join(sorted(source, key=ALPHABET.index))
    for base in (10, 16, 2):
        for source, target in splits_for(dataset="addition", synthetic_num_symbols=base)["train"]:
            left, right = source.split("+")
            assert int(target, base) == int(left, base) + int(right, base)
            assert target == "0" or not target.startswith("0")


def test_symbols_and_lengths_follow_the_options():
    splits = splits_for(dataset="reverse", synthetic_num_symbols=5, synthetic_min_length=3,
                        synthetic_max_length=7)  # fmt: skip
    for split in ("train", "validation", "test"):
        assert {len(source) for source, _ in splits[split]} == set(range(3, 8))
    assert {len(source) for source, _ in splits["test_long"]} == set(range(8, 15))
    assert set("".join(source for source, _ in splits["train"])) == set(ALPHABET[:5])
    assert {split: len(examples) for split, examples in splits.items()} == {
        "train": 2000, "validation": 200, "test": 200, "test_long": 200,
    }  # fmt: skip


def test_addition_lengths_count_digits_of_each_addend():
    for source, _ in splits_for(dataset="addition", synthetic_min_length=2,
                                synthetic_max_length=3)["test"]:  # fmt: skip
        assert all(2 <= len(addend) <= 3 for addend in source.split("+"))


def test_held_out_inputs_never_appear_in_training():
    # Three symbols of length 3..5 make only 351 inputs, so collisions would be common.
    splits = splits_for(dataset="copy", synthetic_num_symbols=3, synthetic_min_length=3,
                        synthetic_max_length=5, num_eval_examples=40)  # fmt: skip
    train = {source for source, _ in splits["train"]}
    validation = {source for source, _ in splits["validation"]}
    test = {source for source, _ in splits["test"]}
    assert not train & validation and not train & test and not validation & test


def test_too_few_distinct_inputs_is_an_error():
    with pytest.raises(DataError, match="too few distinct inputs"):
        splits_for(dataset="copy", synthetic_num_symbols=2, synthetic_min_length=1,
                   synthetic_max_length=2, num_eval_examples=100)  # fmt: skip


def test_prepared_dataset_holds_the_generated_examples(tmp_path):
    options = data_options(dataset="sort", num_train_examples=100, num_eval_examples=20)
    config = synthetic.builder_config(options)
    sources = tfds.data_source(
        "synthetic_task",
        data_dir=str(tmp_path),
        builder_kwargs={"config": config, "file_format": "array_record"},
    )
    expected = synthetic.generate_splits(config)
    assert set(sources) == set(synthetic.SPLITS)
    for split, source in sources.items():
        read = sorted((r["source"].decode(), r["target"].decode()) for r in source)
        assert read == sorted(expected[split])
    assert [len(sources[s]) for s in ("train", "validation", "test", "test_long")] == [
        100,
        20,
        20,
        20,
    ]
