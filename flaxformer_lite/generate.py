r"""Generate text with a trained language model: `python -m flaxformer_lite.generate --workdir=DIR`.

    python -m flaxformer_lite.generate --workdir=DIR --prompt="ROMEO:" \
        --max_new_tokens=300 --temperature=0.8 --top_k=50 [--top_p=0.9 --seed=1 --num_samples=3]

The model, its tokenizer and its parameters come from a language-model training
run's workdir (decoder_only, or the recurrent rnn_lm), or (--model_dir=DIR) from a
Hugging Face causal LM directory (GPT-2, Llama; `flaxformer_lite.pretrained`), whose
prompt is tokenized as the checkpoint's own tokenizer does it (Llama's <s> first,
nothing for GPT-2) and fed without our BOS:

    python -m flaxformer_lite.generate --model_dir=gpt2 --prompt="Hello" --temperature=0

The text is printed token by token as the model writes it: the whole generation
is one compiled call (`decoding.prefill_lm`, then `decoding.temperature_sample`
over the KV cache; for rnn_lm `families.recurrent.prefill_lm` and the carry as the
cache), and the decoding loop hands every token it reads back to the host as it goes.

The model's context is `max_len` positions, BOS included. A prompt must leave
room for BOS and one new token (at most max_len - 1 tokens), or it is refused
with a one-line error. Generation past the context slides the window: the
next call re-reads the last 3/4 of the context and writes the remaining 1/4,
so the model always sees at least 3/4 of a context of text. Greedy output
(--temperature=0) within the context is exactly `decoding.generate`'s. An rnn_lm
has no context limit: its carry holds everything read so far, so any prompt is
read whole and the generation is one call, exactly `recurrent.continue_prompts`'s.
"""

from __future__ import annotations

import functools
import sys
import warnings
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from flaxformer_lite import command_line, pretrained
from flaxformer_lite.config import ConfigError
from flaxformer_lite.data import DataError, DataOptions
from flaxformer_lite.data.formats import data_format
from flaxformer_lite.data.tokenizers import REPLACEMENT_CHARACTER
from flaxformer_lite.decoding import make_lm_tokens_to_logits, prefill_lm, temperature_sample
from flaxformer_lite.families import recurrent
from flaxformer_lite.models.recurrent import RecurrentLM
from flaxformer_lite.special_tokens import BOS_ID, EOS_ID
from flaxformer_lite.trained_run import load_trained_run
from flaxformer_lite.training.checkpoint import CheckpointError

TokenListener = Callable[[int], None]

# The training runs generate reads, by config.model.
LANGUAGE_MODEL_FAMILIES = ("decoder_only", "rnn_lm")


class GenerationError(ValueError):
    """A prompt or option generation cannot work; the one-line message names the fix."""


def check_options(*, max_new_tokens: int, temperature: float, top_k: int, top_p: float) -> None:
    """Raises GenerationError naming the first bad option, before anything compiles."""
    if max_new_tokens < 1:
        raise GenerationError(f"--max_new_tokens={max_new_tokens}: generate at least 1 token.")
    if temperature < 0.0:
        raise GenerationError(f"--temperature={temperature}: use 0 (greedy) or more.")
    if top_k < 0:
        raise GenerationError(f"--top_k={top_k}: use 0 (no cut) or a positive count.")
    if not 0.0 < top_p <= 1.0:
        raise GenerationError(f"--top_p={top_p}: use a value in (0, 1]; 1 keeps every token.")


@functools.partial(
    jax.jit,
    static_argnames=(
        "model",
        "max_decode_len",
        "temperature",
        "top_k",
        "top_p",
        "report",
        "prepend_bos",
    ),
)
def _continue_window(
    model, params, window, rng, *, max_decode_len, temperature, top_k, top_p, report, prepend_bos
):
    """window (1, W) -> tokens (1, max_decode_len): the window, what follows it, EOS, PAD.

    `report(token)` runs on the host for every new token the loop feeds back
    to the model, in order: all but the last one written. None reports nothing.
    """
    prefill, step = _lm_decoding(model, params, prepend_bos=prepend_bos)

    def step_and_report(tokens, cache):  # tokens (1, 1): the token just chosen
        if report is not None:
            jax.debug.callback(report, tokens[0, 0], ordered=True)
        return step(tokens, cache)

    start = prefill(window, max_decode_len=max_decode_len)
    return temperature_sample(
        step_and_report, start, rng, temperature=temperature, top_k=top_k, top_p=top_p
    )


def _lm_decoding(model, params, *, prepend_bos: bool):
    """The model's (prefill(window, *, max_decode_len) -> DecodeStart, tokens_to_logits):
    the recurrent LM's carry, or the Transformer's KV cache, as the cache."""
    if isinstance(model, RecurrentLM):  # trained from BOS; never a pretrained checkpoint
        prefill = functools.partial(recurrent.prefill_lm, model, params)
        return prefill, recurrent.make_tokens_to_logits(model, params)
    prefill = functools.partial(prefill_lm, model, params, prepend_bos=prepend_bos)
    return prefill, make_lm_tokens_to_logits(model, params)


