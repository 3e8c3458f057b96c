"""The decoder-only language model, checked against independent references: the
gradient to future positions, the full forward against cached decoding, examples
run alone against packed rows, a float64 NumPy loss, and an exact parameter count."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxformer_lite import TransformerConfig
from flaxformer_lite.decoding import generate, make_lm_tokens_to_logits, prefill_lm
from flaxformer_lite.families import DecoderOnly
from flaxformer_lite.models.decoder_only import DecoderOnlyTransformer
from flaxformer_lite.special_tokens import EOS_ID, PAD_ID, UNK_ID
from flaxformer_lite.training.losses import token_metrics

TINY = TransformerConfig(
    vocab_size=24,
    d_model=16,
    num_heads=2,
    d_ff=32,
    num_encoder_layers=1,  # unused by a decoder-only model
    num_decoder_layers=2,
    dropout_rate=0.0,
    max_len=12,
)
VARIANTS = {
    "pre_sinusoidal": TINY,
    "post_learned_scanned": TINY.replace(
        norm_placement="post", position_encoding="learned", scan_layers=True
    ),
}
SEP = 4  # any ordinary id stands in for the separator here
# Right-padded rows of different lengths: prompt SEP completion EOS.
TARGETS = jnp.array(
    [
        [5, 6, 7, SEP, 7, 6, 5, EOS_ID, 0, 0],
        [8, 9, SEP, 9, 8, EOS_ID, 0, 0, 0, 0],
        [10, 11, 12, 13, SEP, 13, 12, 11, 10, EOS_ID],
    ]
)
PROMPT_LENGTHS = np.array([4, 3, 5])  # prompt and SEP: the zero-weight prefix
LOSS_WEIGHTS = (np.arange(10)[None] >= PROMPT_LENGTHS[:, None]) & (np.asarray(TARGETS) != 0)


@functools.cache
def tiny(variant="pre_sinusoidal"):
    model = DecoderOnlyTransformer(VARIANTS[variant])
    params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), TARGETS)["params"])
    return model, params


@functools.partial(jax.jit, static_argnums=0)
def forward(model, params, targets):
    return model.apply({"params": params}, targets)


@pytest.mark.parametrize("implementation", ["xla", "explicit"])
def test_gradient_to_future_positions_is_exactly_zero(implementation):
    model = DecoderOnlyTransformer(TINY.replace(attention_implementation=implementation))
    variables = model.init(jax.random.key(0), TARGETS)

    def output_per_position(perturbations):
        logits = model.apply({**variables, "perturbations": perturbations}, TARGETS)
        return logits.sum(axis=(0, 2))  # (T,)

    jacobian = jax.jit(jax.jacrev(output_per_position))(variables["perturbations"])
    grads = np.asarray(jacobian["decoder"]["embedder"]["embedded"])  # (T_out, B, T_in, D)
    for position in range(TARGETS.shape[1]):
        assert np.all(grads[position, :, position + 1 :] == 0.0), position
        assert np.any(grads[position, :, : position + 1] != 0.0), position


@functools.partial(jax.jit, static_argnums=0)
def cached_logits(model, params, targets, prompt):
    """Teacher-forced logits (B, T, V) from the prefill over BOS + prompt, then one
    cached step per token; positions before the start index stay zero."""
    length = targets.shape[1]
    start = prefill_lm(model, params, prompt, max_decode_len=length)
    tokens_to_logits = make_lm_tokens_to_logits(model, params)
    logits = jnp.zeros(targets.shape + start.logits.shape[-1:])
    logits = logits.at[:, start.index].set(start.logits)

    def step(position, carry):
        logits, cache = carry
        next_logits, cache = tokens_to_logits(targets[:, position, None], cache)
        return logits.at[:, position + 1].set(next_logits), cache

    logits, _ = jax.lax.fori_loop(start.index, length - 1, step, (logits, start.cache))
    return logits, start.index


def prompts_of(targets, lengths, width):
    """Each row's first `lengths` tokens, right-padded with PAD to `width`."""
    keep = np.arange(width)[None] < np.asarray(lengths)[:, None]
    return jnp.asarray(np.where(keep, np.asarray(targets)[:, :width], PAD_ID))


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize(
    "prompt_lengths, start_index", [([0, 0, 0], 0), ([3, 1, 2], 1), (PROMPT_LENGTHS, 3)]
)
def test_cached_decoding_equals_the_full_forward(variant, prompt_lengths, start_index):
    model, params = tiny(variant)
    full = forward(model, params, TARGETS)
    prompt = prompts_of(TARGETS, prompt_lengths, width=5)
    cached, index = cached_logits(model, params, TARGETS, prompt)
    assert int(index) == start_index
    compared = (np.asarray(TARGETS) != PAD_ID) & (np.arange(TARGETS.shape[1]) >= start_index)
    np.testing.assert_allclose(np.asarray(cached)[compared], np.asarray(full)[compared], atol=1e-5)


