"""Image captioning data: images, each with a caption, as batches of `image` and `targets`.

Two sources, named by `config.dataset`:

    caption_shapes   built in, no download: scenes of one or more coloured shapes in a
                     row or a column, drawn on the fly from (data_seed, split, index), each
                     with the caption that follows from the picture, e.g.
                     "a red circle above a blue square". Shapes, colours, their number
                     and their order all vary, so the caption cannot be written without
                     looking: the decoder must read the image.
    caption_tsv      your own: `train_file` (and `eval_file`) hold `filename<TAB>caption`
                     lines, Flickr8k or COCO flattened (one line per caption; an image with
                     five captions has five lines). A filename is relative to the folder of
                     its TSV. Images are decoded with Pillow, converted to RGB and resized.

A batch is a dict of [devices, per_device_batch, ...] arrays:

    image    float32 (H, W, 3) in [0, 1], H = W = config.image_size
    targets  int32 (max_target_length,): caption EOS, PAD after it (no packing: one
             image per row)

Evaluation batches hold every held-out image once, all-zero rows after the last; generated
captions are scored against the untouched caption text (`Datasets.reference_texts`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import pathlib
from collections.abc import Callable, Iterator

import grain
import numpy as np
from PIL import Image, ImageDraw, UnidentifiedImageError

from flaxformer_lite.data import pipeline, shapes, tokenizers
from flaxformer_lite.data.datasets import Datasets, make_tokenizer
from flaxformer_lite.data.options import DataError, DataOptions
from flaxformer_lite.data.pipeline import HostLayout, LengthReport
from flaxformer_lite.data.tokenizers import Tokenizer
from flaxformer_lite.special_tokens import EOS_ID

DATASETS = ("caption_shapes", "caption_tsv")
SPLIT_SEEDS = {"train": 0, "validation": 1}  # Synthetic splits draw from disjoint streams.

# The built-in scenes: a 3 x 3 grid of cells, one shape at most per cell, drawn with the
# ViT's shapes (data/shapes.py) in colours far apart in RGB.
GRID = 3
COLOURS = ("red", "green", "blue", "yellow")
SHAPES = ("circle", "square", "triangle")
RELATIONS = {"row": "left of", "column": "above"}  # Read left to right, top to bottom.


@dataclasses.dataclass(frozen=True)
class CaptionOptions:
    """The image fields of the config that captioning data read, beside the data options."""

    image_size: int  # Images are image_size x image_size pixels ...
    image_channels: int  # ... of 3 (RGB) or 1 (grayscale) channels.
    max_objects: int  # Built-in scenes: 1 to max_objects shapes.

    @classmethod
    def from_config(cls, config) -> CaptionOptions:
        for name in ("image_size", "image_channels", "caption_max_objects"):
            if name not in config:
                raise DataError(
                    f"config has no field {name!r}: build the config from configs/default.py."
                )
        options = cls(config.image_size, config.image_channels, config.caption_max_objects)
        if not isinstance(options.image_size, int) or options.image_size < GRID * 4:
            raise DataError(
                f"config.image_size={options.image_size!r} is too small for captioning: use an "
                f"integer of at least {GRID * 4} (each of the {GRID} x {GRID} cells of a scene "
                "needs 4 pixels)."
            )
        if options.image_channels not in (1, 3):
            raise DataError(
                f"config.image_channels={options.image_channels!r} must be 3 (RGB) or 1 "
                "(grayscale)."
            )
        if not isinstance(options.max_objects, int) or not 1 <= options.max_objects <= GRID:
            raise DataError(
                f"config.caption_max_objects={options.max_objects!r} must be an integer from "
                f"1 to {GRID} (the shapes of a scene share one row or column)."
            )
        return options


# ----------------------------------------------------------------------------
# The built-in scenes.


def synthetic_scene(rng: np.random.Generator, image_size: int, max_objects: int):
    """One scene and its caption: (image (S, S, 3) float32 in [0, 1], caption).

    1 to max_objects shapes share a row (named left to right, "left of") or a column
    (top to bottom, "above"); each fills most of its cell, at a random size and offset.
    """
    count = int(rng.integers(1, max_objects + 1))
    arrangement = str(rng.choice(list(RELATIONS)))
    line = int(rng.integers(GRID))
    slots = np.sort(rng.choice(GRID, size=count, replace=False))  # reading order
    cell = image_size // GRID
    canvas = Image.new("RGB", (image_size, image_size))
    draw = ImageDraw.Draw(canvas)
    phrases = []
    for slot in slots:
        colour, shape = str(rng.choice(COLOURS)), str(rng.choice(SHAPES))
        column, row = (slot, line) if arrangement == "row" else (line, slot)
        side = int(rng.integers(cell * 3 // 4, cell + 1))
        left = column * cell + int(rng.integers(0, cell - side + 1))
        top = row * cell + int(rng.integers(0, cell - side + 1))
        shapes.draw_shape(
            draw, shape, shapes.COLOURS[colour], (left, top, left + side - 1, top + side - 1)
        )
        phrases.append(f"a {colour} {shape}")
    return np.asarray(canvas, np.float32) / 255.0, f" {RELATIONS[arrangement]} ".join(phrases)


def synthetic_example(seed: int, split: str, image_size: int, max_objects: int, index: int):
    """Scene `index` of a synthetic split, the same on every call: (image, caption)."""
    rng = np.random.default_rng((seed, SPLIT_SEEDS[split], index))
    return synthetic_scene(rng, image_size, max_objects)


# ----------------------------------------------------------------------------
# A folder of images and a filename<TAB>caption TSV.


@dataclasses.dataclass(frozen=True)
class CaptionLine:
    """One line of a caption TSV: the image's path, the caption, where it was read."""

    image_path: pathlib.Path
    caption: str
    where: str  # "file:line", for error messages.