class LanguageModel:
    """A trained decoder-only or rnn_lm run, or a pretrained causal LM, ready to continue
    prompts.

    Give a training run's `workdir` (and `step`), or a Hugging Face `model_dir`.
    """

    def __init__(
        self, workdir: str | None = None, step: int | None = None, *, model_dir: str | None = None
    ):
        if (workdir is None) == (model_dir is None):
            raise GenerationError("Give --workdir (a training run) or --model_dir, not both.")
        if model_dir is not None:
            loaded = pretrained.load(model_dir)
            if loaded.kind != "causal_lm":
                raise GenerationError(
                    f"{model_dir} holds a {loaded.model_type} model; generate needs a causal "
                    "language model (gpt2, llama)."
                )
            self.tokenizer, self.params, self.model = loaded.tokenizer, loaded.params, loaded.model
            self.prompt_suffix = []
            self.from_checkpoint = True  # the checkpoint's own special tokens, no BOS of ours
        else:
            run = load_trained_run(workdir, step, families=LANGUAGE_MODEL_FAMILIES)
            self.tokenizer, self.params = run.tokenizer, run.params
            self.model = run.family.module
            # SEP after the prompt when the model learned `source SEP target` rows.
            self.prompt_suffix = data_format(DataOptions.from_config(run.config)).prompt_suffix
            self.from_checkpoint = False
        # Positions, BOS included; None: no window. A Transformer has no positions past
        # max_len, so long generations slide a window. An RNN's carry holds all it has read
        # in a fixed size: a window would throw that away for nothing, so it reads the whole
        # prompt and writes on (past its training rows' length it extrapolates, as any
        # char-RNN does).
        self.context = None if isinstance(self.model, RecurrentLM) else self.model.config.max_len
        # The listener of the current window call, how many ids it may take, how many it got.
        self._listener: TokenListener | None = None
        self._limit = self._reported = 0

    @property
    def writes_completions(self) -> bool:
        """True for a prompt -> completion model: it answers a prompt, not continues it."""
        return bool(self.prompt_suffix)

    def encode_prompt(self, prompt: str) -> list[int]:
        """The prompt's token ids, then SEP for a prompt -> completion model;
        GenerationError if BOS, they and one new token overflow the context."""
        if self.from_checkpoint:
            # An empty prompt starts from the checkpoint's BOS, as transformers does.
            ids = self.tokenizer.encode_with_special_tokens(prompt) or [BOS_ID]
        else:
            ids = [*self.tokenizer.encode(prompt), *self.prompt_suffix]
        if self.context is not None and len(ids) > self.context - 1:
            raise GenerationError(
                f"The prompt is {len(ids)} tokens and the model's context holds "
                f"{self.context} positions (BOS, the prompt and at least one new token): "
                f"shorten the prompt to at most {self.context - 1} tokens."
            )
        return ids

    def generate(
        self,
        prompt_ids: list[int],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        rng: jax.Array | None = None,
        on_token: TokenListener | None = None,
    ) -> list[int]:
        """The new token ids: max_new_tokens of them, or fewer ending with EOS.

        temperature=0 is greedy search; otherwise tokens are sampled with `rng`.
        `on_token(id)` is called for each new token, in order, as soon as it is
        chosen. Past the context, every further window call starts from the last
        `context - slide` tokens and may write `slide` new ones.
        """
        check_options(
            max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p
        )
        rng = jax.random.key(0) if rng is None else rng
        # Without a window, one call reads the prompt and writes every new token.
        context = self.context or len(prompt_ids) + max_new_tokens
        slide = max(1, context // 4)
        tokens, new_ids = list(prompt_ids), []
        window_rng, window_index = rng, 0
        while len(new_ids) < max_new_tokens and EOS_ID not in new_ids[-1:]:
            window = tokens[-(context - slide) :] if window_index else tokens
            wanted = max_new_tokens - len(new_ids)
            ids = self._continue(
                window,
                max_decode_len=min(context, len(window) + wanted),
                rng=window_rng,
                limit=wanted,
                on_token=on_token,
                sampling=dict(temperature=temperature, top_k=top_k, top_p=top_p),
            )
            tokens += ids
            new_ids += ids
            window_index += 1  # the first window draws with `rng` itself, as decoding.generate
            window_rng = jax.random.fold_in(rng, window_index)
        return new_ids

    def _continue(self, window, *, max_decode_len, rng, limit, on_token, sampling) -> list[int]:
        """At most `limit` ids that follow `window`, up to and including EOS."""
        self._listener, self._limit, self._reported = on_token, limit, 0
        output = _continue_window(
            self.model,
            self.params,
            jnp.asarray([window], jnp.int32),
            rng,
            max_decode_len=max_decode_len,
            report=None if on_token is None else self._report,
            prepend_bos=not self.from_checkpoint,
            **sampling,
        )
        ids = np.asarray(output)[0, len(window) :].tolist()[:limit]
        if EOS_ID in ids:
            ids = ids[: ids.index(EOS_ID) + 1]
        jax.effects_barrier()  # every report of this call has reached the host
        if on_token is not None:
            for token in ids[self._reported :]:  # the last one, never fed back to the model
                on_token(token)
        return ids

    def _report(self, token) -> None:
        """Host side of the decoding loop's callback. A bound method: jit sees one static
        argument per LanguageModel, so reporting compiles once."""
        if self._reported < self._limit:
            self._listener(int(token))
            self._reported += 1


class TextStream:
    """Writes a growing token sequence as text, piece by piece, to `out`.

    The whole sequence is decoded again on every token (tokenizers join pieces
    with context, e.g. SentencePiece's word-initial spaces), and a trailing
    U+FFFD is held back while a multi-byte character may still be incomplete.
    """

    def __init__(self, tokenizer, prompt_ids: list[int], *, out):
        self.tokenizer, self.ids, self.out = tokenizer, list(prompt_ids), out
        self.shown = 0  # characters of the decoded text written so far
        self._write(final=False)

    def add(self, token: int) -> None:
        self.ids.append(token)
        self._write(final=False)

    def close(self) -> None:
        self._write(final=True)
        self.out.write("\n")
        self.out.flush()

    def _write(self, *, final: bool) -> None:
        text = self.tokenizer.decode(self.ids)
        if not final:
            text = text.rstrip(REPLACEMENT_CHARACTER)
        self.out.write(text[self.shown :])
        self.out.flush()
        self.shown = max(self.shown, len(text))


FLAGS = flags.FlagValues()  # the tool's own (command_line.py)
flags.DEFINE_string("workdir", None, "The training run's workdir.", flag_values=FLAGS)
flags.DEFINE_string(
    "model_dir",
    None,
    "A Hugging Face causal LM directory (instead of --workdir).",
    flag_values=FLAGS,
)
flags.DEFINE_string("prompt", "", "Text to continue (empty: from BOS alone).", flag_values=FLAGS)
flags.DEFINE_integer(
    "max_new_tokens", 200, "Tokens to generate per sample (fewer at EOS).", flag_values=FLAGS
)
flags.DEFINE_float("temperature", 0.8, "Softmax temperature; 0 is greedy.", flag_values=FLAGS)
flags.DEFINE_integer("top_k", 0, "Keep the k most likely tokens; 0 keeps all.", flag_values=FLAGS)
flags.DEFINE_float(
    "top_p", 1.0, "Nucleus: the smallest set of probability >= top_p.", flag_values=FLAGS
)
flags.DEFINE_integer("seed", 0, "The same seed draws the same samples.", flag_values=FLAGS)
flags.DEFINE_integer("num_samples", 1, "Samples to draw, one after another.", flag_values=FLAGS)
flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).", flag_values=FLAGS)


