"""Image classification data without TensorFlow: sources, normalisation, augmentation, grain.

    data = create_image_datasets(config, workdir, HostLayout(jax.local_device_count()))
    data.class_names                      # ("circle", "square", ...): label i is class_names[i]
    batch = next(data.train_iter)         # image (devices, B, H, W, C) float32, label (devices, B)
    for batch in data.eval_batches("validation"): ...

`config.dataset` picks the images:

    shapes          built in: coloured shapes drawn with Pillow (data/shapes.py), no download;
                    num_train_examples and num_eval_examples of them, from data_seed
    image_folder    config.image_dir/CLASS_NAME/*.png|jpg (the torchvision ImageFolder and
                    Keras layout), decoded with Pillow; classes sorted by name. Held out:
                    config.eval_image_dir, or image_eval_fraction of each class (data_seed)
    mnist, fashion_mnist, cifar10
                    the tfds catalog through `tfds.data_source` (data/catalog.py); their test
                    split is held out as "validation"

Every image is converted to `image_channels` (1 grayscale, 3 RGB) and resized to
`image_size` pixels square, as uint8 (H, W, C). Then, per split:

    train: shuffle (seed, anew each epoch) -> repeat
             -> random crop after `crop_padding` zero pixels, horizontal flip (seeded per
                element: the same seed gives the same batches, and a resumed run its next one)
             -> this host's rows of every global batch (pipeline.HostRows)
             -> normalise -> batch -> [devices, per_device_batch, ...]
    eval:  every image once, normalised, all-zero rows (loss_weights 0) after the last

Normalisation is per channel, (pixel / 255 - mean) / std, with the mean and standard
deviation of the training images (at most MAX_STATISTICS_IMAGES of them). They are written
to `<workdir>/image_data.json` with the class names, for inference (`read_image_record`).

A batch holds `image` (float32), `label` (int32) and `loss_weights` (float32: 1 for an
image, 0 for padding) per row. The trainer's iterator state is a grain iterator's, saved
in checkpoints like the text pipeline's.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import pathlib
from collections.abc import Iterator, Sequence
from typing import Any

import grain
import ml_collections
import numpy as np
from PIL import Image, UnidentifiedImageError

from flaxformer_lite.data import catalog, shapes
from flaxformer_lite.data.options import DataError, DataOptions
from flaxformer_lite.data.pipeline import (
    HostLayout,
    HostRows,
    host_shard,
    shuffled_epochs,
    split_devices,
)

CATALOG_IMAGE_DATASETS = ("mnist", "fashion_mnist", "cifar10")
IMAGE_DATASETS = ("shapes", "image_folder", *CATALOG_IMAGE_DATASETS)
# The image files a class folder may hold (torchvision's ImageFolder reads the same).
IMAGE_EXTENSIONS = (
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".gif",
    ".webp",
    ".tif",
    ".tiff",
    ".ppm",
    ".pgm",
)
MAX_STATISTICS_IMAGES = 2000  # Evenly spaced training images the channel statistics read.
RECORD_FILE = "image_data.json"
# Threads that decode and augment the next batches while the training step runs.
READ_OPTIONS = grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)

ImageExample = dict[str, Any]  # {"image": uint8 (H, W, C), "label": int}


def is_image_dataset(name: str) -> bool:
    return name in IMAGE_DATASETS


@dataclasses.dataclass(frozen=True)
class ImageOptions:
    """The config fields the image pipeline reads (configs/default.py gives each its default)."""

    dataset: str
    image_size: int
    image_channels: int
    image_dir: str | None
    eval_image_dir: str | None
    image_eval_fraction: float
    crop_padding: int
    horizontal_flip: bool
    num_train_examples: int  # shapes only
    num_eval_examples: int  # shapes only
    data_seed: int
    seed: int
    per_device_batch_size: int
    per_device_eval_batch_size: int | None

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> ImageOptions:
        names = [field.name for field in dataclasses.fields(cls)]
        missing = [name for name in names if name not in config]
        if missing:
            raise DataError(
                f"config has no field {missing[0]!r}: build the config from configs/default.py "
                "(`default.get_config()`), which sets every data field."
            )
        options = cls(**{name: config[name] for name in names})
        options.check()
        return options

    @property
    def eval_batch_size(self) -> int:
        return self.per_device_eval_batch_size or self.per_device_batch_size

    def check(self) -> None:
        """Raises `DataError` naming the first field whose value cannot work."""
        if self.dataset not in IMAGE_DATASETS:
            self._fail("dataset", f"is not an image dataset; choose one of {IMAGE_DATASETS}")
        if not _is_int(self.image_size) or self.image_size < 8:
            self._fail("image_size", "must be an integer of at least 8 (pixels per side)")
        if self.image_channels not in (1, 3):
            self._fail("image_channels", "must be 1 (grayscale) or 3 (RGB)")
        if not 0.0 < self.image_eval_fraction < 1.0:
            self._fail("image_eval_fraction", "must lie strictly between 0 and 1")
        if not _is_int(self.crop_padding) or self.crop_padding < 0:
            self._fail("crop_padding", "must be an integer >= 0 (0 turns random crops off)")
        if not isinstance(self.horizontal_flip, bool):
            self._fail("horizontal_flip", "must be True or False")
        if self.dataset == "image_folder" and not self.image_dir:
            self._fail(
                "image_dir", "must name a folder for dataset='image_folder' (root/CLASS/*.png)"
            )

    def _fail(self, name: str, problem: str) -> None:
        raise DataError(f"config.{name}={getattr(self, name)!r} {problem}.")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# --- Decoding: any image -> uint8 (H, W, C) at the model's size ------------------------------


def to_model_image(image: Image.Image | np.ndarray, size: int, channels: int) -> np.ndarray:
    """A PIL image or an (H, W[, C]) uint8 array -> uint8 (size, size, channels).

    Converted to grayscale ("L") or RGB as `channels` says, resized with Pillow's
    bilinear filter when its size differs.
    """
    if isinstance(image, np.ndarray):
        image = Image.fromarray(
            image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image
        )
    image = image.convert("L" if channels == 1 else "RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image, np.uint8).reshape(size, size, channels)


def load_image_file(path: str | pathlib.Path, size: int, channels: int) -> np.ndarray:
    """Decode one image file with Pillow; a file it cannot read is a DataError naming it."""
    try:
        with Image.open(path) as image:
            return to_model_image(image, size, channels)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DataError(
            f"Cannot decode image {path} ({type(error).__name__}: {error}): replace or delete it."
        ) from None


class ArraySource(Sequence):
    """Images already in memory at the model's size: (N, H, W, C) uint8 and (N,) labels."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> ImageExample:
        return {"image": self.images[index], "label": int(self.labels[index])}


