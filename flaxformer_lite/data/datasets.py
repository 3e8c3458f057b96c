"""`create_datasets`: the trainer's one entry point to the data.

It reads the data options from the config, prepares the dataset once (TFDS caches it), builds
or loads the tokenizer, counts the over-long examples of every split, and returns a
`Datasets`: the tokenizer, the endless training iterator and the evaluation batches, in the
data format `config.model` reads (data/formats.py). Plain text for a decoder-only model is
one stream of tokens cut into windows (data/text_stream.py); everything else is a sequence
of examples.

This is where `config.dataset` is looked up (`load_text`). Synthetic tasks and local files are
prepared by our own TFDS builders into `<workdir>/data` (or `config.data_dir`); catalog
datasets by their TFDS builders into tfds' data dir (or `config.data_dir`). Either way the
pipeline downstream sees the same thing, a `TextSplit` per split.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import grain
import ml_collections
import numpy as np

from flaxformer_lite.data import (
    catalog,
    images,
    local_files,
    pipeline,
    prepared,
    synthetic,
    text_stream,
    tokenizers,
)
from flaxformer_lite.data.formats import data_format, packs_rows
from flaxformer_lite.data.options import DataError, DataOptions, process_index_and_count
from flaxformer_lite.data.pipeline import Example, HostLayout, LengthReport
from flaxformer_lite.data.prepared import TextSplit
from flaxformer_lite.data.tokenizers import Tokenizer

DATASET_NAMES = (*synthetic.TASKS, *local_files.FORMATS, *catalog.CATALOG)


@dataclasses.dataclass
class Datasets:
    """Everything the trainer needs from the data.

    `train_iter` is a `grain.DatasetIterator`: `next(train_iter)` gives the next training
    batch, forever. Orbax saves and restores its position with grain's checkpoint handler,
    `grain.checkpoint.CheckpointSave(train_iter)` / `CheckpointRestore(train_iter)`, next to
    the model, so a resumed run continues with exactly the batch that comes next.

    `data_format` names the batch layout (data/formats.py): "pairs" (inputs, targets),
    "prompt_completion" or "text" (targets and loss_weights). For "text", `eval_bytes` holds
    the UTF-8 bytes each evaluation split covers: bits per byte = nll_sum / ln 2 / bytes.
    """

    tokenizer: Tokenizer
    train_iter: grain.DatasetIterator
    info: str  # What the data are, for the log; several lines.
    length_reports: dict[str, LengthReport]  # Per split: examples and over-long ones.
    eval_examples: dict[str, list[Example]]  # Per evaluation split: every example, tokenised.
    eval_references: dict[str, list[str]]  # Per evaluation split: each target text, untouched.
    options: DataOptions
    layout: HostLayout
    data_format: str  # "pairs", "prompt_completion" or "text".
    eval_bytes: dict[str, int]  # "text" only: per evaluation split, the bytes it covers.

    @property
    def eval_splits(self) -> tuple[str, ...]:
        """The splits `eval_batches` can read, e.g. ("validation", "test", "test_long")."""
        return tuple(self.eval_examples)

    def eval_batches(self, split: str = "validation") -> Iterator[dict[str, np.ndarray]]:
        """A fresh pass over `split`: fixed-shape batches that hold each example once.

        Rows after the last example are all zeros (segmentation 0), so metrics that weigh
        tokens by their segmentation count every example exactly once.
        """
        batches = pipeline.eval_dataset(
            self._examples(split), self.options, self.layout, self.tokenizer.vocab_size
        )
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
        process_index, process_count = process_index_and_count()
    layout = HostLayout(num_local_devices, process_index, process_count)
    if options.model == "vit":  # images and their labels (data/images.py), not text pairs
        return images.create_image_datasets(config, workdir, layout)
    if options.model == "image_captioning":  # images and their captions, not text pairs
        from flaxformer_lite.data import captions  # captions builds on this module

        return captions.create_caption_datasets(config, workdir, layout)
    # The one place where the format changes how data are read: a language model reads a
    # text stream through windows, not example by example.
    if data_format(options).name == "text" and options.dataset in text_stream.STREAM_DATASETS:
        return create_stream_datasets(options, workdir, layout)
    return create_example_datasets(options, workdir, layout)


def create_example_datasets(
    options: DataOptions,
    workdir: str,
    layout: HostLayout,
    *,
    pretrained_tokenizer: Tokenizer | None = None,
) -> Datasets:
    """Data read example by example: pairs, prompt -> completion rows, or lines of text.

    `pretrained_tokenizer` replaces the config's tokenizer: a checkpoint's, for a model
    fine-tuned from it (pretrained/finetune.py).
    """
    text = load_text(options, workdir, layout.process_index)
    if "train" not in text.splits:
        raise DataError(f"config.dataset={options.dataset!r} has no train split.")
    train = text.splits["train"]
    tokenizer = pretrained_tokenizer or make_tokenizer(
        options,
        text.cache_name,
        lambda: tokenizers.corpus(train.pairs(), options.sentencepiece_max_corpus_chars),
        workdir,
        layout.process_index,
    )

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
    line_bytes = {  # Each line's bytes and its end, which EOS marks.
        split: sum(len(reference.encode("utf-8")) + 1 for reference in references)
        for split, references in eval_references.items()
    }
    train_iter = iter(pipeline.train_dataset(train, tokenizer, options, layout))
    first_batch_tokens = peek_real_tokens(train_iter)
    fmt = data_format(options).name
    return Datasets(
        tokenizer=tokenizer,
        train_iter=train_iter,
        info=describe(options, text, tokenizer, reports, layout, first_batch_tokens),
        length_reports=reports,
        eval_examples=eval_examples,
        eval_references=eval_references,
        options=options,
        layout=layout,
        data_format=fmt,
        eval_bytes=line_bytes if fmt == "text" else {},
    )


@dataclasses.dataclass(frozen=True)
class TextData:
    """A dataset's splits as text pairs, and what the log should say about it."""

    cache_name: str  # Names exactly this data (dataset and options) in file names.
    description: str  # One line for the log.
    splits: dict[str, TextSplit]


