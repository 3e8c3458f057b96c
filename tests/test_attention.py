"""Scaled dot-product and multi-head attention against independent references."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxformer_lite import (
    MultiHeadAttention,
    TransformerConfig,
    attention_weights,
    dot_product_attention,
)
from flaxformer_lite.layers.masks import AttentionMask, right_padded_mask


def numpy_attention(query, key, value, mask, bias):
    """float64 reference: softmax(QK^T/sqrt(d) + bias) V, zero rows where all keys are masked."""
    query, key, value, bias = (np.asarray(a, np.float64) for a in (query, key, value, bias))
    logits = np.einsum("bqhd,bkhd->bhqk", query, key) / np.sqrt(query.shape[-1]) + bias
    logits = np.where(mask, logits, -np.inf)
    row_max = np.max(np.where(mask, logits, -1e300), axis=-1, keepdims=True)
    exp = np.where(mask, np.exp(logits - row_max), 0.0)
    total = exp.sum(-1, keepdims=True)
    weights = np.divide(exp, total, out=np.zeros_like(exp), where=total > 0)
    return np.einsum("bhqk,bkhd->bqhd", weights, value), weights


def random_inputs(seed, batch=3, queries=5, keys=7, heads=2, depth=8):
    rng = np.random.default_rng(seed)
    query = rng.normal(size=(batch, queries, heads, depth)).astype(np.float32)
    key = rng.normal(size=(batch, keys, heads, depth)).astype(np.float32)
    value = rng.normal(size=(batch, keys, heads, depth)).astype(np.float32)
    mask = rng.random((batch, 1, queries, keys)) < 0.6
    mask[0, 0, 1, :] = False  # a fully masked query row
    bias = rng.normal(size=(batch, heads, queries, keys)).astype(np.float32)
    return query, key, value, mask, bias


def right_padded_tokens(rng, batch, length, lengths):
    """(B, L) ids in [4, 20), PAD after each row's length."""
    tokens = rng.integers(4, 20, size=(batch, length))
    return np.where(np.arange(length)[None, :] < np.asarray(lengths)[:, None], tokens, 0)


def mask_case(name, rng, batch=3, queries=5, keys=7):
    """An AttentionMask of one kind and its dense (B, 1, Q, K) truth, built independently."""
    if name == "padding":  # cross-attention over right-padded rows; row 2 has no keys
        query_tokens = right_padded_tokens(rng, batch, queries, [5, 3, 2])
        key_tokens = right_padded_tokens(rng, batch, keys, [7, 4, 0])
        truth = (query_tokens != 0)[:, None, :, None] & (key_tokens != 0)[:, None, None, :]
        return right_padded_mask(jnp.asarray(query_tokens), jnp.asarray(key_tokens)), truth
    # The rest are self-attention: Q = K.
    tokens = right_padded_tokens(rng, batch, queries, [5, 3, 1])
    real = tokens != 0
    causal = np.tril(np.ones((queries, queries), bool))
    truth = real[:, None, :, None] & real[:, None, None, :] & causal
    if name == "causal_padding":
        return right_padded_mask(jnp.asarray(tokens), jnp.asarray(tokens), is_causal=True), truth
    if name == "packed":
        segments = np.array([[1, 1, 2, 2, 2], [1, 2, 2, 0, 0], [1, 0, 0, 0, 0]])
        truth = truth & (segments[:, None, :, None] == segments[:, None, None, :])
    elif name == "local_window":
        distance = np.abs(np.arange(queries)[:, None] - np.arange(queries)[None, :])
        truth = truth & (distance <= 1)
    return AttentionMask(dense=jnp.asarray(truth)), truth


MASK_CASES = ["padding", "causal_padding", "packed", "local_window"]
CPU_IMPLEMENTATIONS = ["explicit", "xla", "auto"]
ON_GPU = jax.default_backend() == "gpu"
NEEDS_GPU = pytest.mark.skipif(not ON_GPU, reason="cuDNN attention runs only on a GPU")


@NEEDS_GPU
@pytest.mark.parametrize("case", MASK_CASES)
def test_cudnn_matches_float64_numpy_in_bfloat16(case):
    rng = np.random.default_rng(MASK_CASES.index(case))
    queries, keys = (5, 7) if case == "padding" else (5, 5)
    query, key, value, _, _ = random_inputs(1, queries=queries, keys=keys, depth=64)
    mask, truth = mask_case(case, rng, queries=queries, keys=keys)
    expected, _ = numpy_attention(query, key, value, truth, np.zeros((1, 1, 1, 1)))
    as_bf16 = [jnp.asarray(array, jnp.bfloat16) for array in (query, key, value)]
    output, _ = dot_product_attention(*as_bf16, mask, implementation="cudnn")
    np.testing.assert_allclose(np.asarray(output, np.float32), expected, atol=3e-2)


