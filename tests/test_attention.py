"""Scaled dot-product and multi-head attention against independent references."""

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


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("fused", [False, True])
def test_matches_float64_numpy(seed, fused):
    query, key, value, mask, bias = random_inputs(seed)
    expected, expected_weights = numpy_attention(query, key, value, mask, bias)
    output, weights = dot_product_attention(query, key, value, mask, bias, fused=fused)
    np.testing.assert_allclose(output, expected, atol=2e-5)
    assert not np.isnan(np.asarray(output)).any()
    np.testing.assert_array_equal(np.asarray(output)[0, 1], 0.0)  # the fully masked row
    if fused:
        assert weights is None
    else:
        np.testing.assert_allclose(weights, expected_weights, atol=2e-6)


def test_matches_jax_nn_dot_product_attention():
    query, key, value, mask, _ = random_inputs(3)
    mask[:, :, :, 0] = True  # no fully masked rows: jax.nn averages those instead of zeroing
    expected = jax.nn.dot_product_attention(
        query, key, value, mask=np.broadcast_to(mask, (3, 1, 5, 7))
    )
    output, _ = dot_product_attention(query, key, value, mask, fused=False)
    np.testing.assert_allclose(output, expected, atol=2e-6)


def test_softmax_is_float32_for_bfloat16_inputs():
    query, key, _, mask, _ = random_inputs(4)
    weights = attention_weights(query.astype(jnp.bfloat16), key.astype(jnp.bfloat16), mask)
    assert weights.dtype == jnp.float32
    sums = np.asarray(weights).sum(-1)
    np.testing.assert_allclose(sums[mask.any(-1).repeat(2, axis=1)], 1.0, atol=1e-6)


def test_attention_dropout_zeroes_and_rescales_weights():
    query, key, value, mask, _ = random_inputs(5)
    _, plain = dot_product_attention(query, key, value, mask)
    _, dropped = dot_product_attention(
        query, key, value, mask, dropout_rate=0.5, dropout_rng=jax.random.key(0)
    )
    plain, dropped = np.asarray(plain), np.asarray(dropped)
    kept = dropped != 0
    assert 0.3 < kept[plain > 0].mean() < 0.7
    np.testing.assert_allclose(dropped[kept], 2 * plain[kept], rtol=1e-6)


def test_multi_head_attention_equals_per_head_concat_then_output_projection():
    config = TransformerConfig(vocab_size=10, d_model=16, num_heads=4, d_ff=8, max_len=8)
    rng = np.random.default_rng(0)
    inputs_q = rng.normal(size=(2, 5, 16)).astype(np.float32)
    inputs_kv = rng.normal(size=(2, 6, 16)).astype(np.float32)
    mask = rng.random((2, 1, 5, 6)) < 0.7
    layer = MultiHeadAttention(config, is_self_attention=False)
    params = layer.init(jax.random.key(1), inputs_q, inputs_kv, mask)["params"]
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
    x = jnp.ones((1, 3, 8))
    layer = MultiHeadAttention(config)
    variables = layer.init(jax.random.key(0), x)
    plain = layer.apply(variables, x)
    with_weights, state = layer.apply(variables, x, mutable=["intermediates"])
    np.testing.assert_allclose(plain, with_weights, atol=1e-6)  # fused == explicit path
    (weights,) = state["intermediates"]["attention_weights"]
    assert weights.shape == (1, 2, 3, 3)
