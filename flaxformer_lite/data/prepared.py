"""Preparing a TFDS dataset once and reading it back, without TensorFlow.

TFDS 4.9 can do both halves without TensorFlow, as long as the file format is ArrayRecord:
`download_and_prepare` runs a builder's generators and writes ArrayRecord files (TFRecord
would need `tf.io`), and `tfds.data_source` opens them as random-access sequences of
examples, which is what grain reads. Text features come back as UTF-8 `bytes`.

Preparation writes into a temporary `incomplete.*` directory that TFDS renames into place
only when every split is written, and deletes if generation fails. So the cache never serves
a half-written dataset: after an interruption the directory is absent and the next run
prepares the data again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import tensorflow_datasets as tfds

from flaxformer_lite.data import hosts
from flaxformer_lite.data.errors import DataError

FILE_FORMAT = "array_record"  # The one format that TFDS writes and reads without TensorFlow.


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
        hosts.wait_for(builder.is_prepared, f"process 0 to prepare {name}")
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