SAMPLE_SEPARATOR = "-" * 40


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.ERROR)  # orbax warns about read-only restores
    warnings.filterwarnings("ignore", message="Sharding info not provided")
    sampling = dict(temperature=FLAGS.temperature, top_k=FLAGS.top_k, top_p=FLAGS.top_p)
    try:
        if FLAGS.workdir is None and FLAGS.model_dir is None:
            raise GenerationError(
                "--workdir is missing: name a training run's workdir (or --model_dir)."
            )
        check_options(max_new_tokens=FLAGS.max_new_tokens, **sampling)
        if FLAGS.num_samples < 1:
            raise GenerationError(f"--num_samples={FLAGS.num_samples}: draw at least 1.")
        language_model = LanguageModel(FLAGS.workdir, FLAGS.step, model_dir=FLAGS.model_dir)
        prompt_ids = language_model.encode_prompt(FLAGS.prompt)
    except (
        OSError,
        CheckpointError,
        ConfigError,
        DataError,
        GenerationError,
        pretrained.PretrainedError,
    ) as error:
        raise SystemExit(f"error: {error}") from None  # bad input: one line, no trace
    seed = jax.random.key(FLAGS.seed)
    for sample in range(FLAGS.num_samples):
        if sample:
            print(SAMPLE_SEPARATOR)
        # A completion is printed alone; a continuation after its prompt.
        shown = [] if language_model.writes_completions else prompt_ids
        stream = TextStream(language_model.tokenizer, shown, out=sys.stdout)
        language_model.generate(
            prompt_ids,
            max_new_tokens=FLAGS.max_new_tokens,
            rng=jax.random.fold_in(seed, sample),  # sample i is the same whatever num_samples
            on_token=stream.add,
            **sampling,
        )
        stream.close()


def run():
    app.run(main, flags_parser=command_line.own_flags_parser(FLAGS))


if __name__ == "__main__":
    run()