def load_text(options: DataOptions, workdir: str, process_index: int) -> TextData:
    """Prepares (once) and opens the dataset that `options.dataset` names."""
    name = options.dataset
    if name in catalog.CATALOG:
        sources, info = catalog.fetch(name, options, process_index)
        direction = " (reversed)" if options.reverse_translation else ""
        return TextData(
            cache_name=name.replace("/", "_"),
            description=f"{name}{direction}: tfds catalog, prepared in {info.data_dir}",
            splits=catalog.text_splits(name, sources, info, options.reverse_translation),
        )
    if name in synthetic.TASKS:
        builder_name, config = "synthetic_task", synthetic.builder_config(options)
    elif name in local_files.FORMATS:
        builder_name, config = "local_files", local_files.builder_config(options)
    else:
        raise DataError(
            f"config.dataset={name!r} is not a dataset this pipeline knows; choose one of "
            f"{', '.join(DATASET_NAMES)}."
        )
    sources = prepared.read_splits(
        builder_name,
        None,
        data_dir=options.data_dir or str(pathlib.Path(workdir) / "data"),
        process_index=process_index,
        builder_kwargs={"config": config},
    )
    data_dir = next(iter(sources.values())).dataset_info.data_dir
    return TextData(
        cache_name=f"{builder_name}_{config.name}",
        description=f"{config.description}, prepared in {data_dir}",
        splits={split: TextSplit(source, record_pair) for split, source in sources.items()},
    )


def record_pair(record: dict[str, Any]) -> tuple[str, str]:
    """A record of our own builders as a (source, target) pair."""
    return prepared.as_text(record["source"]), prepared.as_text(record["target"])


def create_stream_datasets(options: DataOptions, workdir: str, layout: HostLayout) -> Datasets:
    """Plain text for a language model: training windows, and windows tiling each held-out split."""
    description, texts = text_stream.read_splits(options, layout.process_index)
    train_text = texts["train"]
    cache_name = f"{options.dataset}_{hashlib.sha256(train_text.encode()).hexdigest()[:16]}"
    tokenizer = make_tokenizer(
        options,
        cache_name,
        lambda: tokenizers.corpus(
            (("", line) for line in train_text.splitlines(keepends=True)),
            options.sentencepiece_max_corpus_chars,
        ),
        workdir,
        layout.process_index,
    )
    length = options.max_target_length
    eval_examples, eval_references, eval_bytes = {}, {}, {}
    for split, text in texts.items():
        if split == "train":
            continue
        if not text:
            raise DataError(
                f"The {split} split of config.dataset={options.dataset!r} is empty: give a "
                "longer train_file, or set config.eval_file."
            )
        windows = text_stream.eval_examples(text_stream.tokenize(tokenizer, text), length)
        eval_examples[split] = windows
        eval_references[split] = [tokenizer.decode(window["targets"]) for window in windows]
        eval_bytes[split] = len(text.encode("utf-8"))
    train_tokens = text_stream.tokenize(tokenizer, train_text)
    train_iter = iter(text_stream.train_dataset(train_tokens, options, layout))
    rows = [layout.num_devices, options.per_device_batch_size, length]
    eval_rows = [layout.num_devices, options.eval_batch_size, length]
    info = "\n".join(
        [
            f"data: {description}",
            f"tokenizer: {options.tokenizer}, vocab_size {tokenizer.vocab_size}",
            f"tokens: train {len(train_tokens):,}, "
            + ", ".join(
                f"{split} {sum(len(w['targets']) for w in windows):,} ({eval_bytes[split]:,} bytes)"
                for split, windows in eval_examples.items()
            ),
            f"train batches: targets and loss_weights {rows}, windows of {length} tokens at "
            f"shuffled offsets, seed {options.seed}; host {layout.process_index + 1} of "
            f"{layout.process_count}",
            f"eval batches: {eval_rows}, windows tiling each split (each token once; a "
            "window's first token is predicted from BOS alone), all-zero rows after the last",
        ]
    )
    return Datasets(
        tokenizer=tokenizer,
        train_iter=train_iter,
        info=info,
        length_reports={},
        eval_examples=eval_examples,
        eval_references=eval_references,
        options=options,
        layout=layout,
        data_format="text",
        eval_bytes=eval_bytes,
    )


