"""`create_datasets`: the trainer's one entry point to the data.

It reads the data options from the config, prepares the dataset once (TFDS caches it), builds
or loads the tokenizer, counts the over-long examples of every split, and returns a
`Datasets`: the tokenizer, the endless training iterator and the evaluation batches.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Iterator

import grain
import ml_collections
import numpy as np

from flaxformer_lite.data import hosts, pipeline, sources, tokenizers
from flaxformer_lite.data.errors import DataError
from flaxformer_lite.data.options import DataOptions
from flaxformer_lite.data.pipeline import Example, HostLayout, LengthReport
from flaxformer_lite.data.tokenizers import Tokenizer


@dataclasses.dataclass
class Datasets:
    """Everything the trainer needs from the data.

    `train_iter` is a `grain.DatasetIterator`: `next(train_iter)` gives the next training
    batch, forever. Orbax saves and restores its position with grain's checkpoint handler,
    `grain.checkpoint.CheckpointSave(train_iter)` / `CheckpointRestore(train_iter)`, next to
    the model, so a resumed run continues with exactly the batch that comes next.
    """

    tokenizer: Tokenizer
    train_iter: grain.DatasetIterator
    info: str  # What the data are, for the log; several lines.
    length_reports: dict[str, LengthReport]  # Per split: examples and over-long ones.
    eval_examples: dict[str, list[Example]]  # Per evaluation split: every example, tokenised.
    eval_references: dict[str, list[str]]  # Per evaluation split: each target text, untouched.
    options: DataOptions
    layout: HostLayout

    @property
    def eval_splits(self) -> tuple[str, ...]:
        """The splits `eval_batches` can read, e.g. ("validation", "test", "test_long")."""
        return tuple(self.eval_examples)

    def eval_batches(self, split: str = "validation") -> Iterator[dict[str, np.ndarray]]:
        """A fresh pass over `split`: fixed-shape batches that hold each example once.

        Rows after the last example are all zeros (segmentation 0), so metrics that weigh
        tokens by their segmentation count every example exactly once.
        """
        batches = pipeline.eval_dataset(self._examples(split), self.options, self.layout)
        return (batches[index] for index in range(len(batches)))

    def reference_texts(self, split: str = "validation") -> list[str]:
        """The target text of each example that `eval_batches(split)` gives this host, in order.

        Taken from the data as they are, never rebuilt from (possibly cut) token ids: generated
        outputs are scored against these.
        """
        self._examples(split)  # Names a split that does not exist.
        return list(pipeline.host_shard(self.eval_references[split], self.layout))

    def num_eval_examples(self, split: str = "validation") -> int:
        """The number of examples `eval_batches(split)` holds, over all hosts."""
        return len(self._examples(split))

    def _examples(self, split: str) -> list[Example]:
        if split not in self.eval_examples:
            raise DataError(
                f"Split {split!r} does not exist in config.dataset={self.options.dataset!r}; "
                f"its evaluation splits are {', '.join(self.eval_splits) or 'none'}."
            )
        return self.eval_examples[split]


def create_datasets(
    config: ml_collections.ConfigDict,
    workdir: str,
    num_local_devices: int,
    *,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Datasets:
    """The data of `config` for this host, batched for `num_local_devices` devices.

    `process_index` and `process_count` default to JAX's; tests set them to play one host of
    several.
    """
    options = DataOptions.from_config(config)
    if num_local_devices < 1:
        raise DataError(f"num_local_devices={num_local_devices}: need at least one device.")
    if process_index is None or process_count is None:
        process_index, process_count = hosts.process_index_and_count()
    layout = HostLayout(num_local_devices, process_index, process_count)

    text = sources.load_text(options, workdir, process_index)
    if "train" not in text.splits:
        raise DataError(f"config.dataset={options.dataset!r} has no train split.")
    tokenizer = make_tokenizer(options, text, workdir, process_index)

    reports = {"train": train_length_report(text, tokenizer, options, workdir, layout)}
    if reports["train"].kept == 0:
        raise DataError(
            f"Every training example is longer than config.max_source_length="
            f"{options.max_source_length} or config.max_target_length="
            f"{options.max_target_length}: raise them, or set config.overlong='truncate'."
        )
    eval_examples, eval_references = {}, {}
    for split, pairs in text.splits.items():
        if split != "train":
            eval_examples[split], eval_references[split], reports[split] = (
                pipeline.encode_eval_split(split, pairs, tokenizer, options)
            )

    train_iter = iter(pipeline.train_dataset(text.splits["train"], tokenizer, options, layout))
    first_batch_tokens = peek_real_tokens(train_iter)
    return Datasets(
        tokenizer=tokenizer,
        train_iter=train_iter,
        info=describe(options, text, tokenizer, reports, layout, first_batch_tokens),
        length_reports=reports,
        eval_examples=eval_examples,
        eval_references=eval_references,
        options=options,
        layout=layout,
    )


def peek_real_tokens(train_iter: grain.DatasetIterator) -> tuple[int, int]:
    """The real (non-pad) source and target tokens of the next batch, leaving it the next."""
    state = train_iter.get_state()
    tokens = pipeline.real_tokens(next(train_iter))
    train_iter.set_state(state)
    return tokens


def make_tokenizer(
    options: DataOptions, text: sources.TextData, workdir: str, process_index: int
) -> Tokenizer:
    """The byte tokenizer, or the SentencePiece model of this dataset in the workdir."""
    if options.tokenizer == "byte":
        return tokenizers.ByteTokenizer()
    path = pathlib.Path(workdir) / f"sentencepiece_{text.cache_name}_{options.vocab_size}.model"
    train = text.splits["train"]
    return tokenizers.load_or_train_sentencepiece(
        path,
        lambda: tokenizers.corpus(train.pairs(), options.sentencepiece_max_corpus_chars),
        options.vocab_size,
        process_index,
    )


def load_tokenizer(config: ml_collections.ConfigDict, workdir: str) -> Tokenizer:
    """The tokenizer a training run in `workdir` used, without touching its dataset.

    For inference: the byte tokenizer needs nothing; a SentencePiece model is
    read from the file `make_tokenizer` saved in the workdir.
    """
    options = DataOptions.from_config(config)
    if options.tokenizer == "byte":
        return tokenizers.ByteTokenizer()
    models = sorted(pathlib.Path(workdir).glob(f"sentencepiece_*_{options.vocab_size}.model"))
    if len(models) != 1:
        raise DataError(
            f"Expected one SentencePiece model sentencepiece_*_{options.vocab_size}.model in "
            f"{workdir}, found {len(models)}: point --workdir at the training run's workdir."
        )
    return tokenizers.SentencePieceTokenizer(models[0].read_bytes())


def train_length_report(
    text: sources.TextData,
    tokenizer: Tokenizer,
    options: DataOptions,
    workdir: str,
    layout: HostLayout,
) -> LengthReport:
    """The length report of this host's training shard, counted once and kept in the workdir.

    Counting reads the whole shard, which takes minutes for WMT; a resumed run reads the
    saved count instead.
    """
    tokenizer_name = "byte" if options.tokenizer == "byte" else f"sp{options.vocab_size}"
    path = pathlib.Path(workdir) / (
        f"train_lengths_{text.cache_name}_{tokenizer_name}_{options.max_source_length}x"
        f"{options.max_target_length}_host{layout.process_index}of{layout.process_count}.json"
    )
    if path.exists():
        counts = json.loads(path.read_text())
    else:
        split = text.splits["train"]
        pairs = split.pairs(pipeline.host_shard(range(len(split)), layout))
        report = pipeline.scan_lengths("train", pairs, tokenizer, options)
        counts = {"examples": report.examples, "overlong": report.overlong}
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_text(json.dumps(counts))
        os.replace(partial, path)
    return LengthReport("train", counts["examples"], counts["overlong"], options.overlong)


def describe(
    options: DataOptions,
    text: sources.TextData,
    tokenizer: Tokenizer,
    reports: dict[str, LengthReport],
    layout: HostLayout,
    first_batch_tokens: tuple[int, int],
) -> str:
    """A few lines for the log: what the data are and what the batches look like."""
    lengths = (options.max_source_length, options.max_target_length)
    train_rows = [layout.num_devices, options.per_device_batch_size]
    rows = layout.num_devices * options.per_device_batch_size
    slots = (rows * lengths[0], rows * lengths[1])
    real = first_batch_tokens
    eval_rows = [layout.num_devices, options.eval_batch_size]
    (source, target), *_ = text.splits["train"].read([0])
    lines = [
        f"data: {text.description}",
        f"tokenizer: {options.tokenizer}, vocab_size {tokenizer.vocab_size}",
        f"max lengths with EOS: source {lengths[0]}, target {lengths[1]}; longer examples:",
        *(f"  {report}" for report in reports.values()),
        f"train batches: inputs {[*train_rows, lengths[0]]}, targets {[*train_rows, lengths[1]]}"
        f", {'packed' if options.pack_examples else 'one example per row'}, shuffle seed "
        f"{options.seed}; host {layout.process_index + 1} of {layout.process_count}",
        f"real tokens in the first train batch (this host): source {real[0]:,} of {slots[0]:,} "
        f"slots ({real[0] / slots[0]:.0%}), target {real[1]:,} of {slots[1]:,} "
        f"({real[1] / slots[1]:.0%})",
        f"eval batches: inputs {[*eval_rows, lengths[0]]}, targets {[*eval_rows, lengths[1]]}, "
        "one example per row, all-zero rows after the last",
        f"example: {source!r} -> {target!r}",
    ]
    return "\n".join(lines)
