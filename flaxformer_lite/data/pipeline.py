"""The grain pipeline: text pairs in, fixed-shape batches of token ids out.

Training (`train_dataset`), for this host:

    record indices -> shuffle (seeded, anew each epoch) -> repeat
      -> this host's rows of every global batch (`HostRows`: the same whatever the host count)
      -> read and tokenise a block of records at a time, appending EOS -> one example at a time
      -> drop or cut over-long examples
      -> pack several examples per row (or pad one per row) -> batch -> [devices, batch, length]

Evaluation (`eval_dataset`): every example of a split, tokenised once, in order, one per row,
shared out among the hosts; all-zero rows complete the last batch, so every example is scored
exactly once and every host runs the same number of steps. The training length policy does not
apply: no example is dropped, an over-long one is cut to the limits (the source the model
reads, the target of the teacher-forced loss), and generated text is scored against the
untouched reference text (`encode_eval_split`).

A batch is a dict of arrays, each of shape [num_local_devices, per_device_batch, length];
which ones, `config.model` decides through the data format (data/formats.py):

    encoder_decoder ("pairs")       inputs, targets (int32)
    decoder_only (prompt_completion and text)
                                    targets (int32), loss_weights (float32: 1.0 where the
                                    token counts in the loss, 0.0 on prompts and padding)
    every token feature X           X_segmentation: 1, 2, 3... for the examples packed in a
                                    row, 0 on padding; X_position: 0, 1, 2... restarting in
                                    every example, 0 on padding

Token sequences end in EOS, PAD (0) follows. Targets do not start with BOS: the model's
`shift_right` puts BOS in front of the decoder inputs, and a packed row restarts at BOS
wherever `targets_position` is 0.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterable, Sequence
from typing import TypeVar

import grain
import numpy as np

from flaxformer_lite.data import masking
from flaxformer_lite.data.formats import Example, data_format, packs_rows
from flaxformer_lite.data.options import DataOptions
from flaxformer_lite.data.prepared import READ_BLOCK_SIZE, TextSplit
from flaxformer_lite.data.tokenizers import Tokenizer
from flaxformer_lite.special_tokens import PAD_ID

T = TypeVar("T")
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
    examples: int  # Examples in the split (for train: in the share this host counted).
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
    """The row length of every feature of the data format `options` select."""
    return data_format(options).lengths(options)


def empty_example(options: DataOptions) -> Example:
    """An example without tokens: it pads to an all-zero row."""
    return {key: np.zeros(0, np.int32) for key in max_lengths(options)}


class ReadAndEncode(grain.transforms.Map):
    """A block of record indices -> the tokenised examples at those indices, in one read."""

    def __init__(self, split: TextSplit, tokenizer: Tokenizer, options: DataOptions):
        self._split = split
        self._tokenizer = tokenizer
        self._encode = data_format(options).encode

    def map(self, indices: np.ndarray) -> list[Example]:
        return [self._encode(self._tokenizer, pair) for pair in self._split.read(indices)]


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
    """Cuts each feature to its limit, keeping its last element: EOS, or the weight of EOS."""
    cut = {}
    for key, length in lengths.items():
        values = example[key]
        cut[key] = values if len(values) <= length else np.append(values[: length - 1], values[-1])
    return cut


def apply_length_policy(examples: grain.IterDataset, options: DataOptions) -> grain.IterDataset:
    """Drops ("filter") or cuts ("truncate") the examples longer than the limits."""
    lengths = max_lengths(options)
    if options.overlong == "filter":
        return examples.filter(functools.partial(fits, lengths))
    return examples.map(functools.partial(truncate, lengths))


def pad(lengths: dict[str, int], example: Example) -> dict[str, np.ndarray]:
    """One example alone in a row: its values, then zeros. [length]

    Token features also get segment 1 and positions 0, 1, ... over the example; loss weights
    keep their float32 values.
    """
    row = {}
    for key, length in lengths.items():
        values = example[key]
        row[key] = np.zeros(length, np.float32 if key == "loss_weights" else np.int32)
        row[key][: len(values)] = values
        if key != "loss_weights":
            row[f"{key}_segmentation"] = (np.arange(length) < len(values)).astype(np.int32)
            positions = np.arange(length, dtype=np.int32)
            row[f"{key}_position"] = np.where(row[f"{key}_segmentation"], positions, 0)
    return row


def rename_packing_features(sequences: tuple[str, ...], row: dict[str, np.ndarray]):
    """grain's packed row -> the names the model reads; the weights' own segments dropped."""
    renamed = {
        key: value for key, value in row.items() if key in sequences or key == "loss_weights"
    }
    for key in sequences:
        renamed[f"{key}_segmentation"] = row[f"{key}_segment_ids"]
        renamed[f"{key}_position"] = row[f"{key}_positions"]
    return renamed


def split_devices(num_devices: int, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """[devices * batch, length] -> [devices, batch, length], the layout `pmap` splits."""
    return {key: value.reshape(num_devices, -1, *value.shape[1:]) for key, value in batch.items()}


def host_shard(elements: Sequence[T], layout: HostLayout) -> Sequence[T]:
    """Every `process_count`-th element, from this host's index on: disjoint, covering shards."""
    return elements[layout.process_index :: layout.process_count]


