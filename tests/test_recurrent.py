"""The recurrent families: Flax's cells wired as their equations say, decoding with the
carry as the cache, additive attention, the bidirectional encoder, learning and resuming."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_training import TINY_TRAINING

from configs.default import get_config
from flaxformer_lite.config import ConfigError
from flaxformer_lite.decoding import beam_search, length_penalty
from flaxformer_lite.families import make_family
from flaxformer_lite.families.recurrent import (
    make_tokens_to_logits,
    prefill_lm,
    prefill_seq2seq,
    translate_batch,
)
from flaxformer_lite.models.recurrent import (
    BidirectionalStack,
    RecurrentConfig,
    RecurrentLM,
    RecurrentSeq2Seq,
    RecurrentStack,
)
from flaxformer_lite.special_tokens import EOS_ID, PAD_ID
from flaxformer_lite.training.checkpoint import restore_params
from flaxformer_lite.training.trainer import train_and_evaluate

VOCAB = 13
# Right-padded sources of different lengths, each ending in EOS; targets likewise.
INPUTS = np.array([[5, 6, 7, 8, 9, EOS_ID], [4, 10, EOS_ID, PAD_ID, PAD_ID, PAD_ID]])
TARGETS = np.array([[9, 8, 7, 6, 5, EOS_ID], [10, 4, EOS_ID, PAD_ID, PAD_ID, PAD_ID]])


def init(module, *args, **kwargs):
    """Parameters as plain arrays, their logical axis names unboxed."""
    return nn.meta.unbox(module.init(jax.random.key(0), *args, **kwargs)["params"])


def randomized(params, seed=1):
    """Every leaf drawn afresh (biases too, which Flax initialises to 0)."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return tree.unflatten(
        [0.5 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves, strict=True)]
    )


# ----------------------------------------------------------------------------
# Each cell against its equations, in float64 NumPy.


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def numpy_step(cell, p, carry, x):
    """One step of `cell` written from its equations; p holds its Dense layers' weights."""

    def dense(name, inputs):
        layer = p[name]
        return inputs @ layer["kernel"] + layer.get("bias", 0.0)

    if cell == "rnn":  # h' = tanh(W_i x + b + W_h h)
        h = np.tanh(dense("i", x) + dense("h", carry))
        return h, h
    if cell == "lstm":  # input, forget, cell and output gates; c' = f c + i g, h' = o tanh c'
        c, h = carry
        i = sigmoid(dense("ii", x) + dense("hi", h))
        f = sigmoid(dense("if", x) + dense("hf", h))
        g = np.tanh(dense("ig", x) + dense("hg", h))
        o = sigmoid(dense("io", x) + dense("ho", h))
        c = f * c + i * g
        h = o * np.tanh(c)
        return (c, h), h
    # gru: reset r, update z, candidate n = tanh(W_in x + b_in + r (W_hn h + b_hn))
    h = carry
    r = sigmoid(dense("ir", x) + dense("hr", h))
    z = sigmoid(dense("iz", x) + dense("hz", h))
    n = np.tanh(dense("in", x) + r * dense("hn", h))
    h = (1.0 - z) * n + z * h
    return h, h


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_each_cell_follows_its_equations(cell):
    batch, steps, features, hidden = 2, 4, 3, 5
    x = np.random.default_rng(0).normal(size=(batch, steps, features)).astype(np.float32)
    stack = RecurrentStack(cell, hidden, num_layers=1)
    params = randomized(init(stack, x))
    (carry,), outputs = jax.jit(stack.apply)({"params": params}, x)

    weights = jax.tree.map(lambda w: np.asarray(w, np.float64), params["layer_0"]["cell"])
    zero = np.zeros((batch, hidden))
    expected_carry = (zero, zero) if cell == "lstm" else zero
    for t in range(steps):
        expected_carry, expected = numpy_step(cell, weights, expected_carry, x[:, t])
        np.testing.assert_allclose(outputs[:, t], expected, atol=1e-5, rtol=1e-5)
    jax.tree.map(
        functools.partial(np.testing.assert_allclose, atol=1e-5, rtol=1e-5),
        carry,
        expected_carry,
    )


# ----------------------------------------------------------------------------
# Decoding: the carry is the cache.

SEQ2SEQ_VARIANTS = {
    "lstm_attention_bidirectional": dict(cell="lstm", attention=True, bidirectional=True),
    "gru_plain_two_layers": dict(cell="gru", attention=False, bidirectional=False, num_layers=2),
    "rnn_attention_two_layers": dict(cell="rnn", attention=True, bidirectional=True, num_layers=2),
}


def seq2seq(**changes):
    config = RecurrentConfig(vocab_size=VOCAB, embed_dim=8, hidden_size=6, **changes)
    model = RecurrentSeq2Seq(config)
    return model, randomized(init(model, INPUTS, TARGETS))


