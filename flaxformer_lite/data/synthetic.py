"""Synthetic tasks, the default data: copy, reverse, sort, multi-digit addition, is_sorted.

Each example is a pair of short strings over a small alphabet, so the byte tokenizer reads
them and a decoded prediction prints readably:

    copy      "3141"    -> "3141"
    reverse   "3141"    -> "1413"
    sort      "3141"    -> "1134"
    addition  "395+27"  -> "422"     (in base `num_symbols`; here 10)
    is_sorted "1134"    -> "sorted",  "1314" -> "unsorted"   (classification)

is_sorted is a classification task that needs attention: half the strings are sorted, the
other half are a sorted string with two unequal symbols swapped, so both classes hold the
same symbols in the same numbers and a bag-of-tokens model is at chance (50%); the model
must compare symbols at different positions.

A task is a TFDS builder like any catalog dataset: `download_and_prepare` writes it to
ArrayRecord files and `tfds.data_source` reads them back, without TensorFlow. The options
that shape the data are part of the builder config's name, so each choice is prepared once
and reused, and the data depend only on them: the same options and seed give the same data.

Splits: train, validation and test draw string lengths from [min_length, max_length];
test_long draws them from [max_length + 1, 2 * max_length], to measure how far a model
generalises beyond the lengths it was trained on. No validation or test input appears in
train, and no test input in validation.
"""

from __future__ import annotations

import dataclasses
import string

import numpy as np
import tensorflow_datasets as tfds

from flaxformer_lite.data.options import DataError, DataOptions

ALPHABET = string.digits + string.ascii_uppercase + string.ascii_lowercase  # ASCII order.
TASKS = ("copy", "reverse", "sort", "addition", "is_sorted")
SORTED_LABELS = ("unsorted", "sorted")  # is_sorted's labels, in id order
SPLITS = ("train", "validation", "test", "test_long")
MAX_REJECTED_FRACTION = 0.9  # Of the drawn training examples, when keeping held-out inputs out.


def random_strings(
    rng: np.random.Generator, count: int, alphabet: str, min_length: int, max_length: int
) -> list[str]:
    """`count` strings of uniformly random symbols and uniformly random lengths."""
    lengths = rng.integers(min_length, max_length + 1, size=count)
    symbols = np.array(list(alphabet))[rng.integers(len(alphabet), size=(count, max_length))]
    return ["".join(row[:length]) for row, length in zip(symbols, lengths, strict=True)]


def random_numerals(
    rng: np.random.Generator, count: int, digits: str, min_length: int, max_length: int
) -> list[str]:
    """Numerals in base `len(digits)` with no leading zero (except the numeral "0")."""
    numerals = random_strings(rng, count, digits, min_length, max_length)
    leading = rng.integers(1, len(digits), size=count)
    return [
        digits[first] + numeral[1:] if len(numeral) > 1 else numeral
        for numeral, first in zip(numerals, leading, strict=True)
    ]


def add_numerals(left: str, right: str, digits: str) -> str:
    """The sum of two base-`len(digits)` numerals, as a numeral."""
    base = len(digits)
    total = to_int(left, digits) + to_int(right, digits)
    numeral = ""
    while True:
        total, digit = divmod(total, base)
        numeral = digits[digit] + numeral
        if total == 0:
            return numeral


def to_int(numeral: str, digits: str) -> int:
    value = 0
    for digit in numeral:
        value = value * len(digits) + digits.index(digit)
    return value


def make_examples(
    task: str,
    rng: np.random.Generator,
    count: int,
    num_symbols: int,
    min_length: int,
    max_length: int,
) -> list[tuple[str, str]]:
    """`count` random (source, target) pairs of `task`.

    For addition the lengths are those of each addend, in digits.
    """
    alphabet = ALPHABET[:num_symbols]
    if task == "addition":
        lefts = random_numerals(rng, count, alphabet, min_length, max_length)
        rights = random_numerals(rng, count, alphabet, min_length, max_length)
        return [
            (f"{a}+{b}", add_numerals(a, b, alphabet)) for a, b in zip(lefts, rights, strict=True)
        ]
    sources = random_strings(rng, count, alphabet, min_length, max_length)
    if task == "is_sorted":
        return sorted_or_swapped(rng, sources)
    if task == "copy":
        return [(source, source) for source in sources]
    if task == "reverse":
        return [(source, source[::-1]) for source in sources]
    return [(source, "".join(sorted(source))) for source in sources]  # sort


