"""Translate text with a trained model: `python -m flaxformer_lite.translate --workdir=DIR`.

Reads one sentence per line from --input (default stdin) and writes one
translation per line to --output (default stdout). The model, its tokenizer
and its parameters all come from the training run's workdir.
"""

import sys

import jax
import numpy as np
from absl import app, flags, logging

from flaxformer_lite.config import ConfigError
from flaxformer_lite.data import DataError
from flaxformer_lite.decoding import decode_batch
from flaxformer_lite.special_tokens import EOS_ID
from flaxformer_lite.trained_run import load_trained_run
from flaxformer_lite.training.checkpoint import CheckpointError


class Translator:
    """A trained model ready to translate: config, tokenizer and parameters of a workdir."""

    def __init__(self, workdir: str, step: int | None = None):
        run = load_trained_run(workdir, step, family="encoder_decoder")
        self.config, self.tokenizer, self.params = run.config, run.tokenizer, run.params
        self.model = run.family.module

    def encode(self, lines: list[str]) -> np.ndarray:
        """Sentences -> (B, max_source_length) ids, EOS-terminated, PAD-filled."""
        length = self.config.max_source_length
        rows = np.zeros((len(lines), length), np.int32)
        for row, line in enumerate(lines):
            ids = self.tokenizer.encode(line)[: length - 1] + [EOS_ID]
            rows[row, : len(ids)] = ids
        return rows

    def translate(
        self,
        lines: list[str],
        *,
        beam_size: int = 4,
        alpha: float = 0.6,
        max_length: int | None = None,
        batch_size: int = 64,
    ) -> list[str]:
        """Translations of `lines`, in order, decoded in batches."""
        max_length = max_length or self.config.max_decode_length
        outputs = []
        for start in range(0, len(lines), batch_size):
            chunk = lines[start : start + batch_size]
            inputs = self.encode(chunk + [""] * (batch_size - len(chunk)))  # one compiled shape
            tokens = decode_batch(
                self.model,
                self.params,
                inputs,
                max_decode_len=max_length,
                beam_size=beam_size,
                alpha=alpha,
            )
            outputs.extend(
                self.tokenizer.decode(row) for row in jax.device_get(tokens)[: len(chunk)]
            )
        return outputs


flags.DEFINE_string("workdir", None, "The training run's workdir.", required=True)
flags.DEFINE_string("input", None, "File with one sentence per line (default: stdin).")
flags.DEFINE_string("output", None, "Where translations go (default: stdout).")
flags.DEFINE_integer("beam_size", 4, "1 is greedy search.")
flags.DEFINE_float("alpha", 0.6, "GNMT length penalty exponent for beam search.")
flags.DEFINE_integer("max_length", None, "Longest output in tokens (default: the config's).")
flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    FLAGS = flags.FLAGS
    try:
        translator = Translator(FLAGS.workdir, FLAGS.step)
        lines = _read_lines(FLAGS.input)
    except (
        OSError,
        CheckpointError,
        ConfigError,
        DataError,
    ) as error:  # bad input: one line, no trace
        raise SystemExit(f"error: {error}") from None
    translations = translator.translate(
        lines, beam_size=FLAGS.beam_size, alpha=FLAGS.alpha, max_length=FLAGS.max_length
    )
    text = "".join(translation + "\n" for translation in translations)
    if FLAGS.output:
        with open(FLAGS.output, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)


def _read_lines(path: str | None) -> list[str]:
    """The lines of `path`, or of stdin when it is None."""
    if path is None:
        return sys.stdin.read().splitlines()
    with open(path) as f:
        return f.read().splitlines()


def run():
    app.run(main)


if __name__ == "__main__":
    run()