def read_caption_tsv(path: str) -> list[CaptionLine]:
    """The lines of a `filename<TAB>caption` TSV; filenames are relative to its folder.

    A missing TSV, a line without exactly one TAB, an empty caption or an image file that
    does not exist is a `DataError` naming the file and line.
    """
    tsv = pathlib.Path(path)
    if not tsv.is_file():
        raise DataError(f"Caption TSV {tsv} does not exist: check config.train_file/eval_file.")
    lines = []
    with tsv.open(encoding="utf-8") as f:
        for number, text in enumerate(f, start=1):
            text = text.rstrip("\r\n")
            if not text.strip():
                continue
            where = f"{tsv}:{number}"
            fields = text.split("\t")
            if len(fields) != 2 or not fields[1].strip():
                raise DataError(
                    f"{where}: expected `filename<TAB>caption` (one TAB, a non-empty caption), "
                    f"got {text[:60]!r}."
                )
            image_path = tsv.parent / fields[0]
            if not image_path.is_file():
                raise DataError(
                    f"{where}: image file {image_path} does not exist: put it there, or fix "
                    "the filename (relative to the TSV's folder)."
                )
            lines.append(CaptionLine(image_path, fields[1].strip(), where))
    if not lines:
        raise DataError(f"Caption TSV {tsv} holds no `filename<TAB>caption` lines.")
    return lines


def load_image(
    path: pathlib.Path, image_size: int, channels: int = 3, *, where: str = ""
) -> np.ndarray:
    """The image at `path` as (S, S, channels) float32 in [0, 1], resized with Pillow.

    An unreadable file is a `DataError` naming it (and `where` it was listed).
    """
    listed = f" (listed at {where})" if where else ""
    try:
        with Image.open(path) as image:
            mode = "RGB" if channels == 3 else "L"
            pixels = image.convert(mode).resize((image_size, image_size), Image.Resampling.BICUBIC)
    except FileNotFoundError:
        raise DataError(f"Image file {path}{listed} does not exist.") from None
    except (UnidentifiedImageError, OSError) as error:
        raise DataError(
            f"Image file {path}{listed} is not a readable image ({error}): replace it, or "
            "remove its line."
        ) from None
    return np.asarray(pixels, np.float32).reshape(image_size, image_size, channels) / 255.0


# ----------------------------------------------------------------------------
# Examples, batches and the `Datasets` the trainer reads.


def encode_caption(tokenizer: Tokenizer, caption: str, max_length: int) -> np.ndarray:
    """caption -> its ids, EOS, cut to max_length keeping EOS. (<= max_length,) int32."""
    ids = [*tokenizer.encode(caption)[: max_length - 1], EOS_ID]
    return np.array(ids, np.int32)


def caption_row(image: np.ndarray, targets: np.ndarray, max_length: int) -> dict:
    """One row of a batch: the image, and the caption ids padded with PAD."""
    row = np.zeros(max_length, np.int32)
    row[: len(targets)] = targets
    return {"image": image, "targets": row}


@dataclasses.dataclass(frozen=True)
class CaptionSource:
    """A split's examples by index: `read(i)` -> (image, caption); `caption(i)` alone."""

    size: int
    read: Callable[[int], tuple[np.ndarray, str]]
    caption: Callable[[int], str]  # Without decoding the image: for the tokenizer's corpus.

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[np.ndarray, str]:
        return self.read(index)


def synthetic_source(options: DataOptions, caption: CaptionOptions, split: str) -> CaptionSource:
    size = options.num_train_examples if split == "train" else options.num_eval_examples
    read = functools.partial(
        synthetic_example, options.data_seed, split, caption.image_size, caption.max_objects
    )
    return CaptionSource(size, read, caption=lambda index: read(index)[1])


def tsv_source(path: str, caption: CaptionOptions) -> CaptionSource:
    lines = read_caption_tsv(path)

    def read(index: int) -> tuple[np.ndarray, str]:
        line = lines[index]
        image = load_image(
            line.image_path, caption.image_size, caption.image_channels, where=line.where
        )
        return image, line.caption

    return CaptionSource(len(lines), read, caption=lambda index: lines[index].caption)


class EncodeCaption(grain.transforms.Map):
    """A source index -> a padded row {image, targets}."""

    def __init__(self, source: CaptionSource, tokenizer: Tokenizer, max_length: int):
        self._source, self._tokenizer, self._max_length = source, tokenizer, max_length

    def map(self, index: int) -> dict:
        image, caption = self._source[int(index)]
        targets = encode_caption(self._tokenizer, caption, self._max_length)
        return caption_row(image, targets, self._max_length)


