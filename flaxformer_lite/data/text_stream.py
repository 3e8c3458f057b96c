"""Plain text as one stream of tokens, for a language model: nanoGPT-style windows.

A stream dataset is one long text per split: `dataset="text"` reads `train_file` (held out:
`eval_file`, or else the LAST `HELD_OUT_FRACTION` of the train file's characters, so the
held-out text is never trained on) and `tiny_shakespeare` comes from the TFDS catalog.
Each split is tokenised whole into one int32 array; the byte tokenizer makes each ASCII
character one token.

Training rows are windows of `max_target_length` consecutive tokens of the train split,
starting at every possible offset once per epoch, in a seeded order that grain reshuffles
each epoch; the grain iterator saves its position, so a resumed run reads the same next
windows. Every token of a window counts in the loss.

Evaluation rows tile a held-out split: window k holds tokens [k L, (k + 1) L), the last one
padded, so every held-out token is predicted exactly once. The first token of each window
is predicted from BOS alone, without the text before it (the model restarts at BOS each
row); it still counts, so the loss is a slight overestimate of what a sliding context would
give. `held_out_bytes` is the number of UTF-8 bytes a split covers: the trainer's bits per
byte is nll_sum / ln 2 / bytes.
"""

from __future__ import annotations

import grain
import numpy as np

from flaxformer_lite.data import catalog, local_files, prepared
from flaxformer_lite.data.formats import Example
from flaxformer_lite.data.options import DataError, DataOptions
from flaxformer_lite.data.pipeline import (
    HostLayout,
    batch_and_prefetch,
    host_rows,
    shuffled_epochs,
)
from flaxformer_lite.data.tokenizers import ByteTokenizer, Tokenizer
from flaxformer_lite.special_tokens import NUM_SPECIAL_TOKENS

STREAM_DATASETS = ("text", "tiny_shakespeare")
HELD_OUT_FRACTION = 0.1  # Of the train file, when no eval_file is given.
ENCODE_CHUNK_LINES = 10_000  # SentencePiece encodes this many lines per call.


def read_splits(options: DataOptions, process_index: int) -> tuple[str, dict[str, str]]:
    """A description for the log, and the whole text of every split."""
    if options.dataset == "tiny_shakespeare":
        sources, info = catalog.fetch(options.dataset, options, process_index)
        texts = {
            split: "".join(prepared.as_text(record["text"]) for record in records)
            for split, records in sources.items()
        }
        return f"tiny_shakespeare: tfds catalog, prepared in {info.data_dir}", texts
    train_path = local_files.checked_path("train_file", options.train_file, "text")
    text = read_text("train_file", train_path)
    if options.eval_file is not None:
        eval_path = local_files.checked_path("eval_file", options.eval_file, "text")
        return f"text: train {train_path}, validation {eval_path}", {
            "train": text,
            "validation": read_text("eval_file", eval_path),
        }
    cut = round(len(text) * (1 - HELD_OUT_FRACTION))
    description = (
        f"text: {train_path}; its first {cut:,} characters train, the last {len(text) - cut:,} "
        "are held out (validation)"
    )
    return description, {"train": text[:cut], "validation": text[cut:]}


def read_text(option: str, path: str) -> str:
    """The whole file as text; a file that is not UTF-8 is a `DataError` naming the option."""
    with open(path, "rb") as file:
        raw = file.read()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(
            f"config.{option}={path!r}: byte {error.start + 1} is not UTF-8; save the file "
            "as UTF-8 text."
        ) from None


def tokenize(tokenizer: Tokenizer, text: str) -> np.ndarray:
    """The whole text as one int32 array of token ids, without EOS. [n]"""
    if isinstance(tokenizer, ByteTokenizer):  # The same ids, a thousand times faster.
        return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32) + NUM_SPECIAL_TOKENS
    # Lines keep their line breaks; the tokenizers keep every space, so the pieces of the
    # parts concatenate to a tokenisation of the whole.
    lines = text.splitlines(keepends=True)
    chunks = [
        tokenizer.encode("".join(lines[start : start + ENCODE_CHUNK_LINES]))
        for start in range(0, len(lines), ENCODE_CHUNK_LINES)
    ]
    return np.array([token for chunk in chunks for token in chunk], np.int32)


def window_row(tokens: np.ndarray) -> dict[str, np.ndarray]:
    """A full window of L tokens as a row: one example, every token weighted 1. [L]"""
    length = len(tokens)
    return {
        "targets": tokens,
        "targets_segmentation": np.ones(length, np.int32),
        "targets_position": np.arange(length, dtype=np.int32),
        "loss_weights": np.ones(length, np.float32),
    }


class WindowAt(grain.transforms.Map):
    """A start offset -> the row of the `length` tokens from there."""

    def __init__(self, tokens: np.ndarray, length: int):
        self._tokens = tokens
        self._length = length

    def map(self, offset: int) -> dict[str, np.ndarray]:
        return window_row(self._tokens[offset : offset + self._length])


def train_dataset(
    tokens: np.ndarray, options: DataOptions, layout: HostLayout
) -> grain.IterDataset:
    """Endless batches of windows at shuffled offsets of `tokens`, this host's share of them."""
    length = options.max_target_length
    if len(tokens) < length:
        raise DataError(
            f"The train split has {len(tokens)} tokens, fewer than one window of "
            f"config.max_target_length={length}: lower it, or train on more text."
        )
    offsets = shuffled_epochs(range(len(tokens) - length + 1), options.seed)
    windows = host_rows(offsets, options, layout).map(WindowAt(tokens, length))
    return batch_and_prefetch(windows.to_iter_dataset(), options, layout)


def eval_examples(tokens: np.ndarray, length: int) -> list[Example]:
    """Windows tiling `tokens`, the last one shorter: each token in exactly one window."""
    return [
        {
            "targets": tokens[start : start + length],
            "loss_weights": np.ones(len(tokens[start : start + length]), np.float32),
        }
        for start in range(0, len(tokens), length)
    ]