def peek_real_tokens(train_iter: grain.DatasetIterator) -> tuple[int, int]:
    """The real (non-pad) source and target tokens of the next batch, leaving it the next."""
    state = train_iter.get_state()
    tokens = pipeline.real_tokens(next(train_iter))
    train_iter.set_state(state)
    return tokens


def make_tokenizer(
    options: DataOptions,
    cache_name: str,
    corpus: Callable[[], Iterable[str]],
    workdir: str,
    process_index: int,
) -> Tokenizer:
    """The byte tokenizer, or the SentencePiece model of this dataset in the workdir.

    SentencePiece is trained on `corpus()` the first time, and saved under `cache_name`.
    """
    if options.tokenizer == "byte":
        return tokenizers.ByteTokenizer()
    path = pathlib.Path(workdir) / f"sentencepiece_{cache_name}_{options.vocab_size}.model"
    return tokenizers.load_or_train_sentencepiece(path, corpus, options.vocab_size, process_index)


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
    text: TextData,
    tokenizer: Tokenizer,
    options: DataOptions,
    workdir: str,
    layout: HostLayout,
) -> LengthReport:
    """The length report of this host's share of the training split (every P-th example of
    P hosts: the hosts split the counting), counted once and kept in the workdir.

    Counting reads the whole share, which takes minutes for WMT; a resumed run reads the
    saved count instead. (Training reads another 1/P of each epoch, `pipeline.HostRows`;
    the share counted here is a sample of the same split.)
    """
    tokenizer_name = {"byte": "byte", "sentencepiece": f"sp{options.vocab_size}"}.get(
        options.tokenizer, "pretrained"
    )
    path = pathlib.Path(workdir) / (
        f"train_lengths_{text.cache_name}_{data_format(options).name}_{tokenizer_name}_"
        f"{options.max_source_length}x"
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
    text: TextData,
    tokenizer: Tokenizer,
    reports: dict[str, LengthReport],
    layout: HostLayout,
    first_batch_tokens: tuple[int, int],
) -> str:
    """A few lines for the log: what the data are and what the batches look like."""
    lengths = pipeline.max_lengths(options)  # Per feature of the data format.
    train_rows = [layout.num_devices, options.per_device_batch_size]
    eval_rows = [layout.num_devices, options.eval_batch_size]
    rows = layout.num_devices * options.per_device_batch_size
    real = dict(zip(("source", "target"), first_batch_tokens, strict=True))
    slots = {"source": lengths.get("inputs", 0) * rows, "target": lengths.get("targets", 0) * rows}
    real_line = ", ".join(
        f"{side} {real[side]:,} of {slots[side]:,} slots ({real[side] / slots[side]:.0%})"
        for side in real
        if slots[side]  # A decoder-only row has no source: its prompt is in the target.
    )
    (source, target), *_ = text.splits["train"].read([0])
    lines = [
        f"data: {text.description}; format {data_format(options).name}",
        f"tokenizer: {options.tokenizer}, vocab_size {tokenizer.vocab_size}",
        f"max lengths with EOS: {lengths}; longer examples:",
        *(f"  {report}" for report in reports.values()),
        "train batches: "
        + ", ".join(f"{key} {[*train_rows, length]}" for key, length in lengths.items())
        + f", {'packed' if packs_rows(options) else 'one example per row'}, shuffle seed "
        f"{options.seed}; host {layout.process_index + 1} of {layout.process_count}",
        f"real tokens in the first train batch (this host): {real_line}",
        "eval batches: "
        + ", ".join(f"{key} {[*eval_rows, length]}" for key, length in lengths.items())
        + ", one example per row, all-zero rows after the last",
        f"example: {source!r} -> {target!r}",
    ]
    return "\n".join(lines)