@dataclasses.dataclass
class CaptionDatasets(Datasets):
    """`Datasets` whose rows are images and captions; `eval_examples` hold both."""

    def eval_batches(self, split: str = "validation") -> Iterator[dict[str, np.ndarray]]:
        """Every example of `split` once, in fixed-shape batches, all-zero rows after the last.

        Every host gets the same number of batches, as the text pipeline's do.
        """
        examples = self._examples(split)
        rows = self.layout.num_devices * self.options.eval_batch_size
        rows_of_all_hosts = rows * self.layout.process_count
        blank = {key: np.zeros_like(value) for key, value in examples[0].items()}
        padding = [blank] * (-len(examples) % rows_of_all_hosts)
        shard = list(pipeline.host_shard(examples + padding, self.layout))
        for start in range(0, len(shard), rows):
            chunk = shard[start : start + rows]
            batch = {key: np.stack([row[key] for row in chunk]) for key in blank}
            yield pipeline.split_devices(self.layout.num_devices, batch)


def create_caption_datasets(config, workdir: str, layout: HostLayout) -> CaptionDatasets:
    """The captioning data `config.dataset` names, for this host, batched for its devices."""
    options = DataOptions.from_config(config)
    caption = CaptionOptions.from_config(config)
    if options.dataset == "caption_shapes":
        if caption.image_channels != 3:
            raise DataError(
                "config.dataset='caption_shapes' draws colours: set config.image_channels=3."
            )
        splits = {split: synthetic_source(options, caption, split) for split in SPLIT_SEEDS}
        cache_name = "caption_shapes"
        description = (
            f"caption_shapes: built-in scenes of 1 to {caption.max_objects} coloured shapes, "
            f"{caption.image_size}x{caption.image_size} RGB, drawn from seed {options.data_seed}"
        )
    elif options.dataset == "caption_tsv":
        if options.train_file is None:
            raise DataError(
                "config.dataset='caption_tsv' needs config.train_file: a filename<TAB>caption TSV."
            )
        splits = {"train": tsv_source(options.train_file, caption)}
        if options.eval_file is not None:
            splits["validation"] = tsv_source(options.eval_file, caption)
        digest = hashlib.sha256(str(pathlib.Path(options.train_file).resolve()).encode())
        cache_name = f"caption_tsv_{digest.hexdigest()[:16]}"
        description = f"caption_tsv: {options.train_file} ({len(splits['train'])} captions)"
    else:
        raise DataError(
            f"config.dataset={options.dataset!r} is not a captioning dataset: choose one of "
            f"{DATASETS} for config.model='image_captioning'."
        )
    train = splits["train"]
    tokenizer = make_tokenizer(
        options,
        cache_name,
        lambda: tokenizers.corpus(
            (("", train.caption(index)) for index in range(len(train))),
            options.sentencepiece_max_corpus_chars,
        ),
        workdir,
        layout.process_index,
    )
    max_length = options.max_target_length
    eval_examples, eval_references, reports = {}, {}, {}
    for split, source in splits.items():
        if split == "train":
            continue
        images_and_captions = [source[index] for index in range(len(source))]
        eval_references[split] = [text for _, text in images_and_captions]
        eval_examples[split] = [
            caption_row(image, encode_caption(tokenizer, text, max_length), max_length)
            for image, text in images_and_captions
        ]
        overlong = sum(
            len(tokenizer.encode(text)) + 1 > max_length for text in eval_references[split]
        )
        reports[split] = LengthReport(split, len(source), overlong, pipeline.EVALUATION_POLICY)

    indices = pipeline.shuffled_epochs(range(len(train)), options.seed)
    rows = pipeline.host_rows(indices, options, layout).map(
        EncodeCaption(train, tokenizer, max_length)
    )
    train_iter = iter(
        pipeline.batch_and_prefetch(rows.to_iter_dataset(pipeline.READ_OPTIONS), options, layout)
    )
    image_shape = [caption.image_size, caption.image_size, caption.image_channels]
    batch_rows = [layout.num_devices, options.per_device_batch_size]
    example_image, example_caption = train[0]
    info = "\n".join(
        [
            f"data: {description}; format captions",
            f"tokenizer: {options.tokenizer}, vocab_size {tokenizer.vocab_size}",
            *(f"  {report}" for report in reports.values()),
            f"train batches: image {[*batch_rows, *image_shape]}, targets "
            f"{[*batch_rows, max_length]} (caption EOS, captions cut to fit), shuffle seed "
            f"{options.seed}; host {layout.process_index + 1} of {layout.process_count}",
            f"example: a {'x'.join(map(str, example_image.shape))} image -> {example_caption!r}",
        ]
    )
    return CaptionDatasets(
        tokenizer=tokenizer,
        train_iter=train_iter,
        info=info,
        length_reports=reports,
        eval_examples=eval_examples,
        eval_references=eval_references,
        options=options,
        layout=layout,
        data_format="captions",
        eval_bytes={},
    )
