"""Tokenizers: text to token ids and back.

Both tokenizers share the special ids of `flaxformer_lite.special_tokens` (PAD=0, EOS=1,
BOS=2, UNK=3, SEP=4, CLS=5, MASK=6) and the same small interface, the `Tokenizer` protocol:

    encode(text) -> ids        no EOS added; the pipeline appends it (and inserts SEP)
    decode(ids)  -> text       stops at the first EOS, skips PAD, BOS, SEP, CLS and MASK
    vocab_size                 the number of ids; the model's embedding size comes from here

No text encodes to a special id, so data cannot forge one. `decode` leaves SEP out rather
than showing a separator: the decoded prompt of `source SEP target` is the source text as
written, and a completion decodes to exactly the reference text it is compared with.

`ByteTokenizer` needs no training: one id per UTF-8 byte, so any text round-trips exactly, and
ASCII text is modelled one character per token.
`SentencePieceTokenizer` is trained on the training split, once: process 0 trains it and
saves it in the workdir, the other processes (and every resumed run) load that file.
"""

from __future__ import annotations

import io
import os
import pathlib
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

import sentencepiece as spm

from flaxformer_lite.data.options import DataError, wait_for
from flaxformer_lite.special_tokens import (
    BOS_ID,
    EOS_ID,
    NUM_SPECIAL_TOKENS,
    PAD_ID,
    RESERVED_PIECES,
    UNK_ID,
)

REPLACEMENT_CHARACTER = "\ufffd"  # How `decode` shows an id that stands for no text.
SILENT_IDS = frozenset({PAD_ID, BOS_ID, *RESERVED_PIECES})  # Markers that `decode` skips.


class Tokenizer(Protocol):
    """What the pipeline and the trainer need from a tokenizer."""

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...


def _content_ids(ids: Iterable[int]) -> Iterator[int]:
    """The ids up to the first EOS, without the markers of `SILENT_IDS`."""
    for token in ids:
        token = int(token)
        if token == EOS_ID:
            return
        if token not in SILENT_IDS:
            yield token


class ByteTokenizer:
    """One id per UTF-8 byte: byte b has id b + NUM_SPECIAL_TOKENS."""

    vocab_size = NUM_SPECIAL_TOKENS + 256

    def encode(self, text: str) -> list[int]:
        return [byte + NUM_SPECIAL_TOKENS for byte in text.encode("utf-8")]

    def decode(self, ids: Iterable[int]) -> str:
        # UNK and ids past the vocabulary (a model may pad its output layer) stand for no
        # byte; they show as U+FFFD, like bytes that do not form valid UTF-8.
        text = bytearray()
        for token in _content_ids(ids):
            if NUM_SPECIAL_TOKENS <= token < self.vocab_size:
                text.append(token - NUM_SPECIAL_TOKENS)
            else:
                text += REPLACEMENT_CHARACTER.encode("utf-8")
        return text.decode("utf-8", errors="replace")


class SentencePieceTokenizer:
    """A SentencePiece model whose first `NUM_SPECIAL_TOKENS` ids are the special tokens.

    SEP, CLS and MASK are control symbols: reserved ids that no text encodes to and that
    decode to nothing.
    """

    def __init__(self, model_proto: bytes):
        self._processor = spm.SentencePieceProcessor(model_proto=model_proto)
        specials = (
            self._processor.pad_id(),
            self._processor.eos_id(),
            self._processor.bos_id(),
            self._processor.unk_id(),
        )
        if specials != (PAD_ID, EOS_ID, BOS_ID, UNK_ID):
            raise DataError(
                f"SentencePiece model has special ids (pad, eos, bos, unk) = {specials}, not "
                f"{(PAD_ID, EOS_ID, BOS_ID, UNK_ID)}: delete it so that it is trained again."
            )
        reserved = {i: self._processor.id_to_piece(i) for i in RESERVED_PIECES}
        if reserved != RESERVED_PIECES or not all(map(self._processor.is_control, reserved)):
            raise DataError(
                f"SentencePiece model has pieces {reserved} where the control symbols "
                f"{RESERVED_PIECES} belong (a model trained before they were reserved): delete "
                "it so that it is trained again."
            )

    @property
    def vocab_size(self) -> int:
        return self._processor.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self._processor.encode(text)

    def decode(self, ids: Iterable[int]) -> str:
        return self._processor.decode(
            [token if token < self.vocab_size else UNK_ID for token in _content_ids(ids)]
        )


def corpus(pairs: Iterable[tuple[str, str]], max_chars: int) -> Iterator[str]:
    """Sources and targets of `pairs`, in order, until `max_chars` characters are given.

    Both sides go into one corpus: the source and target vocabularies are shared.
    """
    chars = 0
    for pair in pairs:
        for text in pair:
            if chars >= max_chars:
                return
            if text:
                chars += len(text)
                yield text


def train_sentencepiece(texts: Iterable[str], vocab_size: int) -> bytes:
    """Trains a unigram SentencePiece model on `texts` and returns it serialised.

    The options make `decode(encode(text)) == text` for any text: no normalisation, no
    squeezing of spaces, and characters outside the vocabulary fall back to byte pieces
    instead of UNK. `vocab_size` is an upper limit; a small corpus may give fewer pieces.
    """
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts),
            model_writer=model,
            vocab_size=vocab_size,
            model_type="unigram",
            pad_id=PAD_ID,
            eos_id=EOS_ID,
            bos_id=BOS_ID,
            unk_id=UNK_ID,
            control_symbols=list(RESERVED_PIECES.values()),  # ids 4, 5, 6, in that order
            byte_fallback=True,
            character_coverage=1.0,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            hard_vocab_limit=False,
            minloglevel=2,
        )
    except RuntimeError as error:
        raise DataError(
            f"SentencePiece training failed with config.vocab_size={vocab_size} "
            f"({str(error).strip()}); byte fallback needs at least "
            f"{NUM_SPECIAL_TOKENS + 256} plus the number of distinct characters."
        ) from None
    return model.getvalue()


def load_or_train_sentencepiece(
    path: pathlib.Path,
    texts: Callable[[], Iterable[str]],
    vocab_size: int,
    process_index: int,
    timeout_seconds: float | None = None,
) -> SentencePieceTokenizer:
    """The tokenizer saved at `path`, trained there first if it is missing.

    Only process 0 trains, on `texts()`; it writes the model to a temporary file and renames
    it, so `path` never holds half a model. Other processes wait for `path` to appear.
    """
    if not path.exists():
        if process_index == 0:
            model_proto = train_sentencepiece(texts(), vocab_size)
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(path.name + ".partial")
            partial.write_bytes(model_proto)
            os.replace(partial, path)
        else:
            wait_for(path.exists, f"process 0 to train the tokenizer {path}", timeout_seconds)
    return SentencePieceTokenizer(path.read_bytes())
