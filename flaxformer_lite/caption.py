"""Caption images with a trained model: `python -m flaxformer_lite.caption --workdir=DIR a.png ...`.

Prints one line per image, `filename<TAB>caption`: the layout of the caption TSVs the
model trains on. The model, its tokenizer and its parameters come from the training
run's workdir (a `config.model=image_captioning` run); each image is read as the
training data were (Pillow, converted to the run's channels, resized to its
image_size, pixels in [0, 1]).
"""

from __future__ import annotations

import pathlib
import sys

import jax
import numpy as np
from absl import app, flags, logging

from flaxformer_lite import command_line
from flaxformer_lite.data.captions import load_image
from flaxformer_lite.decoding import decode_batch
from flaxformer_lite.trained_run import load_trained_run
from flaxformer_lite.training.checkpoint import CheckpointError


class TrainedCaptioner:
    """A trained image captioner: the config, tokenizer and parameters of a workdir."""

    def __init__(self, workdir: str, step: int | None = None):
        run = load_trained_run(workdir, step, families=("image_captioning",))
        self.config, self.tokenizer, self.params = run.config, run.tokenizer, run.params
        self.model = run.family.module

    def load_images(self, paths: list[str]) -> np.ndarray:
        """Image files -> (N, S, S, C) float32, read as the training data were."""
        size, channels = self.config.image_size, self.config.image_channels
        return np.stack([load_image(pathlib.Path(path), size, channels) for path in paths])

    def caption(
        self,
        images: np.ndarray,
        *,
        beam_size: int = 1,
        alpha: float = 0.6,
        max_length: int | None = None,
        batch_size: int = 32,
    ) -> list[str]:
        """A caption for each image (N, S, S, C), in order, decoded in batches."""
        max_length = max_length or self.config.max_decode_length
        captions = []
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            padding = np.zeros((batch_size - len(chunk), *chunk.shape[1:]), chunk.dtype)
            tokens = decode_batch(
                self.model,
                self.params,
                np.concatenate([chunk, padding]),  # one compiled shape for every batch
                max_decode_len=max_length,
                beam_size=beam_size,
                alpha=alpha,
            )
            captions.extend(
                self.tokenizer.decode(row) for row in jax.device_get(tokens)[: len(chunk)]
            )
        return captions


FLAGS = flags.FlagValues()  # the tool's own (command_line.py)
flags.DEFINE_string("workdir", None, "The training run's workdir.", flag_values=FLAGS)
flags.DEFINE_integer("beam_size", 1, "1 is greedy search.", flag_values=FLAGS)
flags.DEFINE_float("alpha", 0.6, "GNMT length penalty exponent for beam search.", flag_values=FLAGS)
flags.DEFINE_integer(
    "max_length", None, "Longest caption in tokens (default: the config's).", flag_values=FLAGS
)
flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).", flag_values=FLAGS)
flags.mark_flag_as_required("workdir", flag_values=FLAGS)


def main(argv):
    paths = argv[1:]
    logging.set_verbosity(logging.ERROR)  # orbax warns about read-only restores
    if not paths:
        raise SystemExit(
            "error: name at least one image: python -m flaxformer_lite.caption "
            "--workdir=DIR image.png ..."
        )
    try:
        captioner = TrainedCaptioner(FLAGS.workdir, FLAGS.step)
        images = captioner.load_images(paths)
        captions = captioner.caption(
            images, beam_size=FLAGS.beam_size, alpha=FLAGS.alpha, max_length=FLAGS.max_length
        )
    except (OSError, ValueError, CheckpointError) as error:  # bad input: one line, no trace
        raise SystemExit(f"error: {error}") from None
    sys.stdout.write(
        "".join(f"{path}\t{text}\n" for path, text in zip(paths, captions, strict=True))
    )


def run():
    app.run(main, flags_parser=command_line.own_flags_parser(FLAGS))


if __name__ == "__main__":
    run()
