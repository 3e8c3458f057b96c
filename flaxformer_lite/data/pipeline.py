"""The grain pipeline: text pairs in, fixed-shape batches of token ids out.

Training (`train_dataset`), for this host:

    record indices -> this host's shard -> shuffle (seeded, anew each epoch) -> repeat
      -> read and tokenise a block of records at a time, appending EOS -> one example at a time
      -> drop or cut over-long examples
      -> pack several examples per row (or pad one per row) -> batch -> [devices, batch, length]

Evaluation (`eval_dataset`): every example of a split, tokenised once, in order, one per row,
shared out among the hosts; all-zero rows complete the last batch, so every example is scored
exactly once and every host runs the same number of steps. The training length policy does not
apply: no example is dropped, an over-long one is cut to the limits (the source the model
reads, the target of the teacher-forced loss), and generated text is scored against the
untouched reference text (`encode_eval_split`).

A batch is a dict of int32 arrays, each of shape [num_local_devices, per_device_batch, length]:

    inputs, targets                 token ids; each sequence ends in EOS, PAD (0) follows
    *_segmentation                  1, 2, 3... for the examples packed in a row, 0 on padding
    *_position                      0, 1, 2... restarting in every example, 0 on padding

Targets do not start with BOS: the model's `shift_right` puts BOS in front of the decoder
inputs.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterable, Sequence
from typing import TypeVar

import grain
import numpy as np

from flaxformer_lite.data.options import DataOptions
from flaxformer_lite.data.splits import READ_BLOCK_SIZE, TextSplit
from flaxformer_lite.data.tokenizers import Tokenizer
from flaxformer_lite.special_tokens import EOS_ID, PAD_ID

Example = dict[str, np.ndarray]  # {"inputs": [n] int32, "targets": [m] int32}, each ending in EOS.
FEATURES = ("inputs", "targets")
T = TypeVar("T")
EMPTY_EXAMPLE: Example = {key: np.zeros(0, np.int32) for key in FEATURES}  # Pads to a zero row.
EVALUATION_POLICY = "evaluate every example"  # A `LengthReport.policy` beside filter/truncate.
POLICY_OUTCOMES = {
    "filter": "dropped",
    "truncate": "truncated",
    EVALUATION_POLICY: "cut for the model and the eval loss; BLEU and exact match score the "
    "full reference",
}
# One thread reads and tokenises the next blocks while the training step runs.
READ_OPTIONS = grain.ReadOptions(num_threads=1, prefetch_buffer_size=2)


@dataclasses.dataclass(frozen=True)
class LengthReport:
    """How many examples of a split exceed the length limits, and what became of them."""

    split: str
    examples: int  # Examples in the split (for train: in this host's shard).
    overlong: int  # Of those, how many had a source or a target over the limit.
    policy: str  # "filter" (dropped), "truncate" (cut) or EVALUATION_POLICY.

    @property
    def kept(self) -> int:
        return self.examples - self.overlong if self.policy == "filter" else self.examples

    def __str__(self) -> str:
        outcome = POLICY_OUTCOMES[self.policy]
        return f"{self.split}: {self.examples} examples, {self.overlong} over-long ({outcome})"


@dataclasses.dataclass(frozen=True)
class HostLayout:
    """Where this host's batches go: its local devices, and its place among the hosts."""

    num_devices: int
    process_index: int = 0
    process_count: int = 1


def max_lengths(options: DataOptions) -> dict[str, int]:
    return {"inputs": options.max_source_length, "targets": options.max_target_length}


def encode(tokenizer: Tokenizer, pair: tuple[str, str]) -> Example:
    """A (source, target) text pair -> {"inputs", "targets"} token ids, each ending in EOS."""
    return {
        key: np.array([*tokenizer.encode(text), EOS_ID], np.int32)
        for key, text in zip(FEATURES, pair, strict=True)
    }


class ReadAndEncode(grain.transforms.Map):
    """A block of record indices -> the tokenised examples at those indices, in one read."""

    def __init__(self, split: TextSplit, tokenizer: Tokenizer):
        self._split = split
        self._tokenizer = tokenizer

    def map(self, indices: np.ndarray) -> list[Example]:
        return [encode(self._tokenizer, pair) for pair in self._split.read(indices)]


class Unbatch(grain.experimental.FlatMapTransform):
    """A block of examples -> its examples, one at a time."""

    max_fan_out = READ_BLOCK_SIZE

    def flat_map(self, block: list[Example]) -> list[Example]:
        return block


def is_overlong(lengths: dict[str, int], example: Example) -> bool:
    return any(len(example[key]) > length for key, length in lengths.items())


def fits(lengths: dict[str, int], example: Example) -> bool:
    return not is_overlong(lengths, example)


def truncate(lengths: dict[str, int], example: Example) -> Example:
    """Cuts each sequence to its limit, keeping EOS as its last token."""
    cut = {}
    for key, length in lengths.items():
        ids = example[key]
        cut[key] = ids if len(ids) <= length else np.append(ids[: length - 1], EOS_ID)
    return cut


def apply_length_policy(examples: grain.IterDataset, options: DataOptions) -> grain.IterDataset:
    """Drops ("filter") or cuts ("truncate") the examples longer than the limits."""
    lengths = max_lengths(options)
    if options.overlong == "filter":
        return examples.filter(functools.partial(fits, lengths))
    return examples.map(functools.partial(truncate, lengths))