def test_cached_decoding_in_bfloat16_stays_near_the_float32_forward():
    model, params = tiny()
    bf16 = DecoderOnlyTransformer(TINY.replace(dtype="bfloat16"))
    full = np.asarray(forward(model, params, TARGETS))
    cached, _ = cached_logits(bf16, params, TARGETS, prompts_of(TARGETS, [3, 1, 2], width=5))
    compared = (np.asarray(TARGETS) != PAD_ID) & (np.arange(TARGETS.shape[1]) >= 1)
    gap = np.abs(np.asarray(cached)[compared] - full[compared]).max()
    assert 0.0 < gap < 0.1  # bf16 really ran, and stayed within a few bf16 steps


def reference_greedy(model, params, prompt, length):
    """Greedy continuation that reruns the full forward for every token (numpy)."""
    prompt = np.asarray(prompt)
    tokens = np.zeros((prompt.shape[0], length), np.int32)
    tokens[:, : prompt.shape[1]] = prompt
    finished = np.zeros(prompt.shape[0], bool)
    for position in range(length):
        query = tokens.copy()
        query[:, position] = UNK_ID  # a placeholder keeps the previous input unmasked
        logits = np.array(forward(model, params, jnp.asarray(query)))[:, position]
        logits[:, PAD_ID] = -np.inf
        chosen = logits.argmax(-1)
        forced = tokens[:, position] if position < prompt.shape[1] else np.zeros_like(chosen)
        tokens[:, position] = np.where(forced != PAD_ID, forced, chosen)
        tokens[finished, position] = PAD_ID
        finished |= tokens[:, position] == EOS_ID
    return tokens


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_greedy_generation_equals_greedy_over_the_full_forward(variant):
    model, params = tiny(variant)
    prompt = prompts_of(TARGETS, PROMPT_LENGTHS, width=5)
    tokens = generate(model, params, prompt, max_decode_len=10)
    np.testing.assert_array_equal(tokens, reference_greedy(model, params, prompt, 10))
    assert len({tuple(row[5:]) for row in np.asarray(tokens)}) > 1  # rows differ


def test_family_predicts_the_completion_after_the_prompt():
    model, params = tiny()
    family = DecoderOnly(model_config=TINY, max_length=10, max_decode_length=10)
    batch = {"targets": TARGETS, "loss_weights": jnp.asarray(LOSS_WEIGHTS, jnp.float32)}
    completion = np.asarray(jax.jit(family.predict)(params, batch))
    prompt = prompts_of(TARGETS, PROMPT_LENGTHS, width=9)
    full = reference_greedy(model, params, prompt, 10)
    for row, length in enumerate(PROMPT_LENGTHS):
        expected = np.concatenate([full[row, length:], np.zeros(length, np.int32)])
        np.testing.assert_array_equal(completion[row], expected)


