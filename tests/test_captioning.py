"""Image captioning: the data, cached decoding, a tiny run through train.py and the CLI.

References: greedy decoding replayed step by step with the full forward (no cache);
the pixels of each built-in scene for its caption; Pillow for a TSV's images; the
library's own `decode_batch` on the same pixels for the CLI.
"""

import functools
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from tiny_training import REPO, run_train_py

from configs.default import get_config
from flaxformer_lite.caption import TrainedCaptioner
from flaxformer_lite.data import ByteTokenizer, DataError, shapes
from flaxformer_lite.data import captions as caption_data
from flaxformer_lite.data.pipeline import HostLayout
from flaxformer_lite.decoding import decode_batch
from flaxformer_lite.families import make_family
from flaxformer_lite.special_tokens import BOS_ID, EOS_ID, PAD_ID

TINY_CAPTIONING = dict(
    model="image_captioning",
    dataset="caption_shapes",
    image_size=12,
    patch_size=4,
    caption_max_objects=1,  # "a yellow triangle" + EOS: 18 bytes
    d_model=32,
    num_heads=2,
    d_ff=64,
    num_encoder_layers=1,
    num_decoder_layers=1,
    dropout_rate=0.0,
    max_target_length=20,
    max_decode_length=20,
    num_train_examples=256,
    num_eval_examples=16,
    per_device_batch_size=8,
    per_device_eval_batch_size=8,
    pack_examples=False,
)


def tiny_config(**changes):
    config = get_config()
    config.update({**TINY_CAPTIONING, **changes})
    return config


def colour_centre(image: np.ndarray, colour: str) -> np.ndarray:
    """The (x, y) centre of the pixels of `colour` in image (H, W, 3)."""
    target = np.array(shapes.COLOURS[colour]) / 255.0
    ys, xs = np.nonzero(np.abs(image - target).max(axis=-1) < 0.02)
    return np.array([xs.mean(), ys.mean()])


def test_a_built_in_caption_says_what_the_picture_shows():
    """Every colour named is in the picture, in the order the relation names."""
    relations = 0
    for index in range(40):
        image, caption = caption_data.synthetic_example(0, "train", 24, 2, index)
        words = caption.split()
        colours = [words[i + 1] for i, word in enumerate(words) if word == "a"]
        centres = [colour_centre(image, colour) for colour in colours]
        assert all(np.isfinite(c).all() for c in centres), caption
        if len(colours) == 2 and colours[0] != colours[1]:
            axis = 0 if "left of" in caption else 1  # x for "left of", y for "above"
            assert centres[0][axis] < centres[1][axis], caption
            relations += 1
    assert relations >= 10  # the check above ran on enough two-shape scenes
    # Captions vary in length (one shape or two) and in which shape comes first.
    captions = {caption_data.synthetic_example(0, "train", 24, 2, i)[1] for i in range(40)}
    assert {c.split().count("a") for c in captions} == {1, 2} and len(captions) > 30


