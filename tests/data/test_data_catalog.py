"""Catalog datasets: the real TFDS loading code, on mocked records, and its offline error."""

import pytest
import requests
import tensorflow_datasets as tfds
from tensorflow_datasets.core.data_sources.base import BaseDataSource

from flaxformer_lite.data import DataError, catalog, create_datasets, prepared


def rows(data, split):
    """The decoded (source, target) of every real row of `split`'s eval batches."""
    decode = data.tokenizer.decode
    pairs = []
    for batch in data.eval_batches(split):
        inputs = batch["inputs"].reshape(-1, batch["inputs"].shape[-1])
        targets = batch["targets"].reshape(-1, batch["targets"].shape[-1])
        pairs += [(decode(i), decode(t)) for i, t in zip(inputs, targets, strict=True) if t.any()]
    return pairs


TEXT_DATASETS = [name for name, entry in catalog.CATALOG.items() if entry.kind != "image"]


@pytest.mark.parametrize("name", TEXT_DATASETS)
@pytest.mark.parametrize("reverse", [False, True])
def test_catalog_records_become_the_right_pairs(tmp_path, make_config, monkeypatch, name, reverse):
    # tfds' mock binds `__getitem__` but not `__getitems__` to its fake reader: read one by one.
    monkeypatch.setattr(BaseDataSource, "__getitems__", lambda self, keys: [self[k] for k in keys])
    config = make_config(
        dataset=name, data_dir=str(tmp_path / "tfds"), reverse_translation=reverse,
        max_source_length=64, max_target_length=64,
    )  # fmt: skip
    entry = catalog.CATALOG[name]
    with tfds.testing.mock_data(num_examples=12):
        data = create_datasets(config, str(tmp_path), num_local_devices=2)
        split = entry.splits[-1]
        source = tfds.data_source(name, split=split, data_dir=config.data_dir)
        records = [source[i] for i in range(len(source))]
    assert data.eval_splits == entry.splits[1:]
    assert data.length_reports["train"].examples == 12
    text = prepared.as_text
    if entry.kind == "translation":
        first, second = source.dataset_info.supervised_keys
        expected = [(text(r[first]), text(r[second])) for r in records]
        if reverse:
            expected = [(target, source) for source, target in expected]
    elif entry.kind == "classification":
        labels = ["neg", "pos"]
        expected = [(text(r["text"]), labels[int(r["label"])]) for r in records]
    else:  # Language modelling: nothing to condition on.
        expected = [("", p) for r in records for p in catalog.paragraphs(r["text"])]
    assert rows(data, split) == expected


def test_paragraphs_split_a_play_at_blank_lines():
    play = b"First Citizen:\nBefore we proceed.\n\nAll:\nSpeak, speak.\n\n\n\nEnd.\n"
    assert catalog.paragraphs(play) == [
        "First Citizen:\nBefore we proceed.", "All:\nSpeak, speak.", "End.",
    ]  # fmt: skip


def test_unfetchable_dataset_gives_one_line_with_the_offline_recipe(tmp_path, make_config):
    config = make_config(dataset="lm1b", data_dir=str(tmp_path / "tfds"), download=False)
    with pytest.raises(DataError) as error:
        create_datasets(config, str(tmp_path), num_local_devices=1)
    message = str(error.value)
    assert "\n" not in message
    assert "Could not fetch catalog dataset 'lm1b' (config.download=False" in message
    assert "config.manual_dir" in message and "download_and_prepare" in message


def test_download_without_network_gives_one_line(tmp_path, make_config, monkeypatch):
    def no_network(*args, **kwargs):
        raise requests.ConnectionError("Failed to resolve 'raw.githubusercontent.com'")

    monkeypatch.setattr(requests.Session, "get", no_network)
    config = make_config(dataset="tiny_shakespeare", data_dir=str(tmp_path / "tfds"))
    with pytest.raises(DataError) as error:
        create_datasets(config, str(tmp_path), num_local_devices=1)
    message = str(error.value)
    assert "\n" not in message
    assert "'tiny_shakespeare' (ConnectionError: Failed to resolve" in message
    assert "config.manual_dir" in message
    assert not list((tmp_path / "tfds").glob("tiny_shakespeare/*/*.array_record*"))


def test_an_image_dataset_for_a_text_model_is_named_in_one_line(tmp_path, make_config, monkeypatch):
    monkeypatch.setattr(BaseDataSource, "__getitems__", lambda self, keys: [self[k] for k in keys])
    config = make_config(dataset="mnist", data_dir=str(tmp_path / "tfds"))
    with tfds.testing.mock_data(num_examples=4), pytest.raises(DataError, match="model='vit'"):
        create_datasets(config, str(tmp_path), num_local_devices=2)
