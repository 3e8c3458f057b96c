"""Language-model data: prompt -> completion rows, text windows, bytes, the new special ids."""

import io

import grain
import numpy as np
import pytest
import sentencepiece as spm

from flaxformer_lite.data import ByteTokenizer, DataError, create_datasets, pipeline, tokenizers
from flaxformer_lite.data.formats import data_format, encode_prompt_completion
from flaxformer_lite.special_tokens import CLS_ID, EOS_ID, MASK_ID, PAD_ID, SEP_ID

LM_FIELDS = {"targets", "targets_segmentation", "targets_position", "loss_weights"}
TRAIN_CHARS, HELD_OUT_CHARS = "abcdefgh \n", "XYZ"  # Disjoint: a token tells its split.


def flat(batch):
    return {key: value.reshape(-1, value.shape[-1]) for key, value in batch.items()}


def check_prompt_completion_row(tokenizer, row, *, max_examples: int):
    """Each example of a row is `s SEP reversed(s) EOS`, weighted 0 up to SEP and 1 after."""
    numbers = np.unique(row["targets_segmentation"][row["targets_segmentation"] > 0])
    assert 1 <= len(numbers) <= max_examples
    for number in numbers:
        in_example = row["targets_segmentation"] == number
        ids, weights = row["targets"][in_example], row["loss_weights"][in_example]
        assert row["targets_position"][in_example].tolist() == list(range(len(ids)))
        (sep,) = np.flatnonzero(ids == SEP_ID)
        assert ids[-1] == EOS_ID
        assert weights.tolist() == [0.0] * (sep + 1) + [1.0] * (len(ids) - sep - 1)
        source, target = tokenizer.decode(ids[:sep]), tokenizer.decode(ids[sep + 1 :])
        assert target == source[::-1] and source
    padding = row["targets_segmentation"] == 0
    assert not row["targets"][padding].any() and not row["loss_weights"][padding].any()


def test_prompt_completion_rows_weigh_only_the_completion(reverse_workdir, make_config):
    config = make_config(
        model="decoder_only", max_target_length=64, per_device_batch_size=3,
        per_device_eval_batch_size=4,
    )  # fmt: skip
    data = create_datasets(config, reverse_workdir, num_local_devices=2)
    assert data.data_format == "prompt_completion" and data.eval_bytes == {}
    train = next(data.train_iter)
    assert set(train) == LM_FIELDS
    assert train["loss_weights"].dtype == np.float32 and train["targets"].dtype == np.int32
    assert all(value.shape == (2, 3, 64) for value in train.values())
    train_rows = flat(train)
    for index in range(6):  # Packed: several examples a row, weights aligned with each.
        row = {key: value[index] for key, value in train_rows.items()}
        check_prompt_completion_row(data.tokenizer, row, max_examples=6)
    assert (train_rows["targets_segmentation"].max(axis=1) >= 2).any()

    for batch in data.eval_batches("validation"):
        dtypes = {key: value.dtype for key, value in batch.items()}
        assert dtypes == {key: train[key].dtype for key in LM_FIELDS}
    references = data.reference_texts("validation")
    rows = [
        {key: value[index] for key, value in flat(batch).items()}
        for batch in data.eval_batches("validation")
        for index in range(8)
    ]
    assert len(references) == 50 and len(rows) == 56  # 7 batches of 2 x 4 rows.
    for row, reference in zip(rows, references, strict=False):
        check_prompt_completion_row(data.tokenizer, row, max_examples=1)
        completion = row["targets"][np.flatnonzero(row["targets"] == SEP_ID)[0] + 1 :]
        assert data.tokenizer.decode(completion) == reference
    assert not any(row["targets"].any() for row in rows[50:])


