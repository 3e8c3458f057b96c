"""The recurrent families: an RNN/LSTM/GRU encoder-decoder (`rnn_seq2seq`) and LM (`rnn_lm`).

They train, evaluate and generate like the Transformer families. Decoding runs
through `flaxformer_lite.decoding`'s searches (greedy, sampling, beam search) with
the recurrent state as the cache: the prefill encodes the source (or reads the
prompt) and feeds BOS, then every step feeds one token and returns the next state.

Each training row holds one example: a carry runs along the whole row, so examples
packed behind each other would leak into one another. `data.formats.ONE_EXAMPLE_PER_ROW`
names these families, and the pipeline pads one example per row for them whatever
`pack_examples` says.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from flaxformer_lite.config import ConfigError, required_field
from flaxformer_lite.decoding import (
    DecodeStart,
    TokensToLogits,
    beam_search,
    temperature_sample,
)
from flaxformer_lite.families.base import Batch, ModelFamily
from flaxformer_lite.families.decoder_only import _drop_prompt
from flaxformer_lite.models.recurrent import (
    RecurrentConfig,
    RecurrentLM,
    RecurrentSeq2Seq,
)
from flaxformer_lite.special_tokens import BOS_ID, PAD_ID
from flaxformer_lite.training.losses import token_metrics

# Gated projections per cell: each maps [input ; state] to the hidden width.
GATES = {"rnn": 1, "gru": 3, "lstm": 4}


def recurrent_config_from(config, vocab_size: int, *, attention: bool, bidirectional: bool):
    """The RecurrentConfig a flat experiment config describes; bad values are ConfigErrors."""
    try:
        return RecurrentConfig(
            vocab_size=vocab_size,
            cell=required_field(config, "cell"),
            embed_dim=required_field(config, "d_model"),
            hidden_size=required_field(config, "rnn_hidden_size"),
            num_layers=required_field(config, "rnn_num_layers"),
            bidirectional=bidirectional,
            attention=attention,
            dropout_rate=required_field(config, "dropout_rate"),
        )
    except ValueError as error:
        message = str(error).replace("RecurrentConfig.", "config.", 1)
        for model_field, config_field in _CONFIG_NAMES.items():
            message = message.replace(f"config.{model_field}=", f"config.{config_field}=", 1)
        raise ConfigError(message) from None


# RecurrentConfig fields that the experiment config spells differently.
_CONFIG_NAMES = {
    "embed_dim": "d_model",
    "hidden_size": "rnn_hidden_size",
    "num_layers": "rnn_num_layers",
}


# ----------------------------------------------------------------------------
# Decoding: the recurrent state is the cache.


def make_tokens_to_logits(model, params) -> TokensToLogits:
    """tokens (N, 1), cache -> (logits (N, V), next cache): one decoder step of either
    recurrent model, the decoding callback (as `decoding.make_lm_tokens_to_logits` is
    for the Transformer LM)."""

    def tokens_to_logits(tokens, cache):
        logits, cache = model.apply({"params": params}, tokens, cache, method=model.decode)
        return logits[:, -1], cache

    return tokens_to_logits


def _bos(batch: int) -> jax.Array:
    return jnp.full((batch, 1), BOS_ID, jnp.int32)


def prefill_seq2seq(model: RecurrentSeq2Seq, params, inputs, *, max_decode_len: int):
    """Encode inputs (B, S) and feed BOS: the start of every search."""
    cache = model.apply({"params": params}, inputs, method=model.start_cache)
    logits, cache = make_tokens_to_logits(model, params)(_bos(inputs.shape[0]), cache)
    return DecodeStart(
        logits=logits,
        cache=cache,
        index=jnp.int32(0),
        forced=jnp.zeros((inputs.shape[0], max_decode_len), jnp.int32),
    )


def prefill_lm(model: RecurrentLM, params, prompt, *, max_decode_len: int):
    """Feed BOS and the prompt (B, P), right-padded, P < max_decode_len.

    The search starts at m, the shortest prompt's length: the state stops after
    BOS and m prompt tokens in every row (`seq_lengths`), and longer rows feed the
    rest of their prompt one forced token at a time.
    """
    if prompt.shape[1] >= max_decode_len:
        raise ValueError(
            f"A prompt of width {prompt.shape[1]} leaves no room to decode within "
            f"max_decode_len={max_decode_len}."
        )
    batch = prompt.shape[0]
    shortest = jnp.min(jnp.sum(prompt != PAD_ID, axis=1))  # m
    cache = model.apply({"params": params}, batch, method=model.start_cache)
    logits, cache = model.apply(
        {"params": params},
        jnp.concatenate([_bos(batch), prompt.astype(jnp.int32)], axis=1),
        cache,
        seq_lengths=jnp.full((batch,), shortest + 1),
        method=model.decode,
    )  # logits (B, P + 1, V)
    return DecodeStart(
        logits=logits[jnp.arange(batch), shortest],
        cache=cache,
        index=shortest.astype(jnp.int32),
        forced=jnp.pad(prompt, ((0, 0), (0, max_decode_len - prompt.shape[1]))),
    )


SEARCH_OPTIONS = ("max_decode_len", "beam_size", "alpha", "temperature", "top_k", "top_p")


def _search(model, params, start: DecodeStart, *, beam_size, alpha, temperature, top_k, top_p, rng):
    """Beam search's best hypothesis when beam_size > 1, else greedy (temperature 0)
    or sampling. The cache is batch-major, so beam search tiles and reorders axis 0."""
    tokens_to_logits = make_tokens_to_logits(model, params)
    if beam_size > 1:
        tokens, _ = beam_search(tokens_to_logits, start, beam_size=beam_size, alpha=alpha)
        return tokens[:, 0]
    if temperature > 0.0 and rng is None:
        raise ValueError("Sampling (temperature > 0) needs an rng key.")
    return temperature_sample(
        tokens_to_logits, start, rng, temperature=temperature, top_k=top_k, top_p=top_p
    )


@functools.partial(jax.jit, static_argnames=("model", *SEARCH_OPTIONS))
def translate_batch(
    model: RecurrentSeq2Seq,
    params,
    inputs,
    *,
    max_decode_len: int,
    beam_size: int = 1,
    alpha: float = 0.6,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    rng=None,
) -> jax.Array:
    """inputs (B, S) -> target tokens (B, max_decode_len), EOS then PAD.

    The search is chosen as in `flaxformer_lite.decoding.decode_batch`.
    """
    start = prefill_seq2seq(model, params, inputs, max_decode_len=max_decode_len)
    return _search(
        model,
        params,
        start,
        beam_size=beam_size,
        alpha=alpha,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        rng=rng,
    )


@functools.partial(jax.jit, static_argnames=("model", *SEARCH_OPTIONS))
def continue_prompts(
    model: RecurrentLM,
    params,
    prompt,
    *,
    max_decode_len: int,
    beam_size: int = 1,
    alpha: float = 0.6,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    rng=None,
) -> jax.Array:
    """prompt (B, P) -> tokens (B, max_decode_len): the prompt, the continuation, EOS, PAD."""
    start = prefill_lm(model, params, prompt, max_decode_len=max_decode_len)
    return _search(
        model,
        params,
        start,
        beam_size=beam_size,
        alpha=alpha,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        rng=rng,
    )


# ----------------------------------------------------------------------------
# The families.


def _stack_flops(cell: str, layers: int, batch: int, steps: int, *, hidden, first_input, input):
    """Matmul FLOPs of `layers` stacked cells of width `hidden` over `steps` positions.

    Every gate is a matmul of [layer input ; state] with an (input + hidden, hidden)
    kernel; the first layer reads `first_input` features, the others `input`.
    """
    widths = [first_input] + [input] * (layers - 1)
    return sum(2 * batch * steps * GATES[cell] * (width + hidden) * hidden for width in widths)


def seq2seq_forward_flops(config: RecurrentConfig, batch: int, source: int, target: int) -> int:
    """Matmul FLOPs of one teacher-forced forward pass of `RecurrentSeq2Seq`."""
    hidden, embed = config.hidden_size, config.embed_dim
    stack = functools.partial(_stack_flops, config.cell, config.num_layers, batch)
    if config.bidirectional:  # two directions, each half as wide
        encoder = 2 * stack(source, hidden=hidden // 2, first_input=embed, input=hidden)
    else:
        encoder = stack(source, hidden=hidden, first_input=embed, input=hidden)
    decoder_input = embed + hidden if config.attention else embed
    decoder = stack(target, hidden=hidden, first_input=decoder_input, input=hidden)
    features = 2 * hidden if config.attention else hidden
    output = 2 * batch * target * features * config.vocab_size
    attention = 0
    if config.attention:
        keys = 2 * batch * source * hidden * hidden
        # Per step: the query's projection, the energies' projection, the weighted values.
        per_step = hidden * hidden + source * hidden + source * hidden
        attention = keys + 2 * batch * target * per_step
    return encoder + decoder + output + attention


@dataclasses.dataclass(frozen=True)
class RnnSeq2Seq(ModelFamily):
    """Reads `inputs` and `targets` (B, L), one example per row; predicts the targets.

    `config.cell` picks the cell, `config.rnn_attention` the decoder (additive
    attention, or the encoder's final state alone) and `config.rnn_bidirectional`
    the encoder. Evaluation decodes: greedy, or beam search when beam_size > 1.
    """

    name = "rnn_seq2seq"
    model_config: RecurrentConfig
    max_source_length: int
    max_target_length: int
    max_decode_length: int
    beam_size: int = 1
    length_penalty_alpha: float = 0.6

    @classmethod
    def from_config(cls, config, vocab_size: int) -> RnnSeq2Seq:
        return cls(
            model_config=recurrent_config_from(
                config,
                vocab_size,
                attention=required_field(config, "rnn_attention"),
                bidirectional=required_field(config, "rnn_bidirectional"),
            ),
            max_source_length=config.max_source_length,
            max_target_length=config.max_target_length,
            max_decode_length=config.max_decode_length,
            beam_size=config.beam_size,
            length_penalty_alpha=config.length_penalty_alpha,
        )

    @property
    def module(self) -> RecurrentSeq2Seq:
        return RecurrentSeq2Seq(self.model_config)

    def example_batch(self) -> Batch:
        return {
            "inputs": jnp.ones((1, self.max_source_length), jnp.int32),
            "targets": jnp.ones((1, self.max_target_length), jnp.int32),
        }

    def model_inputs(self, batch: Batch) -> dict:
        return {"inputs": batch["inputs"], "targets": batch["targets"]}

    def metric_sums(self, outputs, batch: Batch, *, label_smoothing: float) -> dict:
        return token_metrics(outputs, batch["targets"], label_smoothing=label_smoothing)

    def predict(self, params, batch: Batch):
        """Generated target tokens (B, max_decode_length), EOS then PAD."""
        return translate_batch(
            self.module,
            params,
            batch["inputs"],
            max_decode_len=self.max_decode_length,
            beam_size=self.beam_size,
            alpha=self.length_penalty_alpha,
        )

    def sources(self, batch: Batch):
        return batch["inputs"]

    def train_step_flops(self, num_rows: int) -> int:
        forward = seq2seq_forward_flops(
            self.model_config, num_rows, self.max_source_length, self.max_target_length
        )
        return 3 * forward


@dataclasses.dataclass(frozen=True)
class RnnLM(ModelFamily):
    """Reads `targets` and `loss_weights` (B, T), one example per row, like `decoder_only`.

    Position t predicts targets[t] from BOS and targets[:t]; the loss counts the
    tokens of weight 1. Evaluation continues each row's zero-weight prompt.
    """

    name = "rnn_lm"
    model_config: RecurrentConfig
    max_length: int
    max_decode_length: int
    beam_size: int = 1
    length_penalty_alpha: float = 0.6

    @classmethod
    def from_config(cls, config, vocab_size: int) -> RnnLM:
        return cls(
            model_config=recurrent_config_from(
                config, vocab_size, attention=False, bidirectional=False
            ),
            max_length=config.max_target_length,
            max_decode_length=config.max_decode_length,
            beam_size=config.beam_size,
            length_penalty_alpha=config.length_penalty_alpha,
        )

    @property
    def module(self) -> RecurrentLM:
        return RecurrentLM(self.model_config)

    def example_batch(self) -> Batch:
        return {"targets": jnp.ones((1, self.max_length), jnp.int32)}

    def model_inputs(self, batch: Batch) -> dict:
        return {"targets": batch["targets"]}

    def metric_sums(self, outputs, batch: Batch, *, label_smoothing: float) -> dict:
        return token_metrics(
            outputs,
            batch["targets"],
            label_smoothing=label_smoothing,
            weights=batch.get("loss_weights"),
        )

    def sources(self, batch: Batch):
        """The prompt of each row: the zero-weight prefix of `targets`, PAD after it."""
        return jnp.where(batch["loss_weights"] > 0, PAD_ID, batch["targets"])

    def predict(self, params, batch: Batch):
        """The generated completion (B, max_decode_length): EOS, then PAD."""
        prompt = self.sources(batch)  # (B, T), right-padded
        # A row's completion holds at least EOS, so its prompt fits in T - 1 positions.
        tokens = continue_prompts(
            self.module,
            params,
            prompt[:, : prompt.shape[1] - 1],
            max_decode_len=self.max_decode_length,
            beam_size=self.beam_size,
            alpha=self.length_penalty_alpha,
        )
        return _drop_prompt(tokens, (prompt != PAD_ID).sum(axis=1))

    def train_step_flops(self, num_rows: int) -> int:
        cfg = self.model_config
        recurrent = _stack_flops(
            cfg.cell,
            cfg.num_layers,
            num_rows,
            self.max_length,
            hidden=cfg.hidden_size,
            first_input=cfg.embed_dim,
            input=cfg.hidden_size,
        )
        output = 2 * num_rows * self.max_length * cfg.hidden_size * cfg.vocab_size
        return 3 * (recurrent + output)
