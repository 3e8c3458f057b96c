"""Your own files: every format reads right, is prepared once, and bad files are named."""

import pytest

from flaxformer_lite.data import DataError, create_datasets, local_files


def write(path, text: str | bytes) -> str:
    if isinstance(text, str):
        text = text.encode("utf-8")
    path.write_bytes(text)
    return str(path)


def decoded_eval(data, split="validation"):
    decode = data.tokenizer.decode
    return [
        (decode(row_inputs), decode(row_targets))
        for batch in data.eval_batches(split)
        for row_inputs, row_targets in zip(
            batch["inputs"].reshape(-1, batch["inputs"].shape[-1]),
            batch["targets"].reshape(-1, batch["targets"].shape[-1]),
            strict=True,
        )
        if row_inputs.any()
    ]


def test_tsv_pairs_are_read_in_order(tmp_path, make_config):
    train = write(tmp_path / "train.tsv", "".join(f"src {i}\ttgt {i}\n" for i in range(40)))
    valid = write(tmp_path / "valid.tsv", "hallo welt\thello world\r\n\nzwei\ttwo\n")
    data = create_datasets(
        make_config(dataset="tsv", train_file=train, eval_file=valid), str(tmp_path), 1
    )
    assert data.eval_splits == ("validation",)
    assert decoded_eval(data) == [("hallo welt", "hello world"), ("zwei", "two")]
    assert data.length_reports["train"].examples == 40


def test_aligned_files_pair_line_by_line(tmp_path, make_config):
    source = write(tmp_path / "train.de", "eins\nzwei\ndrei\n")
    target = write(tmp_path / "train.en", "one\ntwo\nthree\n")
    config = make_config(
        dataset="aligned",
        source_file=source,
        target_file=target,
        eval_source_file=source,
        eval_target_file=target,
    )
    data = create_datasets(config, str(tmp_path), 1)
    assert decoded_eval(data) == [("eins", "one"), ("zwei", "two"), ("drei", "three")]


def test_plain_text_becomes_targets_with_empty_sources(tmp_path, make_config):
    text = write(tmp_path / "lm.txt", "To be, or not to be\n\nthat is the question\n")
    data = create_datasets(
        make_config(dataset="text", train_file=text, eval_file=text, max_target_length=32),
        str(tmp_path),
        1,
    )
    assert decoded_eval(data) == [("", "To be, or not to be"), ("", "that is the question")]


def test_classification_labels_become_targets(tmp_path, make_config):
    tsv = write(tmp_path / "reviews.tsv", "pos\tgreat film\nneg\tawful\n")
    data = create_datasets(
        make_config(dataset="classification", train_file=tsv, eval_file=tsv), str(tmp_path), 1
    )
    assert decoded_eval(data) == [("great film", "pos"), ("awful", "neg")]


def test_prepared_files_are_reused_until_they_change(tmp_path, make_config, monkeypatch):
    train = write(tmp_path / "train.tsv", "a\tb\nc\td\n")
    config = make_config(dataset="tsv", train_file=train)
    create_datasets(config, str(tmp_path), 1)

    def must_not_read(*args):
        raise AssertionError("the prepared dataset was not reused")

    monkeypatch.setattr(local_files.LocalFiles, "_generate_examples", must_not_read)
    create_datasets(config, str(tmp_path), 1)  # Reads the cache, not the file.
    monkeypatch.undo()
    write(tmp_path / "train.tsv", "a\tb\nc\td\ne\tf\n")
    data = create_datasets(config, str(tmp_path), 1)
    assert data.length_reports["train"].examples == 3
    assert len(list((tmp_path / "data" / "local_files").iterdir())) == 2


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"fine\tline\nno tab here\n", r"train\.tsv:2: found 0 TABs"),
        (b"one\ttoo\tmany\n", r"train\.tsv:1: found 2 TABs"),
        (b"ok\tok\n\xff\xfebad\tbytes\n", r"train\.tsv:2: byte 1 \(b'\\xff'\) is not UTF-8"),
    ],
)
def test_strict_data_stops_on_a_malformed_line_naming_file_and_line(
    tmp_path, make_config, content, message
):
    train = write(tmp_path / "train.tsv", content)
    config = make_config(dataset="tsv", train_file=train, strict_data=True)
    with pytest.raises(DataError, match=message + r".*config\.strict_data=False"):
        create_datasets(config, str(tmp_path), 1)
    assert not list((tmp_path / "data" / "local_files").glob("*/*/*.array_record*"))