def test_prompt_completion_encoding_and_truncation_keep_weights_aligned():
    tokenizer = ByteTokenizer()
    example = encode_prompt_completion(tokenizer, ("abc", "xy"))
    ids = [*tokenizer.encode("abc"), SEP_ID, *tokenizer.encode("xy"), EOS_ID]
    assert example["targets"].tolist() == ids
    assert example["loss_weights"].tolist() == [0, 0, 0, 0, 1, 1, 1]
    cut = pipeline.truncate({"targets": 6, "loss_weights": 6}, example)
    assert cut["targets"].tolist() == [*ids[:5], EOS_ID]
    assert cut["loss_weights"].tolist() == [0, 0, 0, 0, 1, 1]


def text_file(tmp_path, train_length=900, held_out_length=100, seed=0):
    """A file whose first 90% uses TRAIN_CHARS and whose last 10% uses HELD_OUT_CHARS."""
    rng = np.random.default_rng(seed)
    text = "".join(rng.choice(list(TRAIN_CHARS), train_length))
    text += "".join(rng.choice(list(HELD_OUT_CHARS), held_out_length))
    path = tmp_path / "corpus.txt"
    path.write_text(text)
    return path, text


def text_config(make_config, path, **overrides):
    return make_config(
        model="decoder_only", dataset="text", train_file=str(path), max_target_length=8,
        per_device_batch_size=4, per_device_eval_batch_size=4, **overrides,
    )  # fmt: skip


def test_text_windows_cover_the_train_split_and_never_the_held_out_split(tmp_path, make_config):
    path, text = text_file(tmp_path)
    data = create_datasets(text_config(make_config, path), str(tmp_path), num_local_devices=1)
    assert data.data_format == "text"
    train_text, held_out = text[:900], text[900:]
    epoch = (900 - 8 + 1) // 4  # Batches that start every window once.
    seen = np.zeros(900, bool)
    for _ in range(epoch):
        batch = next(data.train_iter)
        assert set(batch) == LM_FIELDS
        for window, weights in zip(
            flat(batch)["targets"], flat(batch)["loss_weights"], strict=True
        ):
            chars = data.tokenizer.decode(window)
            assert len(chars) == 8 and set(chars) <= set(TRAIN_CHARS)
            assert weights.tolist() == [1.0] * 8
            start = train_text.find(chars)
            assert start >= 0  # A contiguous piece of the train split.
            seen[start : start + 8] = True
    assert seen.all()

    tiles = [
        row
        for batch in data.eval_batches("validation")
        for row in zip(*flat(batch).values(), strict=True)
    ]
    fields = list(next(data.eval_batches("validation")))
    rows = [dict(zip(fields, row, strict=True)) for row in tiles]
    real = [row["targets"][row["targets_segmentation"] > 0] for row in rows]
    assert data.tokenizer.decode(np.concatenate(real)) == held_out  # Each token once, in order.
    assert all(np.array_equal(row["loss_weights"] > 0, row["targets"] != PAD_ID) for row in rows)
    assert data.eval_bytes == {"validation": 100}
    assert data.eval_splits == ("validation",)


def test_an_eval_file_is_the_held_out_split_and_bytes_count_utf8(tmp_path, make_config):
    path, text = text_file(tmp_path)
    eval_path = tmp_path / "held_out.txt"
    eval_path.write_text("héllo wörld\n")  # 12 characters, 14 bytes.
    config = text_config(make_config, path, eval_file=str(eval_path))
    data = create_datasets(config, str(tmp_path), num_local_devices=1)
    assert data.eval_bytes == {"validation": 14}
    windows = [flat(batch)["targets"] for batch in data.eval_batches("validation")]
    assert data.tokenizer.decode(np.concatenate(windows).ravel()) == "héllo wörld\n"
    for _ in range(20):  # Now all of the train file trains, its last 10% included.
        batch = next(data.train_iter)
        assert all(data.tokenizer.decode(w) in text for w in flat(batch)["targets"])


def test_an_empty_text_file_is_one_line(tmp_path, make_config):
    path = tmp_path / "empty.txt"
    path.write_text("")
    with pytest.raises(DataError, match=r"config.train_file=.*empty") as error:
        create_datasets(text_config(make_config, path), str(tmp_path), num_local_devices=1)
    assert "\n" not in str(error.value)


