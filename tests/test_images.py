"""Image data: class folders, bad files, the held-out split, normalisation, augmentation, resume."""

import numpy as np
import pytest
from PIL import Image

from configs import vit_default
from flaxformer_lite.data import DataError, images
from flaxformer_lite.data.pipeline import HostLayout


def write_png(path, pixels):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def pixels(seed, size=8):
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def options(**changes):
    config = vit_default.get_config()
    config.update(dict(image_size=8, per_device_batch_size=4, crop_padding=2) | changes)
    return images.ImageOptions.from_config(config)


def test_image_folder_maps_sorted_class_names_to_labels_and_decodes_pixels(tmp_path):
    written = {"zebra/b.png": pixels(0), "zebra/a.png": pixels(1), "ant/x.png": pixels(2)}
    for name, array in written.items():
        write_png(tmp_path / name, array)
    (tmp_path / "notes.txt").write_text("not a class folder")
    folder = images.scan_image_folder(str(tmp_path))
    assert folder.class_names == ("ant", "zebra")
    relative = [str(path.relative_to(tmp_path)) for path in folder.paths]
    assert relative == ["ant/x.png", "zebra/a.png", "zebra/b.png"]
    assert folder.labels.tolist() == [0, 1, 1]
    source = images.FileSource(folder.paths, folder.labels, size=8, channels=3)
    for index, name in enumerate(relative):
        np.testing.assert_array_equal(source[index]["image"], written[name])
    gray = images.FileSource(folder.paths, folder.labels, size=4, channels=1)[0]["image"]
    assert gray.shape == (4, 4, 1) and gray.dtype == np.uint8


def test_image_folder_reads_subfolders_other_formats_and_modes_as_imagefolder_does(tmp_path):
    rgb = pixels(3)
    (tmp_path / "cat").mkdir()
    (tmp_path / "dog").mkdir()
    Image.fromarray(rgb).save(tmp_path / "cat" / "x.bmp")
    write_png(tmp_path / "cat" / "day1" / "y.PNG", rgb)  # nested, upper-case suffix
    Image.fromarray(rgb).convert("RGBA").save(tmp_path / "cat" / "z.webp", lossless=True)
    Image.fromarray(rgb).convert("P").save(tmp_path / "dog" / "p.gif")
    write_png(tmp_path / "dog" / ".hidden" / "skip.png", rgb)
    folder = images.scan_image_folder(str(tmp_path))
    relative = [str(path.relative_to(tmp_path)) for path in folder.paths]
    assert relative == ["cat/day1/y.PNG", "cat/x.bmp", "cat/z.webp", "dog/p.gif"]
    assert folder.labels.tolist() == [0, 0, 0, 1]
    source = images.FileSource(folder.paths, folder.labels, size=8, channels=3)
    for index in range(3):  # lossless formats: the pixels come back, alpha dropped
        np.testing.assert_array_equal(source[index]["image"], rgb)
    palette = np.asarray(Image.fromarray(rgb).convert("P").convert("RGB"))
    np.testing.assert_array_equal(source[3]["image"], palette)


def test_a_corrupt_image_is_an_error_naming_the_file(tmp_path):
    write_png(tmp_path / "cat" / "good.png", pixels(0))
    (tmp_path / "dog").mkdir()
    broken = tmp_path / "dog" / "broken.png"
    broken.write_bytes(b"\x89PNG this is not really a png")
    with pytest.raises(DataError, match=f"Cannot decode image {broken}"):
        images.scan_image_folder(str(tmp_path))


def test_an_empty_class_folder_is_reported(tmp_path):
    write_png(tmp_path / "cat" / "good.png", pixels(0))
    (tmp_path / "dog").mkdir()
    (tmp_path / "dog" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match=f"Class folder {tmp_path / 'dog'} holds no images"):
        images.scan_image_folder(str(tmp_path))


def test_a_held_out_folder_with_an_unknown_class_is_refused(tmp_path):
    write_png(tmp_path / "cat" / "a.png", pixels(0))
    with pytest.raises(DataError, match="is not a class of the training images"):
        images.scan_image_folder(str(tmp_path), class_names=("dog",))


def test_hold_out_takes_the_fraction_of_every_class_reproducibly():
    labels = np.repeat([0, 1, 2], [10, 20, 1])
    train, held_out = images.hold_out(labels, 0.2, seed=3)
    assert np.bincount(labels[held_out], minlength=3).tolist() == [2, 4, 0]
    assert sorted([*train, *held_out]) == list(range(len(labels)))
    again, _ = images.hold_out(labels, 0.2, seed=3)
    other, _ = images.hold_out(labels, 0.2, seed=4)
    np.testing.assert_array_equal(train, again)
    assert not np.array_equal(train, other)