class HostRows(grain.MapDataset):
    """This host's rows of every global batch, out of the endless stream all hosts agree on.

    Global batch k is elements [k B, (k + 1) B) of `stream` (B = rows_per_host x hosts). Every
    host builds the same stream (the same seeded order; cheap, as it is lazy) and reads only
    its block of each batch, rows [h b, (h + 1) b):

        stream   e0 e1 e2 e3 | e4 e5 e6 e7 | ...      2 hosts, b = 2 rows each
        host 0   e0 e1       | e4 e5       | ...
        host 1         e2 e3 |       e6 e7 | ...

    `jax.make_array_from_process_local_data` stacks the hosts' rows in process order, so the
    global batch is the one a single process would read: the examples a step trains on do
    not depend on how many hosts read them. (Packed rows are packed per host, and a row
    takes as many examples as fit, so with packing the steps differ; every example is still
    read once per epoch.)
    """

    def __init__(self, stream: grain.MapDataset, layout: HostLayout, rows_per_host: int):
        super().__init__(stream)
        self._host, self._hosts = layout.process_index, layout.process_count
        self._rows = rows_per_host

    def __len__(self) -> int:
        return len(self._parent) // self._hosts

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        batch, row = divmod(index, self._rows)
        return self._parent[(batch * self._hosts + self._host) * self._rows + row]


def host_rows(stream: grain.MapDataset, options: DataOptions, layout: HostLayout) -> HostRows:
    """This host's share of the endless training `stream`: its rows of every global batch."""
    return HostRows(stream, layout, layout.num_devices * options.per_device_batch_size)


# grain's shuffle finds where index i goes by enciphering i within 2**16 values (or the next
# power of two above the dataset's length), enciphering again until the result falls inside
# the dataset. Below 2**16 elements that costs about 2**16 / length cipher passes per index:
# nothing for real data, but ~10 ms an index for a 2-line file, ten seconds per block of
# records read. Such small datasets get a NumPy permutation per epoch instead.
GRAIN_SHUFFLE_MIN_LENGTH = 2**16


def shuffled_epochs(elements: Sequence[T], seed: int) -> grain.MapDataset:
    """`elements` endlessly, each epoch in a new seeded order: the same order on resume."""
    dataset = grain.MapDataset.source(elements)
    if len(elements) >= GRAIN_SHUFFLE_MIN_LENGTH:
        return dataset.shuffle(seed=seed).repeat()
    return dataset.repeat().map_with_index(PermutedEpochs(elements, seed))


class PermutedEpochs(grain.transforms.MapWithIndex):
    """Index i of the endless repetition -> the element at i's place in its epoch's permutation."""

    def __init__(self, elements: Sequence[T], seed: int):
        self._elements = elements
        self._seed = seed

    def map_with_index(self, index: int, element: T) -> T:
        del element  # elements[index % len]: the unshuffled one.
        epoch, position = divmod(index, len(self._elements))
        return self._elements[epoch_permutation(self._seed, len(self._elements), epoch)[position]]


@functools.lru_cache(maxsize=4)  # The current epoch, and the next one that prefetching reads.
def epoch_permutation(seed: int, length: int, epoch: int) -> np.ndarray:
    return np.random.default_rng((seed, epoch)).permutation(length)


