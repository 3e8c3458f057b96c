"""Your own data from local files, prepared by TFDS like the synthetic tasks.

Four formats, chosen by `config.dataset`; every file is UTF-8 text, one example a line:

    "tsv"             train_file, eval_file           source<TAB>target
    "aligned"         source_file + target_file,      line i of one translates line i
                      eval_source_file + eval_target_file  of the other
    "text"            train_file, eval_file           a line of text, for language modelling
                                                      (empty source, the line as target)
    "classification"  train_file, eval_file           text<TAB>label (the label as target)

The eval files are optional: without them there is a train split only. Blank lines are
skipped. The builder config is named after the format and a hash of the files' contents, so
a dataset is prepared once, reused while the files stay the same, and prepared afresh when
they change. A missing or empty file, a line without its TAB or with bytes that are not
UTF-8 stops preparation with a `DataError` naming the option or the file and line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import pathlib
from collections.abc import Iterator

import tensorflow_datasets as tfds

from flaxformer_lite.data.errors import DataError
from flaxformer_lite.data.options import DataOptions

# For each format: the config options naming its files, per split. A split is present when
# its first option is set.
FORMATS = {
    "tsv": {"train": ("train_file",), "validation": ("eval_file",)},
    "aligned": {
        "train": ("source_file", "target_file"),
        "validation": ("eval_source_file", "eval_target_file"),
    },
    "text": {"train": ("train_file",), "validation": ("eval_file",)},
    "classification": {"train": ("train_file",), "validation": ("eval_file",)},
}
LINE_FORMATS = {
    "tsv": "source<TAB>target",
    "aligned": "one sentence",
    "text": "a line of text",
    "classification": "text<TAB>label",
}


def read_lines(path: str, keep_blank: bool = False) -> Iterator[tuple[int, str]]:
    """The (line number, text) of each line of a UTF-8 file; blank lines only if asked."""
    with open(path, "rb") as file:
        for number, raw in enumerate(file, start=1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as error:
                raise DataError(
                    f"{path}, line {number}, byte {error.start + 1}: "
                    f"{raw[error.start : error.end]!r} is not UTF-8; convert the file to UTF-8 "
                    f"(e.g. `iconv -f latin1 -t utf-8`)."
                ) from None
            if keep_blank or line.strip():
                yield number, line


def split_tab(path: str, number: int, line: str, layout: str) -> tuple[str, str]:
    """The two fields of a line that must hold exactly one TAB."""
    fields = line.split("\t")
    if len(fields) != 2:
        raise DataError(
            f"{path}, line {number}: found {len(fields) - 1} TABs, expected exactly one "
            f"({layout}); fix the line or remove it."
        )
    return fields[0], fields[1]


def read_pairs(format_name: str, paths: tuple[str, ...]) -> Iterator[tuple[str, str]]:
    """The (source, target) pairs in the files `paths` of one split."""
    layout = LINE_FORMATS[format_name]
    if format_name == "aligned":
        yield from _aligned_pairs(*paths)
        return
    (path,) = paths
    for number, line in read_lines(path):
        if format_name == "text":
            yield "", line
        else:
            yield split_tab(path, number, line, layout)


def _aligned_pairs(source_path: str, target_path: str) -> Iterator[tuple[str, str]]:
    # Blank lines are read too: they hold a place in the alignment.
    sources = read_lines(source_path, keep_blank=True)
    targets = read_lines(target_path, keep_blank=True)
    for source, target in itertools.zip_longest(sources, targets):
        if source is None or target is None:
            number = (source or target)[0]
            longer = source_path if target is None else target_path
            raise DataError(
                f"{longer}, line {number}: no matching line in the other file of the aligned "
                f"pair ({source_path}, {target_path}); both need the same number of lines."
            )
        if source[1].strip() or target[1].strip():
            yield source[1], target[1]


@dataclasses.dataclass(eq=False, kw_only=True)
class LocalFilesConfig(tfds.core.BuilderConfig):
    """A local-file format and, for each split, the files to read."""

    format_name: str = "tsv"
    split_files: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)


def builder_config(options: DataOptions) -> LocalFilesConfig:
    """The builder config for the files that `options` name; checks that they exist."""
    format_name = options.dataset
    split_files = {}
    for split, names in FORMATS[format_name].items():
        paths = tuple(getattr(options, name) for name in names)
        if split == "train" or paths[0] is not None:
            split_files[split] = tuple(
                _checked_path(name, path, format_name)
                for name, path in zip(names, paths, strict=True)
            )
    files = ", ".join(f"{split} {' + '.join(paths)}" for split, paths in split_files.items())
    return LocalFilesConfig(
        name=f"{format_name}-{_fingerprint(format_name, split_files)}",
        description=f"{format_name}: {files}",
        format_name=format_name,
        split_files=split_files,
    )


def _fingerprint(format_name: str, split_files: dict[str, tuple[str, ...]]) -> str:
    """A hash of the format and the files' contents: it changes when any file changes."""
    digest = hashlib.sha256(format_name.encode())
    for split, paths in sorted(split_files.items()):
        digest.update(f"\0{split}".encode())
        for path in paths:
            digest.update(b"\0")
            with open(path, "rb") as file:
                while chunk := file.read(1 << 20):
                    digest.update(chunk)
    return digest.hexdigest()[:16]


def _checked_path(option: str, path: str | None, format_name: str) -> str:
    layout = LINE_FORMATS[format_name]
    if path is None:
        raise DataError(
            f"config.{option} is not set: dataset {format_name!r} reads it; point it at a "
            f"UTF-8 file with one example per line ({layout})."
        )
    file = pathlib.Path(path).expanduser()
    if not file.is_file():
        raise DataError(
            f"config.{option}={path!r}: no such file; point it at a UTF-8 file with one "
            f"example per line ({layout})."
        )
    if file.stat().st_size == 0:
        raise DataError(
            f"config.{option}={path!r}: the file is empty; it needs one example per line "
            f"({layout})."
        )
    return str(file.resolve())


class LocalFiles(tfds.core.GeneratorBasedBuilder):
    """Examples read from local files; built from a `LocalFilesConfig`."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {"source": tfds.features.Text(), "target": tfds.features.Text()}
            ),
            supervised_keys=("source", "target"),
            disable_shuffling=True,  # Keep the files' order, so evaluation follows it too.
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # The files are local.
        config = self.builder_config
        return {
            split: self._generate_examples(config.format_name, paths)
            for split, paths in config.split_files.items()
        }

    def _generate_examples(self, format_name: str, paths: tuple[str, ...]):
        count = 0
        for count, (source, target) in enumerate(read_pairs(format_name, paths), start=1):
            yield count, {"source": source, "target": target}
        if count == 0:
            raise DataError(
                f"{' and '.join(paths)}: only blank lines; the file needs one example per line "
                f"({LINE_FORMATS[format_name]})."
            )