class FileSource(Sequence):
    """Image files and their labels, decoded with Pillow when read."""

    def __init__(self, paths: Sequence[pathlib.Path], labels: Sequence[int], size, channels):
        self.paths, self.labels = list(paths), np.asarray(labels, np.int32)
        self.size, self.channels = size, channels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> ImageExample:
        image = load_image_file(self.paths[index], self.size, self.channels)
        return {"image": image, "label": int(self.labels[index])}


class CatalogSource(Sequence):
    """A tfds data source of {"image", "label"} records, converted when read."""

    def __init__(self, records: Sequence[dict], size: int, channels: int):
        self.records, self.size, self.channels = records, size, channels

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> ImageExample:
        record = self.records[int(index)]
        image = to_model_image(np.asarray(record["image"]), self.size, self.channels)
        return {"image": image, "label": int(record["label"])}


# --- A folder of class folders --------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ImageFolder:
    """root/CLASS_NAME/*.png|jpg, listed: class names sorted, every file with its label."""

    root: pathlib.Path
    class_names: tuple[str, ...]
    paths: tuple[pathlib.Path, ...]
    labels: np.ndarray  # (N,) int32, indices into class_names


def scan_image_folder(root: str, class_names: Sequence[str] | None = None) -> ImageFolder:
    """List root/CLASS_NAME/**/*.png|jpg|...; a file's label is its class folder's index in
    the sorted names.

    `class_names` (a held-out folder) fixes the mapping to the training folder's classes; its
    folders must be among them. Raises DataError for a missing root, a root without class
    folders, an unknown class, or a class folder without images (naming the folder), and for
    a file Pillow cannot identify (naming the file).
    """
    root_path = pathlib.Path(root)
    if not root_path.is_dir():
        raise DataError(f"Image folder {root} does not exist: point config.image_dir at it.")
    folders = sorted(p for p in root_path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(
            f"Image folder {root} has no class folders: lay it out as {root}/CLASS_NAME/*.png."
        )
    names = tuple(class_names) if class_names is not None else tuple(p.name for p in folders)
    paths, labels = [], []
    for folder in folders:
        if folder.name not in names:
            raise DataError(
                f"Class folder {folder} is not a class of the training images {names}: "
                "rename or remove it."
            )
        files = _image_files(folder)
        if not files:
            raise DataError(
                f"Class folder {folder} holds no images ({', '.join(IMAGE_EXTENSIONS)}): "
                "add some, or remove it."
            )
        paths.extend(files)
        labels.extend([names.index(folder.name)] * len(files))
    for path in paths:
        verify_image_file(path)
    return ImageFolder(root_path, names, tuple(paths), np.asarray(labels, np.int32))


def _image_files(folder: pathlib.Path) -> list[pathlib.Path]:
    """Every image file under a class folder, its subfolders too, sorted; hidden ones skipped."""
    return sorted(
        path
        for path in folder.rglob("*")
        if path.is_file()
        and path.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )


def verify_image_file(path: pathlib.Path) -> None:
    """Pillow's cheap integrity check (headers and, for PNG, checksums), before training."""
    try:
        with Image.open(path) as image:
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DataError(
            f"Cannot decode image {path} ({type(error).__name__}: {error}): replace or delete it."
        ) from None


def hold_out(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, held out): `fraction` of every class held out, chosen with `seed`.

    A class keeps at least one training image; both index arrays are sorted.
    """
    rng = np.random.default_rng(seed)
    train, held_out = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        count = min(round(fraction * len(members)), len(members) - 1)
        held_out.extend(members[:count])
        train.extend(members[count:])
    return np.sort(np.asarray(train, np.int64)), np.sort(np.asarray(held_out, np.int64))


# --- Every dataset as (class names, train source, held-out source) --------------------------


@dataclasses.dataclass(frozen=True)
class ImageSplits:
    """A dataset's classes and its two splits, each a random-access source of examples."""

    description: str  # One line for the log.
    class_names: tuple[str, ...]
    train: Sequence[ImageExample]
    validation: Sequence[ImageExample]


def load_image_splits(
    options: ImageOptions, data_options: DataOptions, process_index: int = 0
) -> ImageSplits:
    """The train and validation sources of `options.dataset` (the baseline reads these too)."""
    size, channels = options.image_size, options.image_channels
    if options.dataset == "shapes":
        train = shapes.shapes_dataset(
            options.num_train_examples, image_size=size, seed=options.data_seed
        )
        held_out = shapes.shapes_dataset(
            options.num_eval_examples, image_size=size, seed=options.data_seed + 1
        )
        return ImageSplits(
            f"shapes: {options.num_train_examples:,} generated images to train on and "
            f"{options.num_eval_examples:,} to hold out, data_seed {options.data_seed}",
            shapes.SHAPES,
            _array_source(*train, channels),
            _array_source(*held_out, channels),
        )
    if options.dataset == "image_folder":
        return _folder_splits(options)
    sources, info = catalog.fetch(options.dataset, data_options, process_index)
    return ImageSplits(
        f"{options.dataset}: tfds catalog, prepared in {info.data_dir}; its test split is "
        "held out as validation",
        tuple(info.features["label"].names),
        CatalogSource(sources["train"], size, channels),
        CatalogSource(sources["test"], size, channels),
    )


def _array_source(images: np.ndarray, labels: np.ndarray, channels: int) -> ArraySource:
    """Generated RGB images, converted to grayscale when the model reads one channel."""
    if channels == 1:
        images = np.stack([to_model_image(image, images.shape[1], 1) for image in images])
    return ArraySource(images, labels)


def _folder_splits(options: ImageOptions) -> ImageSplits:
    size, channels = options.image_size, options.image_channels
    folder = scan_image_folder(options.image_dir)
    if options.eval_image_dir:
        held_out = scan_image_folder(options.eval_image_dir, folder.class_names)
        train = FileSource(folder.paths, folder.labels, size, channels)
        validation = FileSource(held_out.paths, held_out.labels, size, channels)
        where = f"held out: {options.eval_image_dir}"
    else:
        train_index, eval_index = hold_out(
            folder.labels, options.image_eval_fraction, options.data_seed
        )
        paths = np.asarray(folder.paths, dtype=object)
        train = FileSource(paths[train_index], folder.labels[train_index], size, channels)
        validation = FileSource(paths[eval_index], folder.labels[eval_index], size, channels)
        where = (
            f"held out: {options.image_eval_fraction:.0%} of each class "
            f"(data_seed {options.data_seed})"
        )
    if len(validation) == 0:
        raise DataError(
            f"No image of {options.image_dir} is held out: every class has a single image; "
            "add images, or set config.eval_image_dir."
        )
    return ImageSplits(
        f"image folder {options.image_dir}: {len(folder.class_names)} classes, "
        f"{len(train):,} images to train on, {len(validation):,} held out ({where})",
        folder.class_names,
        train,
        validation,
    )


# --- Normalisation and augmentation ---------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Normalization:
    """Per-channel statistics of the training images, on the [0, 1] scale. (C,) each."""

    mean: np.ndarray
    std: np.ndarray

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """uint8 (..., H, W, C) -> float32 (..., H, W, C): zero mean, unit variance per channel."""
        return ((image.astype(np.float32) / 255.0 - self.mean) / self.std).astype(np.float32)


def channel_statistics(
    source: Sequence[ImageExample], max_images: int = MAX_STATISTICS_IMAGES
) -> Normalization:
    """Mean and standard deviation of every channel over (at most `max_images`) images.

    The images read are evenly spaced over the source, so the statistics are the same on
    every host and every run. A channel that never varies gets std 1.
    """
    count = min(len(source), max_images)
    picks = np.linspace(0, len(source) - 1, count).round().astype(np.int64)
    pixels = np.stack([source[int(index)]["image"] for index in picks]).astype(np.float64)
    pixels = pixels.reshape(-1, pixels.shape[-1]) / 255.0  # (N * H * W, C)
    std = pixels.std(axis=0)
    return Normalization(
        mean=pixels.mean(axis=0).astype(np.float32),
        std=np.where(std > 1e-6, std, 1.0).astype(np.float32),
    )


class Augment(grain.transforms.RandomMap):
    """Training augmentation: a random crop after zero padding, and a random horizontal flip.

    The crop pads `padding` black pixels on every side and cuts the original size back out
    at a random offset: the image moves by up to `padding` pixels. The generator grain
    passes is seeded by the pipeline seed and the element's index, so the same element of
    the stream is always augmented alike (deterministic, and resumable from any step).
    """

    def __init__(self, *, padding: int, flip: bool):
        self.padding, self.flip = padding, flip

    def random_map(self, example: ImageExample, rng: np.random.Generator) -> ImageExample:
        image = example["image"]  # (H, W, C) uint8
        if self.padding:
            height, width = image.shape[:2]
            pad = self.padding
            padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
            top, left = rng.integers(0, 2 * pad + 1, size=2)
            image = padded[top : top + height, left : left + width]
        if self.flip and rng.random() < 0.5:
            image = image[:, ::-1]
        return {**example, "image": np.ascontiguousarray(image)}


def to_row(normalize: Normalization, example: ImageExample | None, shape) -> dict[str, np.ndarray]:
    """One example as a batch row: normalised image, label, weight 1; None -> an all-zero row."""
    if example is None:
        return {
            "image": np.zeros(shape, np.float32),
            "label": np.int32(0),
            "loss_weights": np.float32(0.0),
        }
    return {
        "image": normalize(example["image"]),
        "label": np.int32(example["label"]),
        "loss_weights": np.float32(1.0),
    }


# --- grain pipelines ------------------------------------------------------------------------


def train_dataset(
    source: Sequence[ImageExample],
    normalize: Normalization,
    options: ImageOptions,
    layout: HostLayout,
) -> grain.IterDataset:
    """The endless, shuffled, augmented stream of training batches for this host."""
    rows = layout.num_devices * options.per_device_batch_size
    shape = (options.image_size, options.image_size, options.image_channels)
    examples = shuffled_epochs(source, options.seed).random_map(
        Augment(padding=options.crop_padding, flip=options.horizontal_flip), seed=options.seed
    )
    # Augmented by its place in the stream all hosts share, then this host's rows of it.
    examples = HostRows(examples, layout, rows)
    batches = examples.map(functools.partial(to_row, normalize, shape=shape)).batch(
        rows, drop_remainder=True
    )
    batches = batches.map(functools.partial(split_devices, layout.num_devices))
    return grain.experimental.ThreadPrefetchIterDataset(
        batches.to_iter_dataset(READ_OPTIONS), prefetch_buffer_size=2
    )


def eval_dataset(
    source: Sequence[ImageExample],
    normalize: Normalization,
    options: ImageOptions,
    layout: HostLayout,
) -> grain.MapDataset:
    """Fixed-shape batches holding each held-out image once; all-zero rows after the last."""
    rows = layout.num_devices * options.eval_batch_size
    shape = (options.image_size, options.image_size, options.image_channels)
    batches_per_host = math.ceil(len(source) / (rows * layout.process_count))
    total = batches_per_host * rows * layout.process_count
    indices = host_shard(range(total), layout)

    def row(index: int) -> dict[str, np.ndarray]:
        return to_row(normalize, source[index] if index < len(source) else None, shape)

    batches = grain.MapDataset.source(indices).map(row).batch(rows)
    return batches.map(functools.partial(split_devices, layout.num_devices))


# --- What the trainer gets ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ClassNames:
    """The label vocabulary of a classifier: `vocab_size` classes, each with its name."""

    names: tuple[str, ...]

    @property
    def vocab_size(self) -> int:
        return len(self.names)

    def decode(self, label: int) -> str:
        return self.names[int(label)]


@dataclasses.dataclass
class ImageDatasets:
    """What the trainer needs from image data, with the fields of `data.Datasets` it reads.

    `tokenizer` is the label vocabulary (`ClassNames`): the trainer sizes the model's head
    with `tokenizer.vocab_size`, the number of classes.
    """

    tokenizer: ClassNames
    train_iter: grain.DatasetIterator
    info: str
    normalization: Normalization
    options: ImageOptions
    layout: HostLayout
    validation: Sequence[ImageExample]
    data_format: str = "images"
    eval_bytes: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.tokenizer.names

    @property
    def eval_splits(self) -> tuple[str, ...]:
        return ("validation",)

    def eval_batches(self, split: str = "validation") -> Iterator[dict[str, np.ndarray]]:
        """A fresh pass over the held-out images, each once."""
        if split != "validation":
            raise DataError(f"Split {split!r} does not exist: image data hold out 'validation'.")
        batches = eval_dataset(self.validation, self.normalization, self.options, self.layout)
        return (batches[index] for index in range(len(batches)))

    def num_eval_examples(self, split: str = "validation") -> int:
        return len(self.validation)


def create_image_datasets(
    config: ml_collections.ConfigDict, workdir: str, layout: HostLayout
) -> ImageDatasets:
    """The image data of `config` for this host; writes `<workdir>/image_data.json`."""
    options = ImageOptions.from_config(config)
    splits = load_image_splits(options, DataOptions.from_config(config), layout.process_index)
    if len(splits.train) < layout.process_count:
        raise DataError(f"{splits.description}: fewer training images than hosts.")
    normalization = channel_statistics(splits.train)
    write_image_record(workdir, options, splits.class_names, normalization)
    train_iter = iter(train_dataset(splits.train, normalization, options, layout))
    shape = [options.image_size, options.image_size, options.image_channels]
    augmentation = ", ".join(
        [f"random crop (padding {options.crop_padding})"] * bool(options.crop_padding)
        + ["horizontal flip"] * options.horizontal_flip
    )
    info = "\n".join(
        [
            f"data: {splits.description}",
            f"classes ({len(splits.class_names)}): {', '.join(splits.class_names)}",
            f"images: {shape} uint8 -> float32, per-channel mean "
            f"{np.round(normalization.mean, 3).tolist()} std "
            f"{np.round(normalization.std, 3).tolist()}",
            f"train batches: image {[layout.num_devices, options.per_device_batch_size, *shape]}"
            f", augmentation: {augmentation or 'none'}, shuffle seed {options.seed}; host "
            f"{layout.process_index + 1} of {layout.process_count}",
            f"eval batches: {[layout.num_devices, options.eval_batch_size, *shape]}, "
            f"{len(splits.validation):,} held-out images, all-zero rows after the last",
        ]
    )
    return ImageDatasets(
        tokenizer=ClassNames(splits.class_names),
        train_iter=train_iter,
        info=info,
        normalization=normalization,
        options=options,
        layout=layout,
        validation=splits.validation,
    )


def write_image_record(
    workdir: str, options: ImageOptions, class_names: Sequence[str], normalization: Normalization
) -> None:
    """What inference needs to read an image as training did: size, channels, statistics, names."""
    path = pathlib.Path(workdir) / RECORD_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "image_size": options.image_size,
        "image_channels": options.image_channels,
        "mean": normalization.mean.tolist(),
        "std": normalization.std.tolist(),
        "class_names": list(class_names),
    }
    path.write_text(json.dumps(record, indent=2))


def read_image_record(workdir: str) -> tuple[dict, Normalization]:
    """The record a training run wrote (`write_image_record`) and its `Normalization`."""
    path = pathlib.Path(workdir) / RECORD_FILE
    if not path.exists():
        raise DataError(f"{path} does not exist: point --workdir at an image model's training run.")
    record = json.loads(path.read_text())
    normalization = Normalization(
        np.asarray(record["mean"], np.float32), np.asarray(record["std"], np.float32)
    )
    return record, normalization
