"""Translate text with a trained model: `python -m flaxformer_lite.translate --workdir=DIR`.

Reads one sentence per line from --input (default stdin) and writes one
translation per line to --output (default stdout). The model, its tokenizer
and its parameters all come from the training run's workdir (an encoder_decoder
or rnn_seq2seq run), or (--model_dir=DIR) from a Hugging Face T5 directory
(`flaxformer_lite.pretrained`):

    echo "translate English to German: Hello." | \
        python -m flaxformer_lite.translate --model_dir=t5-small --beam_size=1
"""

import sys

import jax
import numpy as np
from absl import app, flags, logging

from flaxformer_lite import pretrained
from flaxformer_lite.config import ConfigError
from flaxformer_lite.data import DataError
from flaxformer_lite.decoding import decode_batch
from flaxformer_lite.families import recurrent
from flaxformer_lite.special_tokens import EOS_ID
from flaxformer_lite.trained_run import load_trained_run
from flaxformer_lite.training.checkpoint import CheckpointError

# Longest output of a pretrained model unless --max_length says otherwise.
PRETRAINED_MAX_DECODE_LENGTH = 128

# The batch decoder of each family translate reads, by config.model. Each maps
# (model, params, inputs (B, S), *, max_decode_len, beam_size, alpha) -> tokens (B, L):
# greedy search at beam_size=1, else beam search's best hypothesis.
BATCH_DECODERS = {"encoder_decoder": decode_batch, "rnn_seq2seq": recurrent.translate_batch}


class Translator:
    """A model ready to translate: a training run's workdir (config, tokenizer and
    parameters), or a Hugging Face encoder-decoder directory (`model_dir`)."""

    def __init__(
        self, workdir: str | None = None, step: int | None = None, *, model_dir: str | None = None
    ):
        if (workdir is None) == (model_dir is None):
            raise ConfigError("Give --workdir (a training run) or --model_dir, not both.")
        if model_dir is not None:
            loaded = pretrained.load(model_dir)
            if loaded.kind != "seq2seq":
                raise ConfigError(
                    f"{model_dir} holds a {loaded.model_type} model; translate needs an "
                    "encoder-decoder (t5)."
                )
            self.tokenizer, self.params, self.model = loaded.tokenizer, loaded.params, loaded.model
            self.max_source_length = loaded.config.max_len
            self.max_decode_length = min(PRETRAINED_MAX_DECODE_LENGTH, loaded.config.max_len)
            self.decode_batch = decode_batch
        else:
            run = load_trained_run(workdir, step, families=tuple(BATCH_DECODERS))
            self.config, self.tokenizer, self.params = run.config, run.tokenizer, run.params
            self.model = run.family.module
            self.decode_batch = BATCH_DECODERS[self.config.model]
            self.max_source_length = self.config.max_source_length
            self.max_decode_length = self.config.max_decode_length
        self.from_checkpoint = model_dir is not None

    def encode(self, lines: list[str]) -> np.ndarray:
        """Sentences -> (B, max_source_length) ids, EOS-terminated, PAD-filled.

        A pretrained model's tokenizer adds the checkpoint's own markers (T5: </s>).
        """
        length = self.max_source_length
        rows = np.zeros((len(lines), length), np.int32)
        if self.from_checkpoint:
            ids = self.tokenizer.batch(lines, max_length=length)
            rows[:, : ids.shape[1]] = ids
            return rows
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
        max_length = max_length or self.max_decode_length
        outputs = []
        for start in range(0, len(lines), batch_size):
            chunk = lines[start : start + batch_size]
            inputs = self.encode(chunk + [""] * (batch_size - len(chunk)))  # one compiled shape
            tokens = self.decode_batch(
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


flags.DEFINE_string("workdir", None, "The training run's workdir.")
flags.DEFINE_string("model_dir", None, "A Hugging Face T5 directory (instead of --workdir).")
flags.DEFINE_string("input", None, "File with one sentence per line (default: stdin).")
flags.DEFINE_string("output", None, "Where translations go (default: stdout).")
flags.DEFINE_integer("beam_size", 4, "1 is greedy search.")
flags.DEFINE_float("alpha", 0.6, "GNMT length penalty exponent for beam search.")
flags.DEFINE_integer("max_length", None, "Longest output in tokens (default: the config's).")
flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")


def main(argv):
    del argv
    logging.set_verbosity(logging.ERROR)  # orbax warns about read-only restores
    FLAGS = flags.FLAGS
    try:
        translator = Translator(FLAGS.workdir, FLAGS.step, model_dir=FLAGS.model_dir)
        lines = _read_lines(FLAGS.input)
    except (
        OSError,
        CheckpointError,
        ConfigError,
        DataError,
        pretrained.PretrainedError,
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