def pad(lengths: dict[str, int], example: Example) -> dict[str, np.ndarray]:
    """One example alone in a row: its ids, segment 1 and positions 0.. , then zeros. [length]"""
    row = {}
    for key, length in lengths.items():
        ids, segmentation, position = np.zeros((3, length), np.int32)
        count = len(example[key])
        ids[:count] = example[key]
        segmentation[:count] = 1
        position[:count] = np.arange(count)
        row[key] = ids
        row[f"{key}_segmentation"] = segmentation
        row[f"{key}_position"] = position
    return row


def rename_packing_features(row: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """grain's names for the packing features -> the names the model reads."""
    renamed = {}
    for key in FEATURES:
        renamed[key] = row[key]
        renamed[f"{key}_segmentation"] = row[f"{key}_segment_ids"]
        renamed[f"{key}_position"] = row[f"{key}_positions"]
    return renamed


def split_devices(num_devices: int, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """[devices * batch, length] -> [devices, batch, length], the layout `pmap` splits."""
    return {key: value.reshape(num_devices, -1, *value.shape[1:]) for key, value in batch.items()}


def host_shard(elements: Sequence[T], layout: HostLayout) -> Sequence[T]:
    """Every `process_count`-th element, from this host's index on: disjoint, covering shards."""
    return elements[layout.process_index :: layout.process_count]


def train_dataset(
    split: TextSplit, tokenizer: Tokenizer, options: DataOptions, layout: HostLayout
) -> grain.IterDataset:
    """The endless stream of training batches for this host."""
    rows = layout.num_devices * options.per_device_batch_size
    lengths = max_lengths(options)
    # Shuffle and repeat the record indices, then read and tokenise them a block at a time.
    indices = grain.MapDataset.source(host_shard(range(len(split)), layout))
    indices = indices.shuffle(seed=options.seed).repeat()
    blocks = indices.batch(READ_BLOCK_SIZE).map(ReadAndEncode(split, tokenizer))
    examples = grain.experimental.FlatMapIterDataset(
        blocks.to_iter_dataset(READ_OPTIONS), Unbatch()
    )
    examples = apply_length_policy(examples, options)
    if options.pack_examples:
        rows_of_examples = grain.experimental.FirstFitPackIterDataset(
            examples, length_struct=lengths, num_packing_bins=rows, shuffle_bins=False
        ).map(rename_packing_features)
    else:
        rows_of_examples = examples.map(functools.partial(pad, lengths))
    batches = rows_of_examples.batch(rows, drop_remainder=True)
    batches = batches.map(functools.partial(split_devices, layout.num_devices))
    if options.grain_worker_count:
        workers = grain.MultiprocessingOptions(num_workers=options.grain_worker_count)
        return batches.mp_prefetch(workers)
    # Make the next batches in a background thread: its Python runs while the training
    # step runs in XLA, which releases the GIL.
    return grain.experimental.ThreadPrefetchIterDataset(batches, prefetch_buffer_size=2)


def encode_eval_split(
    split_name: str, split: TextSplit, tokenizer: Tokenizer, options: DataOptions
) -> tuple[list[Example], list[str], LengthReport]:
    """Every example of an evaluation split, cut to the limits; its reference texts; its report.

    Whatever `options.overlong` says for training, evaluation keeps every example, so corpus
    BLEU covers the whole split. Cutting changes only what the model reads (and the target of
    the teacher-forced loss); the references are the split's target text, untouched.
    """
    lengths = max_lengths(options)
    pairs = list(split.pairs())
    encoded = [encode(tokenizer, pair) for pair in pairs]
    overlong = sum(is_overlong(lengths, example) for example in encoded)
    report = LengthReport(split_name, len(encoded), overlong, EVALUATION_POLICY)
    references = [target for _, target in pairs]
    return [truncate(lengths, example) for example in encoded], references, report


def scan_lengths(
    split_name: str, pairs: Iterable[tuple[str, str]], tokenizer: Tokenizer, options: DataOptions
) -> LengthReport:
    """The `LengthReport` of pairs too many to keep in memory, read once."""
    lengths = max_lengths(options)
    examples = overlong = 0
    for pair in pairs:
        examples += 1
        overlong += is_overlong(lengths, encode(tokenizer, pair))
    return LengthReport(split_name, examples, overlong, options.overlong)


def eval_dataset(
    examples: list[Example], options: DataOptions, layout: HostLayout
) -> grain.MapDataset:
    """Padded, fixed-shape batches holding each example once: this host's share of them."""
    rows = layout.num_devices * options.eval_batch_size
    batches_per_host = math.ceil(len(examples) / (rows * layout.process_count))
    padding = [EMPTY_EXAMPLE] * (batches_per_host * rows * layout.process_count - len(examples))
    shard = grain.MapDataset.source(host_shard(examples + padding, layout))
    batches = shard.map(functools.partial(pad, max_lengths(options))).batch(rows)
    return batches.map(functools.partial(split_devices, layout.num_devices))


def real_tokens(batch: dict[str, np.ndarray]) -> tuple[int, int]:
    """The (source, target) tokens of a batch that are not padding: what a step learns from."""
    return int(np.sum(batch["inputs"] != PAD_ID)), int(np.sum(batch["targets"] != PAD_ID))
