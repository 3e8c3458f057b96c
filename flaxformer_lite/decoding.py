"""Autoregressive decoding: greedy, temperature sampling (top-k, top-p) and beam search.

The decoders are pure functions that run under `jit`, with the loop in a
`lax.while_loop`. They know nothing about the model: it reaches them through a
callback

    tokens_to_logits(tokens (N, 1) int32, cache) -> (logits (N, V) float32, new_cache)

that feeds one token per row at the next position and returns the logits for
the position after it, and through a `DecodeStart`, the state after the
prefill (the decoder's first call, which processes BOS and any forced prefix
in one go). `prefill` and `make_tokens_to_logits` build both for the
encoder-decoder `Transformer`, and `decode_batch` puts everything together;
`prefill_lm`, `make_lm_tokens_to_logits` and `generate` do the same for the
decoder-only language model.

Output token arrays (B, L) start at the first target token (BOS is not part
of them), include any forced prefix, and end with EOS followed by PAD. A row
that reaches L tokens without EOS is cut there. The decoders never choose PAD:
it only ever means "no token here".

Shapes: B batch, K beams, L max_decode_len, V vocabulary, S source length,
P prefix width.
"""

import functools
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
from jax import lax

from flaxformer_lite.special_tokens import BOS_ID, EOS_ID, PAD_ID

Cache = Any  # Any pytree the callback threads from one call to the next.
TokensToLogits = Callable[[jax.Array, Cache], tuple[jax.Array, Cache]]


@flax.struct.dataclass
class DecodeStart:
    """Where decoding begins: the result of the prefill.

    The decoders choose tokens from position `index` on; `logits` predict the
    token at `index`, and the cache holds every position before it. `forced`
    holds the forced prefix of each row (right-padded with PAD): wherever it is
    not PAD, its token is written instead of a chosen one.
    """

    logits: jax.Array  # (B, V) float32
    cache: Cache
    index: jax.Array  # () int32, at most the shortest row's prefix length
    forced: jax.Array  # (B, L) int32


@flax.struct.dataclass
class SamplingState:
    """Loop state of greedy search and sampling."""

    index: jax.Array  # () int32: the position the last step wrote
    tokens: jax.Array  # (B, L) output so far; forced tokens (or PAD) after `index`
    logits: jax.Array  # (B, V) logits that chose tokens[:, index]
    cache: Cache
    finished: jax.Array  # (B,) bool: the row has emitted EOS


@flax.struct.dataclass
class BeamState:
    """Loop state of beam search. Beam rows are flattened as b * K + k in the cache."""

    index: jax.Array  # () int32: the position the last step wrote
    live_tokens: jax.Array  # (B, K, L) hypotheses still growing
    live_scores: jax.Array  # (B, K) their summed log-probabilities; -inf on empty beams
    logits: jax.Array  # (B * K, V) logits that chose live_tokens[:, :, index]
    cache: Cache  # batch axis of size B * K
    finished_tokens: jax.Array  # (B, K, L) hypotheses that ended, best first
    finished_scores: jax.Array  # (B, K) length-penalised scores; -inf on empty slots


def length_penalty(length: jax.Array, alpha: float) -> jax.Array:
    """GNMT length penalty ((5 + length) / 6)^alpha (Wu et al., 2016, eq. 14)."""
    return ((5.0 + length) / 6.0) ** alpha


def greedy_search(tokens_to_logits: TokensToLogits, start: DecodeStart) -> jax.Array:
    """Always take the most likely token. Returns tokens (B, L)."""
    return _sample_loop(tokens_to_logits, start, lambda logits, index: jnp.argmax(logits, -1))


def temperature_sample(
    tokens_to_logits: TokensToLogits,
    start: DecodeStart,
    rng: jax.Array,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
) -> jax.Array:
    """Sample each token from softmax(logits / temperature). Returns tokens (B, L).

    `top_k` > 0 keeps only the k most likely tokens; `top_p` < 1 keeps the
    smallest set of most likely tokens whose probability reaches top_p
    (nucleus sampling). Both are applied after the temperature.
    temperature=0 is greedy search. Step i draws with fold_in(rng, i).
    """
    if temperature < 0.0 or top_k < 0 or not 0.0 < top_p <= 1.0:
        raise ValueError(
            f"Need temperature >= 0, top_k >= 0 and 0 < top_p <= 1; got "
            f"temperature={temperature}, top_k={top_k}, top_p={top_p}."
        )
    if temperature == 0.0:
        return greedy_search(tokens_to_logits, start)

    def choose(logits, index):
        logits = logits / temperature
        if top_k > 0:
            logits = _keep_top_k(logits, top_k)
        if top_p < 1.0:
            logits = _keep_top_p(logits, top_p)
        return jax.random.categorical(jax.random.fold_in(rng, index), logits)

    return _sample_loop(tokens_to_logits, start, choose)