def sorted_or_swapped(rng: np.random.Generator, strings: list[str]) -> list[tuple[str, str]]:
    """Each string sorted ("sorted"), or sorted with two unequal symbols swapped ("unsorted").

    Which of the two, uniformly at random. A string of one repeated symbol cannot be
    unsorted, so it stays sorted.
    """
    examples = []
    for string_, make_unsorted in zip(strings, rng.random(len(strings)) < 0.5, strict=True):
        symbols = sorted(string_)
        unequal = [(i, j) for i in range(len(symbols)) for j in range(i + 1, len(symbols))
                   if symbols[i] != symbols[j]]  # fmt: skip
        if make_unsorted and unequal:
            i, j = unequal[rng.integers(len(unequal))]
            symbols[i], symbols[j] = symbols[j], symbols[i]
            examples.append(("".join(symbols), SORTED_LABELS[0]))
        else:
            examples.append(("".join(symbols), SORTED_LABELS[1]))
    return examples


@dataclasses.dataclass(eq=False, kw_only=True)
class SyntheticConfig(tfds.core.BuilderConfig):
    """The options that shape a synthetic dataset."""

    task: str = "reverse"
    num_symbols: int = 10
    min_length: int = 4
    max_length: int = 12
    num_train_examples: int = 50_000
    num_eval_examples: int = 1_000
    seed: int = 0


def builder_config(options: DataOptions) -> SyntheticConfig:
    """The builder config for `options.dataset`, one of `TASKS`, named after its options."""
    task = options.dataset
    symbols = options.synthetic_num_symbols
    lengths = (options.synthetic_min_length, options.synthetic_max_length)
    counts = (options.num_train_examples, options.num_eval_examples)
    name = (
        f"{task}-{symbols}symbols-length{lengths[0]}to{lengths[1]}"
        f"-{counts[0]}train-{counts[1]}eval-seed{options.data_seed}"
    )
    return SyntheticConfig(
        name=name,
        description=f"{task}: {symbols} symbols, lengths {lengths[0]}..{lengths[1]}",
        task=task,
        num_symbols=symbols,
        min_length=lengths[0],
        max_length=lengths[1],
        num_train_examples=counts[0],
        num_eval_examples=counts[1],
        seed=options.data_seed,
    )


def generate_splits(config: SyntheticConfig) -> dict[str, list[tuple[str, str]]]:
    """All splits of the dataset described by `config`, held-out splits first."""
    short = (config.min_length, config.max_length)
    test = _draw(config, "test", short, config.num_eval_examples, exclude=set())
    held_out = {source for source, _ in test}
    validation = _draw(config, "validation", short, config.num_eval_examples, held_out)
    held_out |= {source for source, _ in validation}
    return {
        "train": _draw(config, "train", short, config.num_train_examples, held_out),
        "validation": validation,
        "test": test,
        "test_long": _draw(
            config, "test_long", (config.max_length + 1, 2 * config.max_length),
            config.num_eval_examples, exclude=set(),
        ),
    }  # fmt: skip


def _draw(
    config: SyntheticConfig,
    split: str,
    lengths: tuple[int, int],
    count: int,
    exclude: set[str],
) -> list[tuple[str, str]]:
    """`count` examples whose sources are not in `exclude`, from the split's own generator."""
    rng = np.random.default_rng([config.seed, SPLITS.index(split)])
    examples: list[tuple[str, str]] = []
    drawn = 0
    while len(examples) < count:
        if drawn > count / (1 - MAX_REJECTED_FRACTION):
            raise DataError(
                f"Synthetic task {config.task!r} has too few distinct inputs to keep "
                f"{split} apart from the held-out splits: raise config.synthetic_max_length "
                "or config.synthetic_num_symbols, or lower config.num_eval_examples."
            )
        batch = make_examples(config.task, rng, count - len(examples), config.num_symbols, *lengths)
        drawn += len(batch)
        examples += [(source, target) for source, target in batch if source not in exclude]
    return examples


class SyntheticTask(tfds.core.GeneratorBasedBuilder):
    """A synthetic task prepared by TFDS; built from a `SyntheticConfig`, never downloaded."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {"source": tfds.features.Text(), "target": tfds.features.Text()}
            ),
            supervised_keys=("source", "target"),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # Nothing to download.
        splits = generate_splits(self.builder_config)
        return {split: self._generate_examples(examples) for split, examples in splits.items()}

    def _generate_examples(self, examples: list[tuple[str, str]]):
        for index, (source, target) in enumerate(examples):
            yield index, {"source": source, "target": target}
