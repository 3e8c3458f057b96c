"""The data options: every config field the input pipeline reads, their checks, and errors.

The trainer's config is one flat `ml_collections.ConfigDict` shared with the model and the
optimiser. `DataOptions.from_config` picks out the fields below. They have no defaults here:
`configs/default.py` is the one source of experiment defaults, and a config built from it
sets every field; a config that lacks one is a `DataError` naming it.

Every `DataError` message is a single line that names the file and line, or the config
option, that is wrong and says what to do about it. A trainer can catch `DataError` and
print `str(error)`: the user then sees that line instead of a stack trace.

Several hosts, one data pipeline: work whose result is a file every host reads (preparing a
dataset, training the tokenizer) is done by process 0 alone; the other processes poll until
the file is there (`wait_for`). Each host then reads its own rows of every global
batch (`pipeline.HostRows`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import jax
import ml_collections


class DataError(ValueError):
    """Bad data or a bad data option; the message says which and how to fix it."""


LENGTH_POLICIES = ("filter", "truncate")
TOKENIZERS = ("byte", "sentencepiece")

MAX_SYNTHETIC_SYMBOLS = 62  # digits, upper- and lower-case letters


@dataclasses.dataclass(frozen=True)
class DataOptions:
    """The data fields of the config; `configs/default.py` gives each its default."""

    # The model family ("encoder_decoder", "decoder_only"): it decides the data format,
    # the fields of a batch (data/formats.py).
    model: str

    # Encoder-only models. Masked LM: the fraction of a row's real tokens chosen for
    # prediction, and at most how many per row (None: ceil(mlm_probability * the row length)).
    # Classification: the label names in id order, comma-separated ("neg,pos").
    mlm_probability: float
    mlm_max_predictions: int | None
    class_labels: str | None

    # What to read. `dataset` is a synthetic task ("copy", "reverse", "sort", "addition"), a
    # local-file format ("tsv", "aligned", "text", "classification") or a catalog name
    # ("wmt14_translate/de-en", "ted_hrlr_translate/pt_to_en", "tiny_shakespeare", "lm1b",
    # "imdb_reviews").
    dataset: str
    # Where tfds keeps prepared datasets. None: `<workdir>/data` for synthetic and local
    # data (cheap to regenerate), tfds' own default ($TFDS_DATA_DIR or
    # ~/tensorflow_datasets) for catalog data (expensive to download).
    data_dir: str | None
    # Catalog data only: may tfds download and prepare a dataset that is not in `data_dir`?
    download: bool
    # Catalog data only: a folder holding the dataset's source files, downloaded by hand.
    manual_dir: str | None
    # Translation pairs: False reads them in the order of the tfds name ("de-en": German to
    # English), True the other way round.
    reverse_translation: bool

    # Synthetic tasks: symbols per string (or the base of the addition), the length range of
    # a training string (or of an addend, in digits), the example counts and the seed.
    synthetic_num_symbols: int
    synthetic_min_length: int
    synthetic_max_length: int
    num_train_examples: int
    num_eval_examples: int  # in each of validation, test and test_long
    data_seed: int

    # Local files. "tsv", "text" and "classification" read `train_file` and, if set,
    # `eval_file`; "aligned" reads `source_file`/`target_file` and, if set,
    # `eval_source_file`/`eval_target_file`.
    train_file: str | None
    eval_file: str | None
    source_file: str | None
    target_file: str | None
    eval_source_file: str | None
    eval_target_file: str | None

    # Tokenizer: "byte" (UTF-8 bytes, nothing to train) or "sentencepiece" (trained on the
    # training split, at most `vocab_size` pieces, from at most this many characters).
    tokenizer: str
    vocab_size: int
    sentencepiece_max_corpus_chars: int

    # Shapes. Lengths count tokens including the final EOS. Training rows are packed with
    # several examples when `pack_examples`; evaluation rows always hold one example.
    max_source_length: int
    max_target_length: int
    per_device_batch_size: int
    per_device_eval_batch_size: int | None  # None: per_device_batch_size
    pack_examples: bool
    # Training examples longer than the limits are dropped ("filter") or cut ("truncate",
    # keeping the final EOS). Either way they are counted and reported. Evaluation keeps every
    # example whatever this says: over-long ones are cut, and BLEU scores the full reference.
    overlong: str
    # A malformed line in a local file (not UTF-8, or a TSV line without exactly one TAB):
    # False skips it and reports the first few as file:line; True makes it a `DataError`.
    strict_data: bool

    # Reading: the shuffle seed, and the number of grain worker processes (0: tokenise in
    # threads of the training process).
    seed: int
    grain_worker_count: int

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> DataOptions:
        """Reads the data fields of `config`; a missing field is a `DataError` naming it."""
        names = [field.name for field in dataclasses.fields(cls)]
        for name in names:
            if name not in config:
                raise DataError(
                    f"config has no field {name!r}: build the config from configs/default.py "
                    "(`default.get_config()`), which sets every data field."
                )
        options = cls(**{name: config[name] for name in names})
        options.check()
        return options

    @property
    def eval_batch_size(self) -> int:
        """Examples per device in an evaluation batch."""
        return self.per_device_eval_batch_size or self.per_device_batch_size

    def check(self) -> None:
        """Raises `DataError` naming the first option whose value cannot work."""
        for name in ("max_source_length", "max_target_length"):
            if self._int(name) < 2:
                self._fail(
                    name,
                    "is too small: every sequence ends with EOS, so a limit needs room for "
                    "one token plus EOS; set it to 2 or more",
                )
        for name in ("per_device_batch_size", "vocab_size", "sentencepiece_max_corpus_chars"):
            if self._int(name) < 1:
                self._fail(name, "must be a positive integer")
        if (
            self.per_device_eval_batch_size is not None
            and self._int("per_device_eval_batch_size") < 1
        ):
            self._fail("per_device_eval_batch_size", "must be a positive integer or None")
        if self.overlong not in LENGTH_POLICIES:
            self._fail("overlong", f"must be one of {LENGTH_POLICIES}")
        if self.tokenizer not in TOKENIZERS:
            self._fail("tokenizer", f"must be one of {TOKENIZERS}")
        if not 2 <= self._int("synthetic_num_symbols") <= MAX_SYNTHETIC_SYMBOLS:
            self._fail("synthetic_num_symbols", f"must be between 2 and {MAX_SYNTHETIC_SYMBOLS}")
        if self._int("synthetic_min_length") < 1:
            self._fail("synthetic_min_length", "must be at least 1")
        if self._int("synthetic_max_length") < self.synthetic_min_length:
            self._fail("synthetic_max_length", "must be at least synthetic_min_length")
        for name in ("num_train_examples", "num_eval_examples"):
            if self._int(name) < 1:
                self._fail(name, "must be a positive integer")
        for name in ("data_seed", "seed", "grain_worker_count"):
            if self._int(name) < 0:
                self._fail(name, "must be a non-negative integer")
        if not 0.0 < self.mlm_probability < 1.0:
            self._fail("mlm_probability", "must lie in (0, 1)")
        if self.mlm_max_predictions is not None and self._int("mlm_max_predictions") < 1:
            self._fail("mlm_max_predictions", "must be a positive integer or None")
        for name in ("download", "reverse_translation", "pack_examples", "strict_data"):
            if not isinstance(getattr(self, name), bool):
                self._fail(name, "must be True or False")

    def _int(self, name: str) -> int:
        value = getattr(self, name)
        if isinstance(value, bool) or not isinstance(value, int):
            self._fail(name, "must be an integer")
        return value

    def _fail(self, name: str, problem: str) -> None:
        raise DataError(f"config.{name}={getattr(self, name)!r} {problem}.")


# Several hosts: process 0 prepares the files they share, the others wait for them.
WAIT_TIMEOUT_SECONDS = 4 * 3600.0  # Long enough for process 0 to download and prepare WMT.
POLL_SECONDS = 1.0


def process_index_and_count() -> tuple[int, int]:
    """This host's index and the number of hosts, as JAX sees them."""
    return jax.process_index(), jax.process_count()


def wait_for(ready: Callable[[], bool], what: str, timeout_seconds: float | None = None) -> None:
    """Polls `ready()` until it is true; after the timeout, raises `DataError`."""
    if timeout_seconds is None:
        timeout_seconds = WAIT_TIMEOUT_SECONDS
    deadline = time.monotonic() + timeout_seconds
    while not ready():
        if time.monotonic() > deadline:
            raise DataError(
                f"Gave up after {timeout_seconds:.0f} s waiting for {what}: check that process 0 "
                "is running and that all hosts share the workdir and config.data_dir."
            )
        time.sleep(POLL_SECONDS)
