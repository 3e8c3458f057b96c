"""Tokenizers: exact round-trips on random Unicode, special ids, SentencePiece training."""

import threading
import time

import numpy as np
import pytest

from flaxformer_lite.data import ByteTokenizer, DataError, SentencePieceTokenizer, tokenizers
from flaxformer_lite.special_tokens import BOS_ID, EOS_ID, NUM_SPECIAL_TOKENS, PAD_ID, UNK_ID


def random_unicode(rng: np.random.Generator, count: int, max_length: int = 30) -> list[str]:
    """Strings of random code points from all of Unicode (surrogates excluded), plus spaces."""
    texts = []
    for _ in range(count):
        points = rng.integers(0, 0x110000, size=rng.integers(0, max_length + 1))
        points = [p if not 0xD800 <= p <= 0xDFFF else 0x20 for p in points]
        texts.append("".join(map(chr, points)))
    return texts


def test_byte_tokenizer_round_trips_random_unicode():
    tokenizer = ByteTokenizer()
    for text in random_unicode(np.random.default_rng(0), 500):
        ids = tokenizer.encode(text)
        assert all(NUM_SPECIAL_TOKENS <= i < tokenizer.vocab_size for i in ids)
        assert tokenizer.decode(ids) == text


def test_byte_tokenizer_vocabulary_and_special_ids():
    tokenizer = ByteTokenizer()
    assert tokenizer.vocab_size == NUM_SPECIAL_TOKENS + 256
    assert tokenizer.encode("") == []
    assert EOS_ID not in tokenizer.encode("a\x00b\x01")  # Bytes 0 and 1 are not specials.
    ids = [BOS_ID, *tokenizer.encode("hé"), PAD_ID, *tokenizer.encode("!"), EOS_ID]
    assert tokenizer.decode(ids + tokenizer.encode("ignored after EOS")) == "hé!"
    assert tokenizer.decode(np.array(ids, np.int32)) == "hé!"
    assert tokenizer.decode([UNK_ID, tokenizer.vocab_size + 5]) == "\ufffd\ufffd"


@pytest.fixture(scope="module")
def sentencepiece_model() -> bytes:
    rng = np.random.default_rng(0)
    words = [
        "".join(rng.choice(list("abcdefghijklmnoprstuäöüß"), size=rng.integers(2, 8)))
        for _ in range(300)
    ]
    sentences = [" ".join(rng.choice(words, size=rng.integers(3, 15))) for _ in range(2000)]
    return tokenizers.train_sentencepiece(sentences, vocab_size=600)


def test_sentencepiece_keeps_the_special_ids(sentencepiece_model):
    tokenizer = SentencePieceTokenizer(sentencepiece_model)
    assert 300 < tokenizer.vocab_size <= 600
    text = "ein kleiner test"
    assert tokenizer.decode([BOS_ID, *tokenizer.encode(text), EOS_ID, 7, 8]) == text
    assert tokenizer.decode([*tokenizer.encode(text), PAD_ID, PAD_ID]) == text


def test_sentencepiece_round_trips_random_unicode(sentencepiece_model):
    tokenizer = SentencePieceTokenizer(sentencepiece_model)
    texts = random_unicode(np.random.default_rng(1), 300)
    texts += ["  two  spaces ", "\ttab\nnewline", " leading", "trailing ", "ß ü ö"]
    for text in texts:
        ids = tokenizer.encode(text)
        assert UNK_ID not in ids and PAD_ID not in ids and EOS_ID not in ids
        assert tokenizer.decode(ids) == text


def test_sentencepiece_vocabulary_too_small_names_the_option():
    with pytest.raises(DataError, match="config.vocab_size=10"):
        tokenizers.train_sentencepiece(["some text", "more text"] * 10, vocab_size=10)


def test_corpus_takes_both_sides_until_the_character_budget():
    pairs = [("ab", "cd"), ("", "ef"), ("gh", "ij")]
    assert list(tokenizers.corpus(pairs, max_chars=100)) == ["ab", "cd", "ef", "gh", "ij"]
    assert list(tokenizers.corpus(pairs, max_chars=5)) == ["ab", "cd", "ef"]


def test_sentencepiece_is_trained_once_and_reused(tmp_path):
    path = tmp_path / "spm.model"
    corpus = ["the quick brown fox", "jumps over the lazy dog"] * 50
    first = tokenizers.load_or_train_sentencepiece(path, lambda: corpus, 300, process_index=0)
    saved = path.read_bytes()

    def must_not_train():
        raise AssertionError("retrained although the model was saved")

    again = tokenizers.load_or_train_sentencepiece(path, must_not_train, 300, process_index=0)
    assert path.read_bytes() == saved
    assert again.encode("the lazy fox") == first.encode("the lazy fox")
    assert not list(tmp_path.glob("*.partial"))


def test_other_processes_wait_for_process_zero(tmp_path):
    path = tmp_path / "spm.model"
    model = tokenizers.train_sentencepiece(["wait for me"] * 20, vocab_size=300)
    writer = threading.Timer(1.5, path.write_bytes, args=(model,))
    writer.start()
    start = time.monotonic()
    tokenizer = tokenizers.load_or_train_sentencepiece(
        path, lambda: pytest.fail("process 1 trained"), 300, process_index=1, timeout_seconds=30
    )
    assert time.monotonic() - start >= 1.0
    assert tokenizer.decode(tokenizer.encode("wait for me")) == "wait for me"


def test_waiting_process_gives_up_with_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="process 0 to train the tokenizer"):
        tokenizers.load_or_train_sentencepiece(
            tmp_path / "never.model", list, 300, process_index=1, timeout_seconds=0.1
        )