def test_channel_statistics_match_numpy():
    data = np.random.default_rng(0).integers(0, 256, (10, 4, 4, 3), dtype=np.uint8)
    data[..., 2] = 7  # a constant channel gets std 1, not a division by zero
    stats = images.channel_statistics(images.ArraySource(data, np.zeros(10)))
    scaled = data.astype(np.float64) / 255.0
    np.testing.assert_allclose(stats.mean, scaled.mean(axis=(0, 1, 2)), rtol=1e-6)
    np.testing.assert_allclose(stats.std[:2], scaled.std(axis=(0, 1, 2))[:2], rtol=1e-6)
    assert stats.std[2] == 1.0
    normalized = stats(data)
    np.testing.assert_allclose(normalized[..., :2].mean(axis=(0, 1, 2)), 0.0, atol=1e-5)


def test_augmentation_crops_a_window_of_the_padded_image_or_its_mirror():
    image = pixels(5)
    padded = np.pad(image, ((2, 2), (2, 2), (0, 0)))
    windows = [padded[top : top + 8, left : left + 8] for top in range(5) for left in range(5)]
    candidates = windows + [window[:, ::-1] for window in windows]
    augment = images.Augment(padding=2, flip=True)
    outputs = [
        augment.random_map({"image": image}, np.random.default_rng(s))["image"] for s in range(40)
    ]
    for output in outputs:
        assert any(np.array_equal(output, candidate) for candidate in candidates)
    assert len({output.tobytes() for output in outputs}) > 10  # it does move and flip


def shapes_source(count=24):
    data = np.random.default_rng(0).integers(0, 256, (count, 8, 8, 3), dtype=np.uint8)
    return images.ArraySource(data, np.arange(count) % 5)


def take(iterator, count):
    return [next(iterator) for _ in range(count)]


def test_training_batches_are_seeded_and_resume_where_they_stopped():
    source, layout = shapes_source(), HostLayout(num_devices=1)
    stats = images.channel_statistics(source)
    iterator = iter(images.train_dataset(source, stats, options(), layout))
    first = take(iterator, 2)
    state = iterator.get_state()
    rest = take(iterator, 8)  # past the end of the first epoch (24 images, 4 a batch)
    assert first[0]["image"].shape == (1, 4, 8, 8, 3) and first[0]["label"].dtype == np.int32

    again = iter(images.train_dataset(source, stats, options(), layout))
    for expected, batch in zip(first, take(again, 2), strict=True):
        np.testing.assert_array_equal(batch["image"], expected["image"])
    resumed = iter(images.train_dataset(source, stats, options(), layout))
    resumed.set_state(state)
    for expected, batch in zip(rest, take(resumed, 8), strict=True):
        np.testing.assert_array_equal(batch["image"], expected["image"])
        np.testing.assert_array_equal(batch["label"], expected["label"])

    other_seed = iter(images.train_dataset(source, stats, options(seed=1), layout))
    assert not np.array_equal(next(other_seed)["image"], first[0]["image"])


def test_hosts_augmented_batches_stacked_are_the_single_process_batch():
    source = shapes_source()
    stats = images.channel_statistics(source)
    opts = options(per_device_batch_size=2)
    single = take(iter(images.train_dataset(source, stats, opts, HostLayout(2))), 14)
    hosts = [
        take(iter(images.train_dataset(source, stats, opts, HostLayout(1, h, 2))), 14)
        for h in (0, 1)
    ]
    for step, expected in enumerate(single):  # 14 x 4 images: past two epochs of 24
        for key in ("image", "label"):
            stacked = np.concatenate([hosts[0][step][key], hosts[1][step][key]])
            np.testing.assert_array_equal(stacked, expected[key])


def test_evaluation_batches_hold_every_image_once_then_zero_rows():
    source, layout = shapes_source(10), HostLayout(num_devices=1)
    stats = images.channel_statistics(source)
    batches = list(
        images.eval_dataset(source, stats, options(per_device_eval_batch_size=4), layout)
    )
    labels = np.concatenate([b["label"][0] for b in batches])
    weights = np.concatenate([b["loss_weights"][0] for b in batches])
    assert len(batches) == 3 and weights.tolist() == [1.0] * 10 + [0.0] * 2
    np.testing.assert_array_equal(labels[:10], source.labels)
    np.testing.assert_allclose(batches[0]["image"][0, 1], stats(source.images[1]))


def test_image_folder_needs_image_dir():
    with pytest.raises(DataError, match="config.image_dir=None must name a folder"):
        options(dataset="image_folder")


def test_an_unprepared_catalog_dataset_offline_is_one_line(tmp_path):
    config = vit_default.get_config()
    config.update(dataset="mnist", image_size=28, image_channels=1)
    config.update(data_dir=str(tmp_path), download=False)
    with pytest.raises(DataError, match="Could not fetch catalog dataset 'mnist'") as error:
        images.create_image_datasets(config, str(tmp_path), HostLayout(1))
    assert "\n" not in str(error.value)