@pytest.mark.parametrize("variant", SEQ2SEQ_VARIANTS)
def test_step_by_step_decoding_equals_the_teacher_forced_forward(variant):
    model, params = seq2seq(**SEQ2SEQ_VARIANTS[variant])
    forward = jax.jit(model.apply)({"params": params}, INPUTS, TARGETS)  # (B, T, V)
    prefill = jax.jit(prefill_seq2seq, static_argnames=("model", "max_decode_len"))
    start = prefill(model, params, INPUTS, max_decode_len=TARGETS.shape[1])
    step = jax.jit(make_tokens_to_logits(model, params))
    logits, cache = start.logits, start.cache
    for t in range(TARGETS.shape[1]):
        real = TARGETS[:, t] != PAD_ID  # the forward feeds PAD after EOS, decoding EOS
        np.testing.assert_allclose(logits[real], forward[real, t], atol=1e-5, rtol=1e-5)
        logits, cache = step(jnp.asarray(TARGETS[:, t, None]), cache)


def test_lm_prefill_over_uneven_prompts_then_steps_equal_the_forward():
    model = RecurrentLM(RecurrentConfig(vocab_size=VOCAB, cell="lstm", embed_dim=8, hidden_size=6))
    tokens = np.array([[5, 6, 7, 8, 9, 4], [4, 10, 11, 3, 2, 9]])
    params = randomized(init(model, tokens))
    forward = jax.jit(model.apply)({"params": params}, tokens)  # (B, T, V)
    prompt = np.array([[5, 6, 7], [4, PAD_ID, PAD_ID]])  # the shortest holds 1 token
    prefill = jax.jit(prefill_lm, static_argnames=("model", "max_decode_len"))
    start = prefill(model, params, jnp.asarray(prompt), max_decode_len=tokens.shape[1])
    assert int(start.index) == 1
    step = jax.jit(make_tokens_to_logits(model, params))
    logits, cache = start.logits, start.cache
    for t in range(1, tokens.shape[1]):
        np.testing.assert_allclose(logits, forward[:, t], atol=1e-5, rtol=1e-5)
        logits, cache = step(jnp.asarray(tokens[:, t, None]), cache)


def test_beam_search_scores_are_the_forward_log_probabilities_of_its_hypotheses():
    """Beam search reorders the carry along its batch axis; a wrong reorder would score
    each hypothesis with another one's state."""
    model, params = seq2seq(cell="lstm", attention=True, bidirectional=True)
    beams, length, alpha = 3, 5, 0.6
    start = prefill_seq2seq(model, params, INPUTS, max_decode_len=length)
    search = jax.jit(functools.partial(beam_search, beam_size=beams, alpha=alpha), static_argnums=0)
    tokens, scores = search(make_tokens_to_logits(model, params), start)
    assert np.all(np.isfinite(scores))
    forward = jax.jit(model.apply)
    for k in range(beams):
        hypothesis = tokens[:, k]  # (B, L): EOS then PAD, or L tokens without EOS
        log_probs = jax.nn.log_softmax(forward({"params": params}, INPUTS, hypothesis))
        chosen = jnp.take_along_axis(log_probs, hypothesis[..., None], axis=-1)[..., 0]
        real = hypothesis != PAD_ID
        expected = jnp.sum(jnp.where(real, chosen, 0.0), axis=1)
        expected /= length_penalty(real.sum(axis=1), alpha)
        np.testing.assert_allclose(scores[:, k], expected, atol=1e-4, rtol=1e-4)


def test_sampling_from_the_top_token_alone_is_greedy_search():
    model, params = seq2seq(cell="gru", attention=True, bidirectional=False)
    greedy = translate_batch(model, params, INPUTS, max_decode_len=6)
    sampled = translate_batch(
        model, params, INPUTS, max_decode_len=6, temperature=1.0, top_k=1, rng=jax.random.key(3)
    )
    np.testing.assert_array_equal(sampled, greedy)


# ----------------------------------------------------------------------------
# Additive attention and the encoder.


