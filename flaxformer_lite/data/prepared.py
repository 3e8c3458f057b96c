"""Preparing a TFDS dataset once, and reading it back as text pairs a block at a time.

TFDS 4.9 can prepare a dataset once and read it back without TensorFlow, as long as the file
format is ArrayRecord: `download_and_prepare` runs a builder's generators and writes
ArrayRecord files (TFRecord would need `tf.io`), and `tfds.data_source` opens them as
random-access sequences of examples, which is what grain reads. Text features come back as
UTF-8 `bytes`.

Preparation writes into a temporary `incomplete.*` directory that TFDS renames into place
only when every split is written, and deletes if generation fails. So the cache never serves
a half-written dataset: after an interruption the directory is absent and the next run
prepares the data again.

Each split is then a `TextSplit`, read a block of records at a time. ArrayRecord pays a fixed
cost of about 0.1 ms per read call, whether the call returns one record or a thousand.
Reading a thousand shuffled records in one call is therefore some fifty times faster than
reading them one by one, so everything downstream reads in blocks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import tensorflow_datasets as tfds

from flaxformer_lite.data.options import DataError, wait_for

FILE_FORMAT = "array_record"  # The one format that TFDS writes and reads without TensorFlow.
READ_BLOCK_SIZE = 1024  # Records per read call.


def as_text(value: bytes | str) -> str:
    """A TFDS text feature as `str` (TFDS yields `bytes`; its test mocks yield `str`)."""
    return value.decode("utf-8") if isinstance(value, bytes) else value


def read_splits(
    name: str,
    splits: Sequence[str] | None,
    *,
    data_dir: str | None,
    process_index: int,
    builder_kwargs: dict[str, Any] | None = None,
    download: bool = True,
    download_config: tfds.download.DownloadConfig | None = None,
) -> dict[str, Sequence[Any]]:
    """The random-access sources of `splits` (None: all splits) of a TFDS dataset.

    Process 0 prepares the dataset if it is not in `data_dir` yet (if `download` allows);
    the other processes wait until it is there.
    """
    builder_kwargs = {**(builder_kwargs or {}), "file_format": FILE_FORMAT}
    if process_index != 0:
        builder = tfds.builder(name, data_dir=data_dir, **builder_kwargs)
        wait_for(builder.is_prepared, f"process 0 to prepare {name}")
        download = False
    try:
        sources = tfds.data_source(
            name,
            split=list(splits) if splits is not None else None,
            data_dir=data_dir,
            download=download,
            builder_kwargs=builder_kwargs,
            download_and_prepare_kwargs={"download_config": download_config}
            if download_config
            else None,
        )
    except ModuleNotFoundError as error:
        if error.name != "importlib_resources":
            raise
        raise DataError(
            "tensorflow-datasets needs the package importlib_resources to prepare datasets: "
            "`pip install importlib_resources`."
        ) from None
    if splits is None:
        return dict(sources)
    return dict(zip(splits, sources, strict=True))


@dataclasses.dataclass(frozen=True)
class TextSplit:
    """One split: its records, and how a record becomes a (source, target) pair."""

    records: Sequence[Any]  # Random access; TFDS sources also read many at once.
    to_pair: Callable[[Any], tuple[str, str]]

    def __len__(self) -> int:
        return len(self.records)

    def read(self, indices: Iterable[int]) -> list[tuple[str, str]]:
        """The pairs at `indices`, read in one call where the records allow it."""
        indices = [int(index) for index in indices]
        if hasattr(self.records, "__getitems__"):
            records = self.records.__getitems__(indices)
        else:
            records = [self.records[index] for index in indices]
        return [self.to_pair(record) for record in records]

    def pairs(self, indices: Sequence[int] | None = None) -> Iterator[tuple[str, str]]:
        """The pairs at `indices` (default: all), in order, read a block at a time."""
        indices = range(len(self)) if indices is None else indices
        for start in range(0, len(indices), READ_BLOCK_SIZE):
            yield from self.read(indices[start : start + READ_BLOCK_SIZE])