def write_tsv(folder, lines: list[str]):
    path = folder / "captions.tsv"
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def test_a_caption_tsv_is_read_with_its_images(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    pixels = {}
    for name in ("a.png", "b.png"):
        pixels[name] = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
        Image.fromarray(pixels[name]).save(tmp_path / "img" / name)
    train = write_tsv(tmp_path, ["img/a.png\tnoise one", "", "img/b.png\tnoise two"])
    config = tiny_config(dataset="caption_tsv", train_file=train, eval_file=train)
    data = caption_data.create_caption_datasets(config, str(tmp_path), HostLayout(1))
    assert data.reference_texts() == ["noise one", "noise two"]
    (batch,) = data.eval_batches()
    assert batch["image"].shape == (1, 8, 12, 12, 3)
    np.testing.assert_allclose(batch["image"][0, 1], pixels["b.png"] / 255.0, atol=1e-6)
    expected = [*ByteTokenizer().encode("noise two"), EOS_ID]
    np.testing.assert_array_equal(batch["targets"][0, 1, : len(expected)], expected)
    assert (batch["targets"][0, 1, len(expected) :] == PAD_ID).all()
    assert not batch["targets"][0, 2:].any()  # rows after the last example are empty
    train_batch = next(data.train_iter)
    assert train_batch["image"].shape == (1, 8, 12, 12, 3)


def test_caption_tsv_errors_name_the_file_and_line(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "ok.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    missing = write_tsv(tmp_path, ["ok.png\tfine", "gone.png\tlost"])
    with pytest.raises(DataError, match=r"captions.tsv:2: image file .*gone.png does not exist"):
        caption_data.read_caption_tsv(missing)
    no_tab = write_tsv(tmp_path, ["ok.png fine"])
    with pytest.raises(DataError, match=r"captions.tsv:1: expected `filename<TAB>caption`"):
        caption_data.read_caption_tsv(no_tab)
    with pytest.raises(DataError, match=r"Caption TSV .*nowhere.tsv does not exist"):
        caption_data.read_caption_tsv(str(tmp_path / "nowhere.tsv"))
    with pytest.raises(DataError, match=r"broken.png \(listed at x.tsv:3\) is not a readable"):
        caption_data.load_image(tmp_path / "broken.png", 12, where="x.tsv:3")


@pytest.fixture(scope="module")
def random_captioner():
    """A tiny captioner with random parameters scaled up, so that greedy output changes
    from token to token and from image to image."""
    family = make_family(tiny_config(num_decoder_layers=2), ByteTokenizer.vocab_size)
    params = jax.tree.map(lambda x: 3.0 * x, family.init_params(jax.random.key(0)))
    images = jax.random.uniform(jax.random.key(1), (3, 12, 12, 3))
    return family.module, params, images


def greedy_without_cache(model, params, images, length: int) -> np.ndarray:
    """Greedy decoding by the full forward: step t re-reads BOS and every token so far.

    The decoder inputs have one width throughout (one compilation): causal attention
    keeps position t from seeing the PAD after it.
    """
    full_forward = jax.jit(functools.partial(model.apply, method=model.decode))
    encoded = model.apply({"params": params}, images, method=model.encode)
    decoder_inputs = np.full((images.shape[0], length), PAD_ID, np.int32)
    decoder_inputs[:, 0] = BOS_ID
    tokens = np.zeros((images.shape[0], length), np.int32)
    for position in range(length):
        logits = full_forward({"params": params}, encoded, images, decoder_inputs)[:, position]
        logits = logits.at[:, PAD_ID].set(-jnp.inf)  # the decoders never choose PAD
        tokens[:, position] = np.asarray(logits.argmax(-1))
        if position + 1 < length:
            decoder_inputs[:, position + 1] = tokens[:, position]
    after_eos = np.cumsum(tokens == EOS_ID, axis=1) - (tokens == EOS_ID) > 0
    return np.where(after_eos, PAD_ID, tokens)


def test_captions_decoded_with_the_cache_equal_the_full_forward(random_captioner):
    model, params, images = random_captioner
    cached = np.asarray(decode_batch(model, params, images, max_decode_len=12))
    np.testing.assert_array_equal(cached, greedy_without_cache(model, params, images, 12))
    assert len({tuple(row) for row in cached}) > 1  # the captions depend on the image
    assert len(set(cached[0])) > 2  # and change along the caption


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory):
    """A tiny captioner trained for a few steps by train.py."""
    workdir = tmp_path_factory.mktemp("caption_run")
    flags = [f"--config.{key}={value}" for key, value in TINY_CAPTIONING.items()]
    result = run_train_py(
        f"--workdir={workdir}",
        *flags,
        "--config.num_train_steps=6",
        "--config.eval_every_steps=6",
        "--config.checkpoint_every_steps=6",
        "--config.log_every_steps=3",
        "--config.eval_bleu=True",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    final = result.stdout.strip().splitlines()[-1]
    assert final.startswith("final: step=6") and "exact_match=" in final and "bleu=" in final
    return workdir


def test_the_caption_cli_prints_what_the_library_decodes(trained_workdir, tmp_path):
    paths = []
    for index in range(2):
        image, _ = caption_data.synthetic_example(5, "train", 12, 1, index)
        paths.append(str(tmp_path / f"scene{index}.png"))
        Image.fromarray(np.round(image * 255).astype(np.uint8)).save(paths[-1])
    result = subprocess.run(
        [sys.executable, "-m", "flaxformer_lite.caption", f"--workdir={trained_workdir}", *paths],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]

    captioner = TrainedCaptioner(str(trained_workdir))
    images = np.stack(
        [np.asarray(Image.open(path), np.float32) / 255.0 for path in paths]
    )  # the same pixels, read without the CLI's loader
    tokens = decode_batch(captioner.model, captioner.params, images, max_decode_len=20)
    expected = [captioner.tokenizer.decode(row) for row in np.asarray(tokens)]
    assert result.stdout.splitlines() == [f"{p}\t{c}" for p, c in zip(paths, expected, strict=True)]


def test_the_caption_cli_says_what_is_wrong_in_one_line(trained_workdir, tmp_path):
    def caption(*args):
        return subprocess.run(
            [sys.executable, "-m", "flaxformer_lite.caption", *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )

    missing = caption(f"--workdir={trained_workdir}", str(tmp_path / "nothing.png"))
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert missing.stderr.strip().splitlines()[-1] == (
        f"error: Image file {tmp_path / 'nothing.png'} does not exist."
    )
    config = json.loads((trained_workdir / "config.json").read_text())
    other = tmp_path / "other_run"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({**config, "model": "encoder_decoder"}))
    wrong_family = caption(f"--workdir={other}", "x.png")
    assert wrong_family.returncode == 1 and "Traceback" not in wrong_family.stderr
    assert "holds a config.model='encoder_decoder' run" in wrong_family.stderr.splitlines()[-1]