def test_completion_loss_counts_only_the_completion():
    model, params = tiny()
    family = DecoderOnly(model_config=TINY, max_length=10, max_decode_length=10)
    batch = {"targets": TARGETS, "loss_weights": jnp.asarray(LOSS_WEIGHTS, jnp.float32)}
    logits = forward(model, params, TARGETS)

    def loss(logits):
        return family.metric_sums(logits, batch, label_smoothing=0.0)["loss_sum"]

    # float64 reference: -log softmax at the label, summed over the completion only.
    z = np.asarray(logits, np.float64)
    log_probs = z - np.log(np.exp(z).sum(-1, keepdims=True))
    label_log_probs = np.take_along_axis(log_probs, np.asarray(TARGETS)[..., None], -1)[..., 0]
    np.testing.assert_allclose(loss(logits), -(label_log_probs * LOSS_WEIGHTS).sum(), rtol=1e-5)
    assert family.metric_sums(logits, batch, label_smoothing=0.0)["token_count"] == 4 + 3 + 5

    grads = np.asarray(jax.grad(loss)(logits))  # (B, T, V)
    assert np.all(grads[~LOSS_WEIGHTS] == 0.0)  # prompt, SEP and padding: zero gradient
    assert np.all(np.abs(grads[LOSS_WEIGHTS]).sum(-1) > 0.0)

    # And through the model: the loss cannot see the labels of prompt positions.
    relabelled = np.asarray(TARGETS).copy()
    relabelled[:, 0] = 20  # every row's first prompt token, as a label only
    no_model = token_metrics(logits, jnp.asarray(relabelled), weights=batch["loss_weights"])
    np.testing.assert_allclose(no_model["loss_sum"], loss(logits), rtol=1e-6)


def test_packed_rows_equal_the_examples_run_alone():
    model, params = tiny()
    first, second = [5, 6, SEP, 6, 5, EOS_ID], [9, SEP, 9, EOS_ID]
    packed = jnp.array([first + second + [0, 0]])
    segmentation = jnp.array([[1] * 6 + [2] * 4 + [0, 0]])
    positions = jnp.array([list(range(6)) + list(range(4)) + [0, 0]])
    logits = model.apply({"params": params}, packed, segmentation, positions)
    alone = forward(model, params, jnp.array([first + [0] * 6, second + [0] * 8]))
    np.testing.assert_allclose(logits[0, :6], alone[0, :6], atol=1e-5)
    np.testing.assert_allclose(logits[0, 6:10], alone[1, :4], atol=1e-5)


def test_exact_parameter_count_of_a_gpt():
    """nanoGPT's CPU size: vocab 65, context 64, 4 layers of width 128, learned positions."""
    vocab, length, d, layers = 65, 64, 128, 4
    config = TransformerConfig(
        vocab_size=vocab,
        d_model=d,
        num_heads=4,
        d_ff=4 * d,
        num_decoder_layers=layers,
        max_len=length,
        position_encoding="learned",
        mlp="gelu_tanh",
    )
    shapes = jax.eval_shape(
        DecoderOnlyTransformer(config).init, jax.random.key(0), jnp.ones((1, length), jnp.int32)
    )
    count = sum(leaf.size for leaf in jax.tree.leaves(shapes["params"]))
    attention = 4 * (d * d + d)  # Q, K, V and output projections with biases
    mlp = d * 4 * d + 4 * d + 4 * d * d + d
    norms = 2 * 2 * d  # scale and bias, before attention and before the MLP
    expected = vocab * d + length * d + layers * (attention + mlp + norms) + 2 * d  # + final norm
    assert count == expected  # the output layer is the tied embedding: no extra table


def test_a_decoder_only_model_has_no_cross_attention_and_rejects_long_inputs():
    model, params = tiny()
    names = {"/".join(str(k.key) for k in path) for path, _ in jax.tree.leaves_with_path(params)}
    assert not any("cross_attention" in name for name in names)
    with pytest.raises(ValueError, match="length 13 > max_len=12"):
        model.apply({"params": params}, jnp.ones((1, 13), jnp.int32))