def train_dataset(
    split: TextSplit, tokenizer: Tokenizer, options: DataOptions, layout: HostLayout
) -> grain.IterDataset:
    """The endless stream of training batches for this host."""
    rows = layout.num_devices * options.per_device_batch_size
    lengths = max_lengths(options)
    # Shuffle and repeat the record indices, then read and tokenise them a block at a time.
    indices = host_rows(shuffled_epochs(range(len(split)), options.seed), options, layout)
    blocks = indices.batch(READ_BLOCK_SIZE).map(ReadAndEncode(split, tokenizer, options))
    examples = grain.experimental.FlatMapIterDataset(
        blocks.to_iter_dataset(READ_OPTIONS), Unbatch()
    )
    examples = apply_length_policy(examples, options)
    if packs_rows(options):
        rows_of_examples = grain.experimental.FirstFitPackIterDataset(
            examples, length_struct=lengths, num_packing_bins=rows, shuffle_bins=False
        ).map(functools.partial(rename_packing_features, data_format(options).sequences))
    else:
        rows_of_examples = examples.map(functools.partial(pad, lengths))
    transform = data_format(options).row_transform
    if transform is not None:  # seeded by the rows read so far: a resumed run draws the same
        rows_of_examples = rows_of_examples.random_map(
            transform(options, tokenizer.vocab_size), seed=options.seed
        )
    return batch_and_prefetch(rows_of_examples, options, layout)


def batch_and_prefetch(
    rows_of_examples: grain.IterDataset, options: DataOptions, layout: HostLayout
) -> grain.IterDataset:
    """Rows -> [devices, per_device_batch, length] batches, made ahead of the training step."""
    rows = layout.num_devices * options.per_device_batch_size
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
    encoded = [data_format(options).encode(tokenizer, pair) for pair in pairs]
    overlong = sum(is_overlong(lengths, example) for example in encoded)
    report = LengthReport(split_name, len(encoded), overlong, EVALUATION_POLICY)
    references = [target for _, target in pairs]
    return [truncate(lengths, example) for example in encoded], references, report


def scan_lengths(
    split_name: str, pairs: Iterable[tuple[str, str]], tokenizer: Tokenizer, options: DataOptions
) -> LengthReport:
    """The `LengthReport` of pairs too many to keep in memory, read once."""
    lengths = max_lengths(options)
    encode = data_format(options).encode
    examples = overlong = 0
    for pair in pairs:
        examples += 1
        overlong += is_overlong(lengths, encode(tokenizer, pair))
    return LengthReport(split_name, examples, overlong, options.overlong)


def eval_dataset(
    examples: list[Example], options: DataOptions, layout: HostLayout, vocab_size: int = 0
) -> grain.MapDataset:
    """Padded, fixed-shape batches holding each example once: this host's share of them.

    A format's row transform (masking) needs `vocab_size`; it is seeded by each row's index,
    so every evaluation sees the same masks.
    """
    rows = layout.num_devices * options.eval_batch_size
    batches_per_host = math.ceil(len(examples) / (rows * layout.process_count))
    padding = [empty_example(options)] * (
        batches_per_host * rows * layout.process_count - len(examples)
    )
    shard = grain.MapDataset.source(host_shard(examples + padding, layout))
    rows_of_examples = shard.map(functools.partial(pad, max_lengths(options)))
    transform = data_format(options).row_transform
    if transform is not None:
        rows_of_examples = rows_of_examples.random_map(
            transform(options, vocab_size), seed=masking.EVAL_MASK_SEED
        )
    batches = rows_of_examples.batch(rows)
    return batches.map(functools.partial(split_devices, layout.num_devices))


def real_tokens(batch: dict[str, np.ndarray]) -> tuple[int, int]:
    """The (source, target) tokens of a batch that are not padding: what a step learns from.

    A decoder-only batch has no source: its prompts are part of `targets`.
    """
    sources = batch.get("inputs", np.zeros(0, np.int32))
    targets = batch.get("targets", np.zeros(0, np.int32))  # an encoder-only batch may have none
    return int(np.sum(sources != PAD_ID)), int(np.sum(targets != PAD_ID))