def _keep_top_k(logits: jax.Array, k: int) -> jax.Array:
    """(N, V) -> (N, V) with -inf below the k-th largest logit of each row."""
    kth_largest = lax.top_k(logits, min(k, logits.shape[-1]))[0][:, -1:]
    return jnp.where(logits < kth_largest, -jnp.inf, logits)


def _keep_top_p(logits: jax.Array, p: float) -> jax.Array:
    """(N, V) -> (N, V) with -inf outside the smallest top set of probability >= p."""
    descending = -jnp.sort(-logits, axis=-1)
    probs = jax.nn.softmax(descending, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    smallest_kept = jnp.min(jnp.where(mass_before < p, descending, jnp.inf), -1, keepdims=True)
    return jnp.where(logits < smallest_kept, -jnp.inf, logits)


def _forbid_pad(logits: jax.Array) -> jax.Array:
    return logits.at[..., PAD_ID].set(-jnp.inf)


def _sample_loop(
    tokens_to_logits: TokensToLogits,
    start: DecodeStart,
    choose: Callable[[jax.Array, jax.Array], jax.Array],
) -> jax.Array:
    """The loop shared by greedy search and sampling.

    choose(logits (B, V), index ()) -> tokens (B,). Each iteration feeds the
    last token to the model and writes the next; the loop ends once every row
    has emitted EOS or position L-1 is written.
    """
    batch, max_decode_len = start.forced.shape

    def write_next_token(state: SamplingState) -> SamplingState:
        forced = state.tokens[:, state.index]  # (B,)
        chosen = choose(_forbid_pad(state.logits), state.index)
        token = jnp.where(forced != PAD_ID, forced, chosen).astype(jnp.int32)
        return state.replace(
            tokens=state.tokens.at[:, state.index].set(token),
            finished=state.finished | (token == EOS_ID),
        )

    def feed_last_token(state: SamplingState) -> SamplingState:
        last = state.tokens[:, state.index, None]  # (B, 1)
        logits, cache = tokens_to_logits(last, state.cache)
        return state.replace(index=state.index + 1, logits=logits, cache=cache)

    def not_done(state: SamplingState) -> jax.Array:
        return (state.index + 1 < max_decode_len) & ~jnp.all(state.finished)

    state = SamplingState(
        index=jnp.asarray(start.index, jnp.int32),
        tokens=start.forced.astype(jnp.int32),
        logits=start.logits,
        cache=start.cache,
        finished=jnp.zeros((batch,), bool),
    )
    state = write_next_token(state)
    state = lax.while_loop(not_done, lambda s: write_next_token(feed_last_token(s)), state)
    return pad_after_eos(state.tokens)


def beam_search(
    tokens_to_logits: TokensToLogits,
    start: DecodeStart,
    *,
    beam_size: int,
    alpha: float = 0.6,
    cache_batch_axis: int = 0,
) -> tuple[jax.Array, jax.Array]:
    """Beam search for the highest log P(y) / length_penalty(|y|, alpha).

    `start` holds B rows; the cache is tiled to B * K rows here, along
    `cache_batch_axis` (1 when layers are scanned and cache leaves carry a
    leading layer axis; scalar leaves such as a cache index are left alone),
    and `tokens_to_logits` must accept B * K rows. Every step expands the live
    beams by every token and keeps the 2K best candidates: those ending in EOS
    (or at length L) among the K best are finished, and the K best of the
    rest stay live. The search stops when no live beam can beat the worst
    finished hypothesis of its row. Forced prefix tokens are free (their
    log-probability is not counted); |y| counts every token, prefix and EOS
    included. Returns tokens (B, K, L) and scores (B, K), best first.
    """
    if beam_size < 1 or alpha < 0.0:
        raise ValueError(f"Need beam_size >= 1 and alpha >= 0; got {beam_size}, {alpha}.")
    batch, max_decode_len = start.forced.shape
    vocab_size = start.logits.shape[-1]
    best_penalty = length_penalty(max_decode_len, alpha)  # the largest, as alpha >= 0

    def write_next_token(state: BeamState) -> BeamState:
        index = state.index
        log_probs = jax.nn.log_softmax(state.logits).reshape(batch, beam_size, vocab_size)
        log_probs = _forbid_pad(log_probs)
        forced = state.live_tokens[:, :, index]  # (B, K), the same for every beam
        free_forced = jnp.where(jnp.arange(vocab_size) == forced[..., None], 0.0, -jnp.inf)
        log_probs = jnp.where((forced != PAD_ID)[..., None], free_forced, log_probs)

        # The 2K best one-token extensions of the live beams: (B, 2K).
        extended_scores = state.live_scores[..., None] + log_probs  # (B, K, V)
        scores, flat_ids = lax.top_k(extended_scores.reshape(batch, -1), 2 * beam_size)
        parent, token = flat_ids // vocab_size, flat_ids % vocab_size
        sequences = jnp.take_along_axis(state.live_tokens, parent[..., None], axis=1)
        sequences = sequences.at[:, :, index].set(token)  # (B, 2K, L)
        ends = (token == EOS_ID) | (index == max_decode_len - 1)

        in_top_k = jnp.arange(2 * beam_size) < beam_size
        new_finished = jnp.where(
            ends & in_top_k, scores / length_penalty(index + 1, alpha), -jnp.inf
        )
        finished_scores, finished_tokens = _top_k_hypotheses(
            jnp.concatenate([state.finished_scores, new_finished], axis=1),
            jnp.concatenate([state.finished_tokens, sequences], axis=1),
            beam_size,
        )

        live_scores, chosen = lax.top_k(jnp.where(ends, -jnp.inf, scores), beam_size)
        live_tokens = jnp.take_along_axis(sequences, chosen[..., None], axis=1)
        live_parent = jnp.take_along_axis(parent, chosen, axis=1)  # (B, K)
        rows = (jnp.arange(batch)[:, None] * beam_size + live_parent).reshape(-1)  # (B*K,)
        cache = _map_batched(lambda x: jnp.take(x, rows, cache_batch_axis), state.cache)
        return state.replace(
            live_tokens=live_tokens,
            live_scores=live_scores,
            cache=cache,
            finished_tokens=finished_tokens,
            finished_scores=finished_scores,
        )

    def feed_last_tokens(state: BeamState) -> BeamState:
        last = state.live_tokens[:, :, state.index].reshape(batch * beam_size, 1)
        logits, cache = tokens_to_logits(last, state.cache)
        return state.replace(index=state.index + 1, logits=logits, cache=cache)

    def not_done(state: BeamState) -> jax.Array:
        # Log-probabilities only fall as a hypothesis grows, so the best any live
        # beam can still reach is its score over the largest length penalty.
        best_reachable = jnp.max(state.live_scores, axis=1) / best_penalty  # (B,)
        worst_finished = jnp.min(state.finished_scores, axis=1)  # -inf while a slot is empty
        row_done = (best_reachable < worst_finished) | (best_reachable == -jnp.inf)
        return (state.index + 1 < max_decode_len) & ~jnp.all(row_done)

    first_beam_only = jnp.where(jnp.arange(beam_size) == 0, 0.0, -jnp.inf)
    state = BeamState(
        index=jnp.asarray(start.index, jnp.int32),
        live_tokens=jnp.repeat(start.forced[:, None, :], beam_size, axis=1).astype(jnp.int32),
        live_scores=jnp.broadcast_to(first_beam_only, (batch, beam_size)),
        logits=jnp.repeat(start.logits, beam_size, axis=0),
        cache=_map_batched(lambda x: jnp.repeat(x, beam_size, cache_batch_axis), start.cache),
        finished_tokens=jnp.zeros((batch, beam_size, max_decode_len), jnp.int32),
        finished_scores=jnp.full((batch, beam_size), -jnp.inf),
    )
    state = write_next_token(state)
    state = lax.while_loop(not_done, lambda s: write_next_token(feed_last_tokens(s)), state)
    return pad_after_eos(state.finished_tokens), state.finished_scores


def _map_batched(function, cache: Cache) -> Cache:
    """Apply `function` to every cache leaf except scalars (such as a cache index)."""
    return jax.tree.map(lambda x: x if x.ndim == 0 else function(x), cache)


def _top_k_hypotheses(scores, tokens, k):
    """scores (B, N), tokens (B, N, L) -> the k best: (B, k), (B, k, L)."""
    best_scores, best = lax.top_k(scores, k)
    return best_scores, jnp.take_along_axis(tokens, best[..., None], axis=1)


def pad_after_eos(tokens: jax.Array) -> jax.Array:
    """(..., L) -> (..., L) with PAD at every position after the first EOS."""
    eos_before = jnp.cumsum(tokens == EOS_ID, axis=-1) - (tokens == EOS_ID)
    return jnp.where(eos_before > 0, PAD_ID, tokens)


# ----------------------------------------------------------------------------
# Starting and running a search, for any model whose decoder keeps its cache
# index at cache["decoder"]["cache_index"].


def _checked_prefix(model, batch: int, prefix, max_decode_len: int) -> jax.Array:
    """The prefix (B, P), or an empty one; errors before tracing when nothing fits."""
    max_len = model.config.max_len
    if max_decode_len > max_len:  # Positions past max_len have no encoding: fail before tracing.
        raise ValueError(
            f"max_decode_len={max_decode_len} exceeds the model's max_len={max_len}: decode "
            "at most max_len tokens, or train the model with a larger max_len."
        )
    if prefix is None:
        prefix = jnp.zeros((batch, 0), jnp.int32)
    if prefix.shape[1] >= max_decode_len:
        raise ValueError(
            f"A prefix of width {prefix.shape[1]} leaves no room to decode within "
            f"max_decode_len={max_decode_len}."
        )
    return prefix


def _decoder_inputs(prefix: jax.Array) -> jax.Array:
    """BOS, then the prefix: what the prefill feeds the decoder. (B, P) -> (B, P + 1)."""
    bos = jnp.full((prefix.shape[0], 1), BOS_ID, jnp.int32)
    return jnp.concatenate([bos, prefix.astype(jnp.int32)], axis=1)


def _empty_cache(init, *args):
    """The zeroed cache that `init(rng, *args)` allocates; the cache index starts at 0."""
    shapes = jax.eval_shape(init, jax.random.key(0), *args)["cache"]
    return jax.tree.map(lambda leaf: jnp.zeros(leaf.shape, leaf.dtype), shapes)


def _start_after_prefill(
    logits, cache, prefix, max_decode_len: int, *, after_bos: bool = True
) -> DecodeStart:
    """The prefill ran over BOS and the whole prefix; decoding starts at the shortest
    row's prefix length m. Its logits are the prefill's at m, and the cache index
    goes back to m + 1, so longer rows feed their remaining prefix tokens one step
    at a time, overwriting what the prefill stored there for shorter rows' padding.
    logits (B, P + 1, V), prefix (B, P). Without BOS (`after_bos=False`: logits
    (B, P, V)) every position is one earlier: logits at m - 1, cache index m."""
    index = jnp.min(jnp.sum(prefix != PAD_ID, axis=1))
    consumed = index + 1 if after_bos else index  # decoder inputs before the first choice
    decoder_cache = {**cache["decoder"], "cache_index": consumed.astype(jnp.int32)}
    return DecodeStart(
        logits=lax.dynamic_index_in_dim(logits, consumed - 1, axis=1, keepdims=False),
        cache={**cache, "decoder": decoder_cache},
        index=index.astype(jnp.int32),
        forced=jnp.pad(prefix, ((0, 0), (0, max_decode_len - prefix.shape[1]))),
    )


def _search(
    tokens_to_logits_for: Callable[[int], TokensToLogits],
    start: DecodeStart,
    *,
    beam_size: int,
    alpha: float,
    temperature: float,
    top_k: int,
    top_p: float,
    rng,
    cache_batch_axis: int,
) -> jax.Array:
    """Beam search's best hypothesis when beam_size > 1, else greedy search
    (temperature 0) or sampling. `tokens_to_logits_for(k)` is the callback for
    k copies of every row. Returns tokens (B, L)."""
    if beam_size > 1:
        tokens, _ = beam_search(
            tokens_to_logits_for(beam_size),
            start,
            beam_size=beam_size,
            alpha=alpha,
            cache_batch_axis=cache_batch_axis,
        )
        return tokens[:, 0]
    if temperature == 0.0:
        return greedy_search(tokens_to_logits_for(1), start)
    if rng is None:
        raise ValueError("Sampling (temperature > 0) needs an rng key.")
    return temperature_sample(
        tokens_to_logits_for(1), start, rng, temperature=temperature, top_k=top_k, top_p=top_p
    )


SEARCH_OPTIONS = ("max_decode_len", "beam_size", "alpha", "temperature", "top_k", "top_p")


# ----------------------------------------------------------------------------
# The encoder-decoder Transformer.


def prefill(model, params, inputs, *, max_decode_len: int, prefix=None) -> DecodeStart:
    """Encode the source and run the decoder once over BOS and the whole prefix.

    inputs (B, S), PAD-padded; prefix (B, P) with P < max_decode_len, each row
    right-padded with PAD (rows may differ in length), or None. The cache is
    allocated for max_decode_len target positions.
    """
    prefix = _checked_prefix(model, inputs.shape[0], prefix, max_decode_len)
    encoded = model.apply({"params": params}, inputs, method=model.encode)  # (B, S, D)
    targets = jnp.zeros((inputs.shape[0], max_decode_len), jnp.int32)
    init = functools.partial(model.init, decode=True, method=model.decode)
    logits, variables = model.apply(
        {"params": params, "cache": _empty_cache(init, encoded, inputs, targets)},
        encoded,
        inputs,
        _decoder_inputs(prefix),
        decode=True,
        method=model.decode,
        mutable=["cache"],
    )  # logits (B, P + 1, V)
    return _start_after_prefill(logits, variables["cache"], prefix, max_decode_len)


def make_tokens_to_logits(model, params, inputs) -> TokensToLogits:
    """The decoding callback for steps after the prefill; inputs (N, S) mask the source.

    Cross-attention reads the encoder keys and values the prefill cached.
    """
    return _one_step_callback(model, params, None, inputs)


def _one_step_callback(model, params, *leading_args) -> TokensToLogits:
    """tokens_to_logits over `model.decode(*leading_args, tokens, decode=True)`."""

    def tokens_to_logits(tokens, cache):
        logits, variables = model.apply(
            {"params": params, "cache": cache},
            *leading_args,
            tokens,
            decode=True,
            method=model.decode,
            mutable=["cache"],
        )  # logits (N, 1, V)
        return logits[:, -1], variables["cache"]

    return tokens_to_logits


@functools.partial(jax.jit, static_argnames=("model", *SEARCH_OPTIONS))
def decode_batch(
    model,
    params,
    inputs,
    *,
    max_decode_len: int,
    beam_size: int = 1,
    alpha: float = 0.6,
    prefix=None,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    rng=None,
) -> jax.Array:
    """Translate a batch: inputs (B, S) -> tokens (B, max_decode_len).

    beam_size > 1 runs beam search and returns its best hypothesis; otherwise
    temperature=0 is greedy search and temperature > 0 samples (needs `rng`).
    `prefix` (B, P) forces the first target tokens of each row (see `prefill`).
    """
    start = prefill(model, params, inputs, max_decode_len=max_decode_len, prefix=prefix)
    return _search(
        lambda copies: make_tokens_to_logits(model, params, jnp.repeat(inputs, copies, axis=0)),
        start,
        beam_size=beam_size,
        alpha=alpha,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        rng=rng,
        cache_batch_axis=1 if model.config.scan_layers else 0,
    )


# ----------------------------------------------------------------------------
# The decoder-only language model.


def prefill_lm(
    model, params, prompt, *, max_decode_len: int, prepend_bos: bool = True
) -> DecodeStart:
    """Run the language model once over BOS and the whole prompt.

    prompt (B, P) with P < max_decode_len, each row right-padded with PAD
    (rows may differ in length). The prompt is the forced prefix of the
    output; the cache is allocated for max_decode_len positions.
    `prepend_bos=False` feeds the prompt alone, as a pretrained checkpoint whose
    tokenizer adds its own start token (or none: GPT-2) expects; every row then
    needs at least one token.
    """
    prompt = _checked_prefix(model, prompt.shape[0], prompt, max_decode_len)
    if not prepend_bos and prompt.shape[1] == 0:
        raise ValueError("prepend_bos=False needs a prompt of at least one token per row.")
    tokens = jnp.zeros((prompt.shape[0], max_decode_len), jnp.int32)
    init = functools.partial(model.init, decode=True, method=model.decode)
    logits, variables = model.apply(
        {"params": params, "cache": _empty_cache(init, tokens)},
        _decoder_inputs(prompt) if prepend_bos else prompt.astype(jnp.int32),
        decode=True,
        method=model.decode,
        mutable=["cache"],
    )  # logits (B, P + 1, V), or (B, P, V) without BOS
    return _start_after_prefill(
        logits, variables["cache"], prompt, max_decode_len, after_bos=prepend_bos
    )


def make_lm_tokens_to_logits(model, params) -> TokensToLogits:
    """The language model's decoding callback for steps after the prefill."""
    return _one_step_callback(model, params)


@functools.partial(jax.jit, static_argnames=("model", *SEARCH_OPTIONS))
def generate(
    model,
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
    """Continue a batch of prompts: prompt (B, P) -> tokens (B, max_decode_len).

    Each output row holds its prompt, then the generated tokens, then EOS and
    PAD. The search is chosen as in `decode_batch`.
    """
    start = prefill_lm(model, params, prompt, max_decode_len=max_decode_len)
    return _search(
        lambda copies: make_lm_tokens_to_logits(model, params),
        start,
        beam_size=beam_size,
        alpha=alpha,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        rng=rng,
        cache_batch_axis=1 if model.config.scan_layers else 0,
    )
