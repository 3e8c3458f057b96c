"""Every dataset as text: per split, a random-access sequence of (source, target) strings.

This is where `config.dataset` is looked up. Synthetic tasks and local files are prepared by
our own TFDS builders into `<workdir>/data` (or `config.data_dir`); catalog datasets by
their TFDS builders into tfds' data dir (or `config.data_dir`). Either way the pipeline
downstream sees the same thing, a `TextSplit` per split.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

from flaxformer_lite.data import catalog, local_files, prepared, synthetic
from flaxformer_lite.data.errors import DataError
from flaxformer_lite.data.options import DataOptions
from flaxformer_lite.data.splits import TextSplit

DATASET_NAMES = (*synthetic.TASKS, *local_files.FORMATS, *catalog.CATALOG)


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
