r"""Sentence embeddings from a pretrained encoder: `python -m flaxformer_lite.embed`.

    python -m flaxformer_lite.embed --model_dir=all-MiniLM-L6-v2 --input=lines.txt \
        --output=embeddings.npy

One embedding per input line (--input, default stdin), written as a (lines, D) float32
.npy file, or as text (one line of numbers per embedding) to stdout. The model is a
BERT-family checkpoint read by `flaxformer_lite.pretrained.load`. A sentence-transformers
directory says how to turn token states into one vector: modules.json lists its modules
(Transformer, Pooling, Normalize), 1_Pooling/config.json the pooling mode, and
sentence_bert_config.json the longest input. Without them: mean pooling over the real
tokens, then L2 normalisation.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from flaxformer_lite import command_line, pretrained
from flaxformer_lite.special_tokens import PAD_ID

# Pooling modes in the order sentence-transformers concatenates them, and their legacy
# boolean keys in 1_Pooling/config.json.
POOLING_MODES = {
    "cls": "pooling_mode_cls_token",
    "max": "pooling_mode_max_tokens",
    "mean": "pooling_mode_mean_tokens",
    "mean_sqrt_len_tokens": "pooling_mode_mean_sqrt_len_tokens",
    "lasttoken": "pooling_mode_lasttoken",
}
KNOWN_MODULES = ("Transformer", "Pooling", "Normalize")


class EmbedError(ValueError):
    """A model directory or option embed cannot use; the one-line message names the fix."""


@dataclasses.dataclass(frozen=True)
class SentencePooling:
    """How token states (B, S, D) become one vector per sentence."""

    modes: tuple[str, ...] = ("mean",)  # concatenated, in this order
    normalize: bool = True  # to unit L2 norm
    max_length: int | None = None  # tokens per sentence, special tokens included
    lowercase: bool = False  # lower-case the text first (sentence_bert_config do_lower_case)
    transformer_dir: str = ""  # where the checkpoint sits, relative to the model directory


def read_pooling(model_dir: str) -> SentencePooling:
    """The pooling a sentence-transformers directory asks for; mean + L2 norm without one."""
    modules_path = os.path.join(model_dir, "modules.json")
    if not os.path.exists(modules_path):
        return SentencePooling(max_length=_tokenizer_max_length(model_dir))
    modules = {}
    for module in _read_json(modules_path):
        kind = module.get("type", "").rsplit(".", 1)[-1]
        if kind not in KNOWN_MODULES:
            raise EmbedError(
                f"{modules_path}: module {module.get('type')!r} is not supported (only "
                f"{', '.join(KNOWN_MODULES)}); embed cannot reproduce this model's output."
            )
        modules[kind] = module.get("path", "")
    if "Pooling" not in modules:
        raise EmbedError(f"{modules_path} lists no Pooling module: add 1_Pooling/config.json.")
    pooling_path = os.path.join(model_dir, modules["Pooling"], "config.json")
    modes = _pooling_modes(_read_json(pooling_path), pooling_path)
    transformer_dir = modules.get("Transformer", "")
    settings_path = os.path.join(model_dir, transformer_dir, "sentence_bert_config.json")
    settings = _read_json(settings_path) if os.path.exists(settings_path) else {}
    return SentencePooling(
        modes=modes,
        normalize="Normalize" in modules,
        max_length=settings.get("max_seq_length")
        or _tokenizer_max_length(os.path.join(model_dir, transformer_dir)),
        lowercase=settings.get("do_lower_case", False),
        transformer_dir=transformer_dir,
    )


def _pooling_modes(config: dict, path: str) -> tuple[str, ...]:
    """Modes of a 1_Pooling/config.json: `pooling_mode` (str or list), or legacy booleans."""
    if "pooling_mode" in config:
        value = config["pooling_mode"]
        wanted = {value} if isinstance(value, str) else set(value)
    else:
        legacy = {key: mode for mode, key in POOLING_MODES.items()}
        wanted = {
            legacy.get(key, key)
            for key, on in config.items()
            if key.startswith("pooling_mode") and on
        }
    unknown = wanted - set(POOLING_MODES)
    if unknown or not wanted:
        raise EmbedError(
            f"{path}: pooling {sorted(unknown) or 'none'} is not supported; use one of "
            f"{', '.join(POOLING_MODES)}."
        )
    return tuple(mode for mode in POOLING_MODES if mode in wanted)


def _tokenizer_max_length(model_dir: str) -> int | None:
    path = os.path.join(model_dir, "tokenizer_config.json")
    length = _read_json(path).get("model_max_length") if os.path.exists(path) else None
    return length if isinstance(length, int) and length < 1_000_000 else None


def _read_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as error:
        raise EmbedError(f"{path} cannot be read ({error}).") from None


def pool(hidden: jax.Array, real: jax.Array, pooling: SentencePooling) -> jax.Array:
    """Token states (B, S, D), real-token mask (B, S) bool -> sentence vectors (B, D * modes).

    Rows are right-padded, so a row's first token is position 0 and its last is at
    length - 1.
    """
    weights = real.astype(hidden.dtype)[:, :, None]  # (B, S, 1)
    count = jnp.maximum(weights.sum(axis=1), 1e-9)  # (B, 1)
    vectors = []
    for mode in pooling.modes:
        if mode == "cls":
            vectors.append(hidden[:, 0])
        elif mode == "max":
            vectors.append(jnp.where(real[:, :, None], hidden, -jnp.inf).max(axis=1))
        elif mode == "mean":
            vectors.append((hidden * weights).sum(axis=1) / count)
        elif mode == "mean_sqrt_len_tokens":
            vectors.append((hidden * weights).sum(axis=1) / jnp.sqrt(count))
        else:  # "lasttoken"
            last = jnp.maximum(real.sum(axis=1) - 1, 0)  # (B,)
            vectors.append(jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0])
    pooled = jnp.concatenate(vectors, axis=-1)
    if pooling.normalize:  # torch.nn.functional.normalize: x / max(|x|, 1e-12)
        pooled = pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
    return pooled


class SentenceEncoder:
    """A pretrained BERT-family encoder and its pooling, ready to embed text."""

    def __init__(self, model_dir: str):
        self.pooling = read_pooling(model_dir)
        transformer_dir = self.pooling.transformer_dir
        self.loaded = pretrained.load(
            os.path.join(model_dir, transformer_dir) if transformer_dir else model_dir
        )
        if self.loaded.kind != "encoder":
            raise EmbedError(
                f"{model_dir} holds a {self.loaded.model_type} model; embed needs an encoder "
                f"({', '.join(('bert', 'roberta', 'distilbert'))})."
            )
        model_length = self.loaded.config.max_len
        self.max_length = min(self.pooling.max_length or model_length, model_length)
        self._embed = jax.jit(self._embed_batch)

    def _embed_batch(self, params, inputs):
        model = self.loaded.model  # the encoder alone: no MLM head over the vocabulary
        hidden = model.apply({"params": params}, inputs, method=model.encode)  # (B, S, D)
        return pool(hidden, inputs != PAD_ID, self.pooling)

    def embed(self, texts: list[str], *, batch_size: int = 32) -> np.ndarray:
        """(len(texts), D) float32 embeddings, in order.

        Batches are padded to a multiple of 16 tokens and to `batch_size` rows, so a long
        input compiles a few shapes, not one per batch.
        """
        if self.pooling.lowercase:
            texts = [text.lower() for text in texts]
        outputs = []
        for start in range(0, len(texts), batch_size):
            chunk = texts[start : start + batch_size]
            ids = self.loaded.tokenizer.batch(chunk, max_length=self.max_length)  # (b, S)
            width = min(-(-ids.shape[1] // 16) * 16, self.max_length)
            inputs = np.zeros((batch_size, width), np.int32)
            inputs[: len(chunk), : ids.shape[1]] = ids
            outputs.append(np.asarray(self._embed(self.loaded.params, inputs))[: len(chunk)])
        if not outputs:
            return np.zeros((0, self.loaded.config.d_model * len(self.pooling.modes)), np.float32)
        return np.concatenate(outputs).astype(np.float32)


FLAGS = flags.FlagValues()  # the tool's own (command_line.py)
flags.DEFINE_string("model_dir", None, "A Hugging Face model directory.", flag_values=FLAGS)
flags.DEFINE_string("input", None, "One sentence per line (default: stdin).", flag_values=FLAGS)
flags.DEFINE_string(
    "output",
    None,
    "A .npy file for the (lines, D) embeddings (default: text to stdout).",
    flag_values=FLAGS,
)
flags.DEFINE_integer("batch_size", 32, "Sentences per compiled call.", flag_values=FLAGS)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:
        if FLAGS.model_dir is None:
            raise EmbedError("--model_dir is missing: name a Hugging Face model directory.")
        if FLAGS.output is not None and not FLAGS.output.endswith(".npy"):
            raise EmbedError(f"--output={FLAGS.output}: name a .npy file.")
        encoder = SentenceEncoder(FLAGS.model_dir)
        lines = _read_lines(FLAGS.input)
    except (OSError, EmbedError, pretrained.PretrainedError) as error:
        raise SystemExit(f"error: {error}") from None
    embeddings = encoder.embed(lines, batch_size=FLAGS.batch_size)
    if FLAGS.output:
        np.save(FLAGS.output, embeddings)
    else:
        np.savetxt(sys.stdout, embeddings, fmt="%.7g")


def _read_lines(path: str | None) -> list[str]:
    if path is None:
        return sys.stdin.read().splitlines()
    with open(path) as f:
        return f.read().splitlines()


def run():
    app.run(main, flags_parser=command_line.own_flags_parser(FLAGS))


if __name__ == "__main__":
    run()