def test_only_blank_lines_is_an_error(tmp_path, make_config):
    train = write(tmp_path / "train.tsv", b"\n\n  \n")
    with pytest.raises(DataError, match=r"train\.tsv: only blank lines"):
        create_datasets(make_config(dataset="tsv", train_file=train), str(tmp_path), 1)


def test_malformed_lines_are_skipped_counted_and_named(tmp_path, make_config):
    lines = [b"a\tb", b"no tab", b"c\td", b"x\ty\tz", b"\xffbad\tbytes", b"e\tf"]
    lines += [b"more\ttabs\there"] * 4 + [b"g\th"]
    train = write(tmp_path / "train.tsv", b"\n".join(lines) + b"\n")
    data = create_datasets(
        make_config(dataset="tsv", train_file=train, eval_file=train), str(tmp_path), 1
    )
    # Never mis-split: only the lines with exactly one TAB become examples, in order.
    assert decoded_eval(data) == [("a", "b"), ("c", "d"), ("e", "f"), ("g", "h")]
    assert data.length_reports["train"].examples == 4
    data_line = data.info.splitlines()[0]
    # Train and eval read the same file: 7 malformed lines each, the first 5 named.
    assert "skipped 14 malformed lines (" in data_line and "9 more" in data_line
    for where in ("train.tsv:2: found 0 TABs", "train.tsv:4: found 2 TABs", "train.tsv:5: byte 1"):
        assert where in data_line
    assert "config.strict_data=True" in data_line


def test_classification_files_skip_malformed_lines_too(tmp_path, make_config):
    tsv = write(tmp_path / "reviews.tsv", "pos\tgreat\nno label\nneg\tbad\tpos\nneg\tawful\n")
    data = create_datasets(
        make_config(dataset="classification", train_file=tsv, eval_file=tsv), str(tmp_path), 1
    )
    assert decoded_eval(data) == [("great", "pos"), ("awful", "neg")]
    assert "reviews.tsv:2: found 0 TABs" in data.info


def test_aligned_files_drop_a_malformed_pair_and_stay_aligned(tmp_path, make_config):
    source = write(tmp_path / "s.txt", b"eins\n\xffzwei\ndrei\n")
    target = write(tmp_path / "t.txt", b"one\ntwo\nthree\n")
    config = make_config(
        dataset="aligned",
        source_file=source,
        target_file=target,
        eval_source_file=source,
        eval_target_file=target,
    )
    data = create_datasets(config, str(tmp_path), 1)
    assert decoded_eval(data) == [("eins", "one"), ("drei", "three")]
    assert "s.txt:2 / " in data.info and "t.txt:2: byte 1" in data.info
    config.strict_data = True
    with pytest.raises(DataError, match=r"s\.txt:2 / .*t\.txt:2: byte 1"):
        create_datasets(config, str(tmp_path), 1)


def test_missing_and_empty_files_name_the_option(tmp_path, make_config):
    good = write(tmp_path / "good.tsv", "a\tb\n")
    empty = write(tmp_path / "empty.tsv", "")
    missing = str(tmp_path / "nowhere.tsv")
    cases = [
        (dict(dataset="tsv", train_file=missing), r"config\.train_file='.*nowhere\.tsv': no such"),
        (dict(dataset="tsv", train_file=good, eval_file=empty), r"config\.eval_file=.*is empty"),
        (dict(dataset="text"), r"config\.train_file is not set"),
        (dict(dataset="aligned", source_file=good), r"config\.target_file is not set"),
    ]
    for overrides, message in cases:
        with pytest.raises(DataError, match=message):
            create_datasets(make_config(**overrides), str(tmp_path), 1)


def test_aligned_files_of_different_lengths_name_the_longer_file(tmp_path, make_config):
    source = write(tmp_path / "s.txt", "a\nb\nc\n")
    target = write(tmp_path / "t.txt", "x\ny\n")
    with pytest.raises(DataError, match=r"s\.txt:3: no matching line"):
        create_datasets(
            make_config(dataset="aligned", source_file=source, target_file=target),
            str(tmp_path),
            1,
        )
