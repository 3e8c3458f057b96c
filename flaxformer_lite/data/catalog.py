"""Real datasets from the TFDS catalog, read through the same path as the synthetic tasks.

Each catalog dataset is fetched with `tfds.data_source` (which downloads and prepares it into
`data_dir` the first time) and each of its records becomes a (source, target) pair of text:

    wmt14_translate/de-en        translation     German -> English (reverse_translation: back)
    ted_hrlr_translate/pt_to_en  translation     Portuguese -> English (or back)
    tiny_shakespeare             document        each paragraph of the play is one example
    lm1b                         text            each sentence is one example
    imdb_reviews                 classification  review -> "neg" or "pos"
    mnist, fashion_mnist, cifar10  image         {"image", "label"} records, read by data/images.py

Language-modelling examples ("document", "text") have an empty source, so the decoder learns
the text unconditioned. A decoder-only model reads tiny_shakespeare whole instead, as one
stream of characters cut into windows (data/text_stream.py), and lm1b's sentences as lines
of text packed into rows. When a dataset cannot be fetched (no network, say) the `DataError`
says so in one line, with the way to prepare it offline.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from collections.abc import Sequence
from typing import Any

import tensorflow_datasets as tfds

from flaxformer_lite.data import prepared
from flaxformer_lite.data.options import DataError, DataOptions
from flaxformer_lite.data.prepared import TextSplit


@dataclasses.dataclass(frozen=True)
class CatalogEntry:
    """How the pipeline reads one catalog dataset."""

    kind: str  # "translation", "document", "text", "classification" or "image".
    splits: tuple[str, ...]  # The splits with examples to train or evaluate on.
    module: str | None = None  # Older builders register only once this module is imported.


CATALOG = {
    "wmt14_translate/de-en": CatalogEntry(
        "translation", ("train", "validation", "test"), "tensorflow_datasets.translate.wmt14"
    ),
    "ted_hrlr_translate/pt_to_en": CatalogEntry("translation", ("train", "validation", "test")),
    "tiny_shakespeare": CatalogEntry("document", ("train", "validation", "test")),
    "lm1b": CatalogEntry("text", ("train", "test")),
    "imdb_reviews": CatalogEntry("classification", ("train", "test")),
    "mnist": CatalogEntry("image", ("train", "test")),
    "fashion_mnist": CatalogEntry("image", ("train", "test")),
    "cifar10": CatalogEntry("image", ("train", "test")),
}


def fetch(
    name: str, options: DataOptions, process_index: int
) -> tuple[dict[str, Sequence[Any]], tfds.core.DatasetInfo]:
    """The raw TFDS sources of the catalog dataset `name`, and its `DatasetInfo`."""
    entry = CATALOG[name]
    if entry.module:
        importlib.import_module(entry.module)
    manual_dir = options.manual_dir
    try:
        sources = prepared.read_splits(
            name,
            entry.splits,
            data_dir=options.data_dir,
            process_index=process_index,
            download=options.download,
            download_config=tfds.download.DownloadConfig(manual_dir=manual_dir)
            if manual_dir
            else None,
        )
    except DataError:
        raise
    except Exception as error:  # Whatever failed, the user needs the same line.
        if options.download:
            first_line = (str(error).strip().splitlines() or [""])[0][:200]
            reason = f"{type(error).__name__}: {first_line}"
        else:
            reason = "config.download=False and it is not prepared in config.data_dir"
        raise DataError(
            f"Could not fetch catalog dataset {name!r} ({reason}). "
            f"To prepare it offline, put its source files in a folder and set "
            f"config.manual_dir to it (tfds' download_and_prepare then reads them from that "
            f"manual dir instead of the network), or copy a prepared {name} into "
            f"config.data_dir={options.data_dir or tfds.core.constants.DATA_DIR!r}."
        ) from None
    info = next(iter(sources.values())).dataset_info
    return sources, info


def text_splits(
    name: str, sources: dict[str, Sequence[Any]], info: tfds.core.DatasetInfo, reverse: bool
) -> dict[str, TextSplit]:
    """Each split of a catalog dataset as a `TextSplit` of (source, target) pairs."""
    kind = CATALOG[name].kind
    if kind == "image":
        raise DataError(
            f"config.dataset={name!r} holds images, not text: train it with config.model='vit' "
            "(configs/vit_default.py)."
        )
    if kind == "document":
        return {
            split: TextSplit(
                [p for record in source for p in paragraphs(record["text"])], paragraph_pair
            )
            for split, source in sources.items()
        }
    if kind == "translation":
        keys = info.supervised_keys[::-1] if reverse else info.supervised_keys
        to_pair = functools.partial(translation_pair, tuple(keys))
    elif kind == "classification":
        to_pair = functools.partial(classification_pair, tuple(info.features["label"].names))
    else:
        to_pair = text_pair
    return {split: TextSplit(source, to_pair) for split, source in sources.items()}


def translation_pair(keys: tuple[str, str], record: dict[str, Any]) -> tuple[str, str]:
    return prepared.as_text(record[keys[0]]), prepared.as_text(record[keys[1]])


def text_pair(record: dict[str, Any]) -> tuple[str, str]:
    return "", prepared.as_text(record["text"])


def paragraph_pair(paragraph: str) -> tuple[str, str]:
    return "", paragraph


def classification_pair(labels: tuple[str, ...], record: dict[str, Any]) -> tuple[str, str]:
    return prepared.as_text(record["text"]), labels[int(record["label"])]


def paragraphs(text: bytes | str) -> list[str]:
    """The blank-line separated paragraphs of a document, e.g. the speeches of a play."""
    parts = prepared.as_text(text).split("\n\n")
    return [part.strip("\n") for part in parts if part.strip()]