@pytest.mark.parametrize("implementation", CPU_IMPLEMENTATIONS)
@pytest.mark.parametrize("case", MASK_CASES)
def test_every_implementation_matches_float64_numpy_and_the_explicit_path(case, implementation):
    rng = np.random.default_rng(MASK_CASES.index(case))
    queries, keys = (5, 7) if case == "padding" else (5, 5)
    query, key, value, _, _ = random_inputs(MASK_CASES.index(case), queries=queries, keys=keys)
    mask, truth = mask_case(case, rng, queries=queries, keys=keys)
    expected, _ = numpy_attention(query, key, value, truth, np.zeros((1, 1, 1, 1)))
    explicit, _ = dot_product_attention(query, key, value, mask, implementation="explicit")
    output, _ = dot_product_attention(query, key, value, mask, implementation=implementation)
    np.testing.assert_allclose(output, expected, atol=2e-5)
    np.testing.assert_allclose(output, explicit, atol=2e-6)
    rows_without_keys = ~truth.any(-1)[:, 0]  # (B, Q)
    assert rows_without_keys.any()
    np.testing.assert_array_equal(np.asarray(output)[rows_without_keys], 0.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("implementation", CPU_IMPLEMENTATIONS)
def test_random_mask_and_bias_match_float64_numpy(seed, implementation):
    query, key, value, mask, bias = random_inputs(seed)
    expected, expected_weights = numpy_attention(query, key, value, mask, bias)
    output, weights = dot_product_attention(
        query, key, value, mask, bias, implementation=implementation
    )
    np.testing.assert_allclose(output, expected, atol=2e-5)
    np.testing.assert_array_equal(np.asarray(output)[0, 1], 0.0)  # the fully masked row
    if implementation == "explicit":
        np.testing.assert_allclose(weights, expected_weights, atol=2e-6)
    else:
        assert weights is None


@pytest.mark.parametrize("implementation", ["xla", "auto"])
def test_fused_paths_take_the_compact_form_not_the_dense_mask(implementation):
    """A compact mask whose dense part lies: the fused paths must follow the compact part."""
    rng = np.random.default_rng(7)
    query, key, value, _, _ = random_inputs(7, queries=5, keys=5)
    honest, truth = mask_case("causal_padding", rng)
    lying = honest.replace(dense=jnp.ones_like(honest.dense))
    expected, _ = numpy_attention(query, key, value, truth, np.zeros((1, 1, 1, 1)))
    output, _ = dot_product_attention(query, key, value, lying, implementation=implementation)
    np.testing.assert_allclose(output, expected, atol=2e-5)


def test_matches_jax_nn_dot_product_attention():
    query, key, value, mask, _ = random_inputs(3)
    mask[:, :, :, 0] = True  # no fully masked rows: jax.nn averages those instead of zeroing
    expected = jax.nn.dot_product_attention(
        query, key, value, mask=np.broadcast_to(mask, (3, 1, 5, 7))
    )
    output, _ = dot_product_attention(query, key, value, mask, implementation="explicit")
    np.testing.assert_allclose(output, expected, atol=2e-6)


def test_softmax_is_float32_for_bfloat16_inputs():
    query, key, _, mask, _ = random_inputs(4)
    weights = attention_weights(query.astype(jnp.bfloat16), key.astype(jnp.bfloat16), mask)
    assert weights.dtype == jnp.float32
    sums = np.asarray(weights).sum(-1)
    np.testing.assert_allclose(sums[mask.any(-1).repeat(2, axis=1)], 1.0, atol=1e-6)


def test_attention_dropout_drops_weights_and_returns_them_as_before_dropout():
    query, key, value, mask, _ = random_inputs(5)
    plain_output, plain = dot_product_attention(query, key, value, mask)
    dropped_output, returned = dot_product_attention(
        query, key, value, mask, dropout_rate=0.5, dropout_rng=jax.random.key(0)
    )
    np.testing.assert_array_equal(returned, plain)  # the weights before dropout
    keep = np.asarray(jax.random.bernoulli(jax.random.key(0), 0.5, plain.shape))
    assert 0.3 < keep[np.asarray(plain) > 0].mean() < 0.7
    dropped = np.where(keep, 2 * np.asarray(plain, np.float64), 0.0)  # kept weights / (1 - 0.5)
    expected = np.einsum("bhqk,bkhd->bqhd", dropped, np.asarray(value, np.float64))
    np.testing.assert_allclose(dropped_output, expected, atol=2e-5)
    assert np.abs(np.asarray(dropped_output) - np.asarray(plain_output)).max() > 0.1


def test_sown_weights_are_taken_before_attention_dropout():
    config = TransformerConfig(
        vocab_size=10, d_model=8, num_heads=2, d_ff=8, max_len=8, attention_dropout_rate=0.5
    )
    x = jax.random.normal(jax.random.key(1), (2, 6, 8))
    layer = MultiHeadAttention(config, deterministic=False)
    rngs = {"dropout": jax.random.key(2)}
    variables = layer.init({"params": jax.random.key(0), **rngs}, x)
    train_output, state = layer.apply(variables, x, rngs=rngs, mutable=["intermediates"])
    (weights,) = state["intermediates"]["attention_weights"]
    np.testing.assert_allclose(np.asarray(weights).sum(-1), 1.0, atol=1e-6)
    eval_output = MultiHeadAttention(config).apply(variables, x)
    assert np.abs(np.asarray(train_output) - np.asarray(eval_output)).max() > 1e-3  # dropout ran


def test_multi_head_attention_equals_per_head_concat_then_output_projection():
    config = TransformerConfig(vocab_size=10, d_model=16, num_heads=4, d_ff=8, max_len=8)
    rng = np.random.default_rng(0)
    inputs_q = rng.normal(size=(2, 5, 16)).astype(np.float32)
    inputs_kv = rng.normal(size=(2, 6, 16)).astype(np.float32)
    mask = rng.random((2, 1, 5, 6)) < 0.7
    layer = MultiHeadAttention(config, is_self_attention=False)
    params = nn.meta.unbox(layer.init(jax.random.key(1), inputs_q, inputs_kv, mask)["params"])
    output = layer.apply({"params": params}, inputs_q, inputs_kv, mask)

    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
    heads = []
    for h in range(4):  # each head alone: its own W^Q, W^K, W^V slice
        q = inputs_q @ p["query"]["kernel"][:, h] + p["query"]["bias"][h]  # (B, Q, Dh)
        k = inputs_kv @ p["key"]["kernel"][:, h] + p["key"]["bias"][h]
        v = inputs_kv @ p["value"]["kernel"][:, h] + p["value"]["bias"][h]
        head, _ = numpy_attention(
            q[:, :, None], k[:, :, None], v[:, :, None], mask, np.zeros((1, 1, 1, 1))
        )
        heads.append(head[:, :, 0])  # (B, Q, Dh)
    concat = np.concatenate(heads, axis=-1)  # (B, Q, H * Dh)
    w_out = p["out"]["kernel"].reshape(16, 16)  # (H * Dh, D)
    expected = concat @ w_out + p["out"]["bias"]
    np.testing.assert_allclose(output, expected, atol=1e-5)


def test_attention_weights_are_sown_only_when_requested():
    config = TransformerConfig(vocab_size=10, d_model=8, num_heads=2, d_ff=8, max_len=8)
    x = jax.random.normal(jax.random.key(3), (1, 3, 8))
    layer = MultiHeadAttention(config)
    variables = layer.init(jax.random.key(0), x)
    plain = layer.apply(variables, x)
    with_weights, state = layer.apply(variables, x, mutable=["intermediates"])
    np.testing.assert_allclose(plain, with_weights, atol=1e-6)  # auto (xla) == explicit path
    (weights,) = state["intermediates"]["attention_weights"]
    assert weights.shape == (1, 2, 3, 3)


@NEEDS_GPU  # Lowering for a GPU target without one fails: jax asks the cuDNN library its version.
@pytest.mark.parametrize("implementation", ["cudnn", "auto"])
def test_cudnn_flash_attention_is_in_the_lowered_gpu_program(implementation):
    query = jnp.ones((2, 128, 4, 64), jnp.bfloat16)
    tokens = jnp.ones((2, 128), jnp.int32)
    mask = right_padded_mask(tokens, tokens, is_causal=True)
    attend = jax.jit(
        lambda q, k, v, m: dot_product_attention(q, k, v, m, implementation=implementation)[0]
    )
    hlo = attend.lower(query, query, query, mask).as_text()
    assert "custom_call" in hlo and "__cudnn$fmha" in hlo


@pytest.mark.skipif(ON_GPU, reason="the error is for backends without cuDNN")
def test_cudnn_without_a_gpu_is_a_one_line_error():
    query, key, value, mask, _ = random_inputs(0)
    with pytest.raises(ValueError, match="'cudnn' needs a GPU, but JAX runs on 'cpu'"):
        dot_product_attention(query, key, value, mask, implementation="cudnn")


def decode_layer_and_cache(cache_length=4):
    """Decoder self-attention with a cache of `cache_length` positions, and that cache."""
    config = TransformerConfig(vocab_size=10, d_model=8, num_heads=2, d_ff=8, max_len=8)
    layer = MultiHeadAttention(config, decode=True)
    x = jax.random.normal(jax.random.key(0), (1, cache_length, 8))
    variables = layer.init(jax.random.key(1), x)
    return layer, variables


def test_writing_past_the_decode_cache_raises_or_poisons_the_output():
    layer, variables = decode_layer_and_cache(cache_length=4)
    step = jax.random.normal(jax.random.key(2), (1, 1, 8))

    def run(tokens, cache_index):
        output, _ = layer.apply(variables, tokens, cache_index=cache_index, mutable=["cache"])
        return output

    assert np.isfinite(np.asarray(run(step, jnp.int32(3)))).all()  # the last slot
    with pytest.raises(ValueError, match=r"cache_index=4 \+ 1 new tokens overruns the 4-position"):
        run(step, jnp.int32(4))
    with pytest.raises(ValueError, match="got 5 tokens at once but its cache holds 4"):
        jax.jit(run)(jnp.ones((1, 5, 8)), jnp.int32(0))  # a static width: raised while tracing
    # A traced index cannot raise: the output is NaN instead of a clamped overwrite.
    assert np.isfinite(np.asarray(jax.jit(run)(step, jnp.int32(3)))).all()
    assert np.isnan(np.asarray(jax.jit(run)(step, jnp.int32(4)))).all()