def test_attention_weights_sum_to_one_and_padding_changes_nothing():
    model, params = seq2seq(cell="lstm", attention=True, bidirectional=True)
    logits, state = model.apply({"params": params}, INPUTS, TARGETS, mutable=["intermediates"])
    (weights,) = state["intermediates"]["decoder"]["attention"]["attention_weights"]
    assert weights.shape == (2, TARGETS.shape[1], INPUTS.shape[1])  # (B, T, S)
    np.testing.assert_allclose(weights.sum(axis=-1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(weights[1][:, 3:], 0.0)  # row 1's source is 3 tokens long
    assert np.all(weights[1][:, :3] > 0)

    # More padding: the encoder's final state and the attention ignore it alike.
    padded = np.pad(INPUTS, ((0, 0), (0, 4)))
    np.testing.assert_allclose(
        model.apply({"params": params}, padded, TARGETS), logits, atol=1e-6, rtol=1e-6
    )


@pytest.mark.parametrize("cell", ["lstm"])
def test_bidirectional_states_of_a_reversed_input_mirror_those_of_the_input(cell):
    """Swap the two directions' weights and reverse each row's real tokens: every state
    of the first run comes back at the mirrored position, in the other half."""
    half, lengths = 3, np.array([5, 3])
    x = np.random.default_rng(1).normal(size=(2, 5, 4)).astype(np.float32)
    reversed_x = x.copy()
    for row, n in enumerate(lengths):
        reversed_x[row, :n] = x[row, n - 1 :: -1]
    stack = BidirectionalStack(cell, 2 * half, num_layers=1)
    params = randomized(init(stack, x, seq_lengths=lengths))
    layer = params["layer_0"]
    swapped = {
        "layer_0": {"forward_rnn": layer["backward_rnn"], "backward_rnn": layer["forward_rnn"]}
    }

    apply = jax.jit(stack.apply)
    (carry,), states = apply({"params": params}, x, seq_lengths=lengths)
    (mirror_carry,), mirror = apply({"params": swapped}, reversed_x, seq_lengths=lengths)
    for row, n in enumerate(lengths):
        np.testing.assert_allclose(
            states[row, :n, :half], mirror[row, n - 1 :: -1, half:], atol=1e-6
        )
        np.testing.assert_allclose(
            states[row, :n, half:], mirror[row, n - 1 :: -1, :half], atol=1e-6
        )
    # The final carries: the forward direction's after the last real token is the mirror's
    # backward one, which starts there too.
    for final, mirrored in zip(jax.tree.leaves(carry), jax.tree.leaves(mirror_carry), strict=True):
        np.testing.assert_allclose(final[:, :half], mirrored[:, half:], atol=1e-6)


def test_bad_recurrent_fields_are_config_errors_naming_the_field():
    config = get_config()
    config.update(model="rnn_seq2seq", cell="transformer")
    with pytest.raises(ConfigError, match=r"config\.cell='transformer'.*rnn"):
        make_family(config, vocab_size=VOCAB)
    config.update(cell="lstm", rnn_hidden_size=7)
    with pytest.raises(ConfigError, match=r"config\.rnn_hidden_size=7.*even"):
        make_family(config, vocab_size=VOCAB)


# ----------------------------------------------------------------------------
# Training through train.py's trainer: each family learns to copy, and resumes exactly.

# Copy short strings. Rows hold one example each, so larger batches than packed ones; the
# rsqrt schedule does not depend on num_train_steps, so the resume test's runs compile the
# learning run's programs.
COPY_RUN = dict(
    TINY_TRAINING,
    dataset="copy",
    synthetic_min_length=2,
    synthetic_max_length=4,
    max_target_length=10,  # the LM's rows hold source SEP target EOS
    max_decode_length=10,
    num_train_examples=2_000,
    per_device_batch_size=32,
    per_device_eval_batch_size=16,
    rnn_hidden_size=64,
    label_smoothing=0.0,
    schedule="rsqrt",
    learning_rate=1.0,
    warmup_steps=20,
    num_train_steps=200,
    eval_every_steps=200,
    checkpoint_every_steps=200,
    log_every_steps=100,
)
SEQ2SEQ = dict(model="rnn_seq2seq", cell="lstm")
LM = dict(model="rnn_lm", cell="gru")


def copy_config(**changes):
    config = get_config()
    config.update({**COPY_RUN, **changes})
    return config


# The LM must carry the whole prompt in its state: after 200 steps it copies 0.77 of the
# held-out strings (the seq2seq model, which attends to the source, about all of them).
@pytest.mark.parametrize(
    ("family", "least_exact_match"), [(SEQ2SEQ, 0.8), (LM, 0.5)], ids=["rnn_seq2seq", "rnn_lm"]
)
def test_each_recurrent_family_learns_to_copy(family, least_exact_match, tmp_path):
    """Greedy exact match on held-out strings: about 0 untrained."""
    metrics = train_and_evaluate(copy_config(**family), str(tmp_path))
    assert metrics["exact_match"] >= least_exact_match, metrics


def test_resume_equals_uninterrupted_training_of_a_recurrent_model(tmp_path):
    def run_params(workdir, steps):
        config = copy_config(**SEQ2SEQ, num_train_steps=steps, checkpoint_every_steps=4)
        train_and_evaluate(config, str(workdir))
        return restore_params(str(workdir))

    uninterrupted = run_params(tmp_path / "straight", 8)
    run_params(tmp_path / "resumed", 4)
    resumed = run_params(tmp_path / "resumed", 8)
    jax.tree.map(np.testing.assert_array_equal, resumed, uninterrupted)
