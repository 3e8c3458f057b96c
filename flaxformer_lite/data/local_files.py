"""Your own data from local files, prepared by TFDS like the synthetic tasks.

Four formats, chosen by `config.dataset`; every file is UTF-8 text, one example a line:

    "tsv"             train_file, eval_file           source<TAB>target
    "aligned"         source_file + target_file,      line i of one translates line i
                      eval_source_file + eval_target_file  of the other
    "text"            train_file, eval_file           a line of text, for the encoder-decoder
                                                      (empty source, the line as target); a
                                                      decoder-only model reads the file whole
                                                      instead (data/text_stream.py)
    "classification"  train_file, eval_file           label<TAB>text (the text as source, the
                                                      label as target)

The eval files are optional: without them there is a train split only. Blank lines are
skipped. The builder config is named after the format and a hash of the files' contents, so
a dataset is prepared once, reused while the files stay the same, and prepared afresh when
they change. A missing or empty file stops the run with a `DataError` naming the option.
A malformed line (bytes that are not UTF-8, or a TSV line without exactly one TAB) is never
split by guesswork: by default it is skipped, counted, and the first few are named as
file:line in the data's description; `config.strict_data=True` makes it a `DataError`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import pathlib
from collections.abc import Iterator

import tensorflow_datasets as tfds

from flaxformer_lite.data.options import DataError, DataOptions

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
    "classification": "label<TAB>text",
}


MAX_REPORTED_LINES = 5  # Malformed lines named in the log; the rest are only counted.


class MalformedLine(Exception):
    """A line that cannot be read as an example; the message says why."""


@dataclasses.dataclass
class MalformedLines:
    """The malformed lines skipped so far: how many, and where the first few are."""

    count: int = 0
    first: list[str] = dataclasses.field(default_factory=list)  # "file:line: problem"

    def add(self, where: str) -> None:
        self.count += 1
        if len(self.first) < MAX_REPORTED_LINES:
            self.first.append(where)

    def __str__(self) -> str:
        more = f"; {self.count - len(self.first)} more" if self.count > len(self.first) else ""
        return (
            f"skipped {self.count} malformed lines ({'; '.join(self.first)}{more}); "
            "config.strict_data=True stops on them instead"
        )


def decode_line(raw: bytes) -> str:
    """A raw line as text without its line break; `MalformedLine` if it is not UTF-8."""
    try:
        return raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as error:
        raise MalformedLine(
            f"byte {error.start + 1} ({raw[error.start : error.end]!r}) is not UTF-8"
        ) from None


def split_tab(line: str, layout: str) -> tuple[str, str]:
    """The two fields of a line that must hold exactly one TAB; never guesses a split."""
    fields = line.split("\t")
    if len(fields) != 2:
        raise MalformedLine(f"found {len(fields) - 1} TABs, expected exactly one ({layout})")
    return fields[0], fields[1]


def to_pair(format_name: str, line: str) -> tuple[str, str]:
    """A non-blank line of a single-file format as a (source, target) pair."""
    if format_name == "text":
        return "", line
    if format_name == "classification":
        label, text = split_tab(line, LINE_FORMATS[format_name])
        return text, label
    return split_tab(line, LINE_FORMATS[format_name])


def read_pairs(
    format_name: str,
    paths: tuple[str, ...],
    *,
    strict: bool,
    skipped: MalformedLines | None = None,
) -> Iterator[tuple[str, str]]:
    """The (source, target) pairs in the files `paths` of one split, blank lines skipped.

    A malformed line is a `DataError` naming file:line when `strict`; otherwise it is left
    out and recorded in `skipped`.
    """
    skipped = MalformedLines() if skipped is None else skipped
    if format_name == "aligned":
        yield from _aligned_pairs(*paths, strict=strict, skipped=skipped)
        return
    (path,) = paths
    with open(path, "rb") as file:
        for number, raw in enumerate(file, start=1):
            try:
                line = decode_line(raw)
                if line.strip():
                    yield to_pair(format_name, line)
            except MalformedLine as problem:
                _skip_or_fail(f"{path}:{number}: {problem}", strict, skipped)


def _aligned_pairs(
    source_path: str, target_path: str, *, strict: bool, skipped: MalformedLines
) -> Iterator[tuple[str, str]]:
    # Blank lines are read too: they hold a place in the alignment. A malformed line drops
    # its whole pair, so the lines after it stay aligned.
    with open(source_path, "rb") as sources, open(target_path, "rb") as targets:
        lines = itertools.zip_longest(sources, targets)
        for number, (source, target) in enumerate(lines, start=1):
            if source is None or target is None:
                longer = source_path if target is None else target_path
                raise DataError(
                    f"{longer}:{number}: no matching line in the other file of the aligned pair "
                    f"({source_path}, {target_path}); both need the same number of lines."
                )
            try:
                pair = decode_line(source), decode_line(target)
            except MalformedLine as problem:
                where = f"{source_path}:{number} / {target_path}:{number}: {problem}"
                _skip_or_fail(where, strict, skipped)
                continue
            if pair[0].strip() or pair[1].strip():
                yield pair


def _skip_or_fail(where: str, strict: bool, skipped: MalformedLines) -> None:
    if strict:
        raise DataError(
            f"{where}; fix or remove the line, or set config.strict_data=False to skip "
            "malformed lines."
        )
    skipped.add(where)


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
                checked_path(name, path, format_name)
                for name, path in zip(names, paths, strict=True)
            )
    files = ", ".join(f"{split} {' + '.join(paths)}" for split, paths in split_files.items())
    skipped = find_malformed_lines(format_name, split_files, strict=options.strict_data)
    return LocalFilesConfig(
        name=f"{format_name}-{_fingerprint(format_name, split_files)}",
        description=f"{format_name}: {files}" + (f"; {skipped}" if skipped.count else ""),
        format_name=format_name,
        split_files=split_files,
    )


def find_malformed_lines(
    format_name: str, split_files: dict[str, tuple[str, ...]], *, strict: bool
) -> MalformedLines:
    """Reads every file once, before preparation, so that even a run whose data are already
    prepared reports the lines it skips (and a strict run stops before preparing anything)."""
    skipped = MalformedLines()
    for paths in split_files.values():
        for _pair in read_pairs(format_name, paths, strict=strict, skipped=skipped):
            pass  # Only the malformed lines matter here.
    return skipped


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


def checked_path(option: str, path: str | None, format_name: str) -> str:
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
        # Malformed lines were found (or refused) by `builder_config`; here they are left out.
        pairs = read_pairs(format_name, paths, strict=False)
        for count, (source, target) in enumerate(pairs, start=1):
            yield count, {"source": source, "target": target}
        if count == 0:
            raise DataError(
                f"{' and '.join(paths)}: only blank lines; the file needs one example per line "
                f"({LINE_FORMATS[format_name]})."
            )