def test_a_text_shorter_than_a_window_is_one_line(tmp_path, make_config):
    path, _ = text_file(tmp_path, train_length=5, held_out_length=1)
    with pytest.raises(DataError, match="max_target_length=8") as error:
        create_datasets(text_config(make_config, path), str(tmp_path), num_local_devices=1)
    assert "\n" not in str(error.value)


def test_the_text_iterator_resumes_with_the_same_next_batch(tmp_path, make_config):
    path, _ = text_file(tmp_path)
    config = text_config(make_config, path)
    data = create_datasets(config, str(tmp_path), num_local_devices=2)
    for _ in range(5):
        next(data.train_iter)
    state = data.train_iter.get_state()
    expected = [next(data.train_iter) for _ in range(3)]
    resumed = create_datasets(config, str(tmp_path), num_local_devices=2)
    assert isinstance(resumed.train_iter, grain.DatasetIterator)
    resumed.train_iter.set_state(state)
    for batch in expected:
        again = next(resumed.train_iter)
        assert all(np.array_equal(again[key], batch[key]) for key in batch)
    fresh = next(create_datasets(config, str(tmp_path), num_local_devices=2).train_iter)
    assert not np.array_equal(fresh["targets"], expected[0]["targets"])


def test_the_model_picks_the_data_format(make_options):
    assert data_format(make_options()).name == "pairs"
    assert data_format(make_options(dataset="text")).name == "pairs"
    assert data_format(make_options(model="decoder_only")).name == "prompt_completion"
    assert (
        data_format(make_options(model="decoder_only", dataset="tsv")).name == "prompt_completion"
    )
    assert data_format(make_options(model="decoder_only", dataset="lm1b")).name == "text"
    with pytest.raises(DataError, match="config.model='bert_ish'.*encoder_decoder"):
        data_format(make_options(model="bert_ish"))


def test_special_ids_round_trip_in_the_byte_tokenizer():
    tokenizer = ByteTokenizer()
    for text in ("", "\x00\x04\x05\x06", "<sep><cls><mask>", "héllo"):
        ids = tokenizer.encode(text)
        assert not {SEP_ID, CLS_ID, MASK_ID} & set(ids)  # No text forges a special id.
        assert tokenizer.decode(ids) == text
    row = [*tokenizer.encode("ab"), SEP_ID, *tokenizer.encode("c"), CLS_ID, MASK_ID, EOS_ID]
    assert tokenizer.decode(row) == "abc"  # Markers decode to nothing.


def test_special_ids_round_trip_in_sentencepiece():
    corpus = ["the quick brown fox <sep> jumps", "over the lazy dog <mask>"] * 50
    model = tokenizers.train_sentencepiece(corpus, vocab_size=300)
    processor = spm.SentencePieceProcessor(model_proto=model)
    pieces = {processor.id_to_piece(i): i for i in (SEP_ID, CLS_ID, MASK_ID)}
    assert pieces == {"<sep>": SEP_ID, "<cls>": CLS_ID, "<mask>": MASK_ID}
    tokenizer = tokenizers.SentencePieceTokenizer(model)
    for text in corpus[:2] + ["<cls>", "\x04"]:
        ids = tokenizer.encode(text)
        assert not {SEP_ID, CLS_ID, MASK_ID} & set(ids)
        assert tokenizer.decode(ids) == text
    fox, dog = tokenizer.encode("fox"), tokenizer.encode("dog")
    assert tokenizer.decode([*fox, SEP_ID, *dog, MASK_ID, EOS_ID]) == tokenizer.decode(fox + dog)


def test_a_sentencepiece_model_without_the_reserved_pieces_is_refused():
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(["old model text"] * 50), model_writer=proto, vocab_size=40,
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, hard_vocab_limit=False, minloglevel=2,
    )  # fmt: skip
    with pytest.raises(DataError, match="control symbols.*trained again"):
        tokenizers.SentencePieceTokenizer(proto.getvalue())
