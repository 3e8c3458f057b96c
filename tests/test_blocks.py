"""The modern building blocks, each checked against its definition: RMSNorm and the
MLP variants against float64 NumPy formulas, grouped-query attention against
multi-head attention with repeated key/value kernels, the decode cache's size, RoPE's
dependence on offsets alone, T5's buckets and ALiBi's slopes against the papers'
formulas, the logical axis names, and every option's cached decoding against its
full forward (under nn.scan and remat), on packed rows and on the fused path."""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxformer_lite import Transformer, TransformerConfig
from flaxformer_lite.decoding import (
    make_lm_tokens_to_logits,
    make_tokens_to_logits,
    prefill,
    prefill_lm,
)
from flaxformer_lite.layers.attention import MultiHeadAttention, dot_product_attention
from flaxformer_lite.layers.embed import TokenEmbedding
from flaxformer_lite.layers.mlp import FeedForward
from flaxformer_lite.layers.norm import norm_layer
from flaxformer_lite.layers.position_bias import alibi_bias, alibi_slopes, t5_relative_bucket
from flaxformer_lite.layers.rotary import apply_rotary
from flaxformer_lite.layers.sharding import AXIS_NAMES
from flaxformer_lite.models.decoder_only import DecoderOnlyTransformer
from flaxformer_lite.special_tokens import EOS_ID, PAD_ID

TINY = TransformerConfig(
    vocab_size=24,
    d_model=16,
    num_heads=4,
    d_ff=32,
    num_decoder_layers=2,
    dropout_rate=0.0,
    max_len=12,
)
RNG = np.random.default_rng(0)
X = RNG.normal(size=(2, 5, 16)).astype(np.float32)  # (B, L, D)


def random_params(module, *args):
    """The module's parameters, every one drawn from N(0, 0.5): zero biases and unit
    norm scales would hide a formula that forgets them."""
    shapes = nn.meta.unbox(jax.eval_shape(module.init, jax.random.key(0), *args)["params"])
    leaves, treedef = jax.tree.flatten(shapes)
    drawn = [RNG.normal(scale=0.5, size=leaf.shape).astype(np.float32) for leaf in leaves]
    return jax.tree.unflatten(treedef, drawn)


def as_float64(tree):
    return jax.tree.map(lambda leaf: np.asarray(leaf, np.float64), tree)


# --- Norms ---------------------------------------------------------------------------


def test_rmsnorm_is_x_over_root_mean_square_times_scale_with_no_mean_and_no_bias():
    config = TINY.replace(norm="rmsnorm", norm_epsilon=0.1)  # large eps: it must be inside
    layer = norm_layer(config, "norm")
    params = random_params(layer, X)
    assert set(params) == {"scale"}
    x = X.astype(np.float64) + 3.0  # a mean an implementation that subtracts it would lose
    expected = x / np.sqrt(np.mean(x**2, axis=-1, keepdims=True) + 0.1) * params["scale"]
    output = layer.apply({"params": params}, x.astype(np.float32))
    np.testing.assert_allclose(output, expected, rtol=1e-5, atol=1e-5)


def test_layernorm_keeps_its_epsilon_and_bias():
    layer = norm_layer(TINY.replace(norm_epsilon=0.1), "norm")
    params = random_params(layer, X)
    x = X.astype(np.float64)
    centred = x - x.mean(axis=-1, keepdims=True)
    normalised = centred / np.sqrt(np.mean(centred**2, axis=-1, keepdims=True) + 0.1)
    expected = normalised * params["scale"] + params["bias"]
    output = layer.apply({"params": params}, X)
    np.testing.assert_allclose(output, expected, rtol=1e-5, atol=1e-5)


# --- Feed-forward variants -----------------------------------------------------------

_erf = np.vectorize(math.erf)
NUMPY_ACTIVATIONS = {
    "relu": lambda z: np.maximum(z, 0.0),
    "gelu": lambda z: 0.5 * z * (1.0 + _erf(z / np.sqrt(2.0))),
    "gelu_tanh": lambda z: 0.5 * z * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (z + 0.044715 * z**3))),
    "silu": lambda z: z / (1.0 + np.exp(-z)),
}


def numpy_mlp(mlp: str, p, x):
    """The feed-forward definitions in float64: plain W2 act(W1 x + b1) + b2, or gated
    W2 (act(W_gate x) * W_up x) with SiLU (SwiGLU) or tanh-GELU (GeGLU)."""

    def dense(name, z):
        return z @ p[name]["kernel"] + p[name].get("bias", 0.0)

    if mlp in ("swiglu", "geglu"):
        act = NUMPY_ACTIVATIONS["silu" if mlp == "swiglu" else "gelu_tanh"]
        hidden = act(dense("wi_gate", x)) * dense("wi_up", x)
    else:
        hidden = NUMPY_ACTIVATIONS[mlp](dense("wi", x))
    return dense("wo", hidden)


@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("mlp", ["relu", "gelu", "gelu_tanh", "swiglu", "geglu"])
def test_feed_forward_matches_its_numpy_formula(mlp, use_bias):
    layer = FeedForward(TINY.replace(mlp=mlp, use_bias=use_bias))
    params = random_params(layer, X)
    has_bias = any("bias" in kernel_and_bias for kernel_and_bias in params.values())
    assert has_bias == use_bias
    expected = numpy_mlp(mlp, as_float64(params), X.astype(np.float64))
    np.testing.assert_allclose(layer.apply({"params": params}, X), expected, rtol=1e-5, atol=1e-5)


def test_exact_and_tanh_gelu_differ():
    """The two GELUs must be different functions, or the test above proves nothing."""
    z = np.linspace(-3, 3, 13)
    assert np.abs(NUMPY_ACTIVATIONS["gelu"](z) - NUMPY_ACTIVATIONS["gelu_tanh"](z)).max() > 1e-4


# --- Grouped-query attention ---------------------------------------------------------


@pytest.mark.parametrize("implementation", ["explicit", "xla"])
def test_grouped_query_attention_is_mha_with_each_kv_head_shared_by_its_group(implementation):
    """H=4 query heads, 2 KV heads: query heads 0, 1 read KV head 0 and 2, 3 read KV head 1,
    exactly as multi-head attention whose key/value kernels repeat each KV head twice."""
    config = TINY.replace(attention_implementation=implementation)
    grouped = MultiHeadAttention(config.replace(num_kv_heads=2))
    params = random_params(grouped, X)
    assert params["key"]["kernel"].shape == (16, 2, 4)  # (D, Hkv, Dh)
    repeated = {
        name: jax.tree.map(lambda w: np.repeat(w, 2, axis=-2 if w.ndim == 2 else 1), params[name])
        if name in ("key", "value")
        else params[name]
        for name in params
    }
    mha = MultiHeadAttention(config)
    expected = mha.apply({"params": repeated}, X)
    np.testing.assert_allclose(grouped.apply({"params": params}, X), expected, atol=1e-6)
    # num_kv_heads == num_heads is multi-head attention itself, bit for bit.
    same = MultiHeadAttention(config.replace(num_kv_heads=4)).apply({"params": repeated}, X)
    np.testing.assert_array_equal(same, expected)


def cache_bytes(config: TransformerConfig) -> int:
    model = DecoderOnlyTransformer(config)
    tokens = jnp.ones((2, 8), jnp.int32)
    init = functools.partial(model.init, decode=True, method=model.decode)
    cache = jax.eval_shape(init, jax.random.key(0), tokens)["cache"]
    return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(cache))


def test_multi_query_cache_holds_one_head_of_h():
    index_bytes = 4  # the int32 cache index beside the keys and values
    multi_head = cache_bytes(TINY) - index_bytes
    multi_query = cache_bytes(TINY.replace(num_kv_heads=1)) - index_bytes
    assert multi_query * TINY.num_heads == multi_head


def test_head_dim_set_apart_from_d_model_shapes_every_projection():
    layer = MultiHeadAttention(TINY.replace(head_dim=6, num_kv_heads=2))
    params = random_params(layer, X)
    assert params["query"]["kernel"].shape == (16, 4, 6)
    assert params["key"]["kernel"].shape == (16, 2, 6)
    assert params["out"]["kernel"].shape == (4, 6, 16)
    assert layer.apply({"params": params}, X).shape == X.shape


def test_unscaled_embeddings_are_the_table_rows():
    tokens = jnp.array([[3, 7, 0]])
    for scale_embeddings, factor in ((True, 4.0), (False, 1.0)):  # sqrt(d_model) = 4
        embedding = TokenEmbedding(TINY.replace(scale_embeddings=scale_embeddings), 24)
        params = random_params(embedding, tokens)
        table = params["embedding"]["embedding"]
        np.testing.assert_array_equal(
            embedding.apply({"params": params}, tokens), table[np.asarray(tokens)] * factor
        )


# --- Positions: RoPE, T5 buckets, ALiBi ---------------------------------------------


def numpy_rotate_half(x, position, theta=10000.0):
    """RoPE as Hugging Face Llama writes it, in float64: x * cos + rotate_half(x) * sin,
    with rotate_half(x) = (-x2, x1) and the angle table repeated over both halves."""
    dim = x.shape[-1]
    inverse_frequencies = theta ** -(np.arange(0, dim, 2) / dim)
    angles = np.concatenate([position * inverse_frequencies] * 2)
    first, second = x[: dim // 2], x[dim // 2 :]
    return x * np.cos(angles) + np.concatenate([-second, first]) * np.sin(angles)


def rotated(vector, position):
    """One (Dh,) vector rotated at one position by the library's apply_rotary."""
    x = jnp.asarray(vector, jnp.float32)[None, None, None, :]  # (B, L, H, Dh)
    return np.asarray(apply_rotary(x, jnp.array([[position]]), 10000.0))[0, 0, 0]


def test_rope_matches_llamas_rotate_half_and_scores_depend_only_on_the_offset():
    query, key = RNG.normal(size=(2, 8))
    np.testing.assert_allclose(rotated(query, 5), numpy_rotate_half(query, 5), atol=1e-5)

    def score(query_position, key_position):
        return rotated(query, query_position) @ rotated(key, key_position)

    for offset in (0, 3, -2):
        scores = [score(start + offset, start) for start in (0, 4, 9, 30)]
        np.testing.assert_allclose(scores, scores[0], atol=1e-4)
    assert abs(score(3, 0) - score(4, 0)) > 1e-3  # ...but the offset itself matters


def t5_bucket_by_hand(offset: int, bidirectional: bool, num_buckets=32, max_distance=128):
    """Raffel et al. 2020 / Mesh TensorFlow's rule, one offset (key - query) at a time."""
    bucket = 0
    if bidirectional:
        num_buckets //= 2
        if offset > 0:
            bucket = num_buckets
        distance = abs(offset)
    else:
        distance = max(-offset, 0)
    exact = num_buckets // 2
    if distance < exact:
        return bucket + distance
    log_part = math.log(distance / exact) / math.log(max_distance / exact)
    return bucket + min(exact + int(log_part * (num_buckets - exact)), num_buckets - 1)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_t5_buckets_equal_the_papers_rule(bidirectional):
    offsets = np.arange(-300, 301)
    expected = [t5_bucket_by_hand(int(n), bidirectional) for n in offsets]
    got = t5_relative_bucket(
        jnp.asarray(offsets), bidirectional=bidirectional, num_buckets=32, max_distance=128
    )
    np.testing.assert_array_equal(got, expected)
    # A few by hand: 0 -> 0; one back -> 1; far back -> the last bucket of its half.
    far_back = 15 if bidirectional else 31
    assert [t5_bucket_by_hand(n, bidirectional) for n in (0, -1, -1000)] == [0, 1, far_back]


def test_alibi_slopes_for_8_heads_are_the_papers_halvings():
    """Press et al. (2022): for 8 heads the slopes are 1/2, 1/4, ..., 1/256."""
    np.testing.assert_allclose(alibi_slopes(8), [2.0**-k for k in range(1, 9)], rtol=0)
    # 12 heads: the 8-head slopes, then every other slope of the 16-head sequence.
    sixteen = [2.0 ** (-k / 2) for k in range(1, 17)]
    np.testing.assert_allclose(alibi_slopes(12), [2.0**-k for k in range(1, 9)] + sixteen[0::2][:4])
    bias = np.asarray(alibi_bias(8, jnp.arange(4), jnp.arange(4)))  # (1, H, Q, K)
    np.testing.assert_allclose(bias[0, 1, 3], [-0.75, -0.5, -0.25, 0.0])  # slope 1/4


def test_unscaled_logits_are_a_plain_dot_product():
    query, key, value = (RNG.normal(size=(1, 3, 2, 4)).astype(np.float32) for _ in range(3))
    output, _ = dot_product_attention(query, key, value, scale=1.0)
    logits = np.einsum("bqhd,bkhd->bhqk", query, key).astype(np.float64)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    np.testing.assert_allclose(output, np.einsum("bhqk,bkhd->bqhd", weights, value), atol=1e-5)


# --- Logical axis names --------------------------------------------------------------


def test_every_parameter_carries_logical_axis_names_and_scan_adds_layers():
    config = TINY.replace(
        mlp="swiglu", norm="rmsnorm", position_encoding="learned", tie_output_embedding=False
    )
    for scan_layers in (False, True):
        model = DecoderOnlyTransformer(config.replace(scan_layers=scan_layers))
        params = jax.eval_shape(model.init, jax.random.key(0), jnp.ones((1, 8), jnp.int32))
        leaves = jax.tree.leaves_with_path(
            params["params"], is_leaf=lambda x: isinstance(x, nn.Partitioned)
        )
        for path, leaf in leaves:
            name = jax.tree_util.keystr(path)
            assert isinstance(leaf, nn.Partitioned), f"{name} has no axis names"
            assert len(leaf.names) == leaf.value.ndim, name
            assert set(leaf.names) <= set(AXIS_NAMES) | {None}, name
            in_stack = "stack" in name
            assert (leaf.names[0] == "layers") == (scan_layers and in_stack), name


# --- Every option: scan, remat, and cached decoding == the full forward --------------

OPTIONS = {
    "llama_rope_swiglu_rmsnorm_gqa": dict(
        position_encoding="rope", mlp="swiglu", norm="rmsnorm", num_kv_heads=2, use_bias=False
    ),
    "t5_relative_geglu_multi_query": dict(
        position_encoding="t5_relative",
        relative_num_buckets=8,
        relative_max_distance=8,  # offsets up to 9 reach the log-spaced buckets
        mlp="geglu",
        num_kv_heads=1,
        scale_attention_logits=False,
        scale_decoder_output=True,
    ),
    "alibi_gelu_head_dim_unscaled": dict(
        position_encoding="alibi", mlp="gelu", head_dim=6, scale_embeddings=False
    ),
    "no_positions_gelu_tanh": dict(position_encoding="none", mlp="gelu_tanh"),
}
STACKINGS = {
    "loop": dict(),
    "scan_remat": dict(scan_layers=True, remat_policy="full"),
}
TARGETS = jnp.array(
    [[5, 6, 7, 8, 9, 10, 11, EOS_ID, 0, 0], [8, 9, 10, 9, 8, 12, 13, 14, 15, EOS_ID]]
)
PROMPT = jnp.array([[5, 6, 7, 0], [8, 9, 0, 0]])  # ragged: decoding starts at index 2


@functools.partial(jax.jit, static_argnums=0)
def full_and_cached_logits(model, params, targets, prompt):
    """The teacher-forced forward, and the same logits from the prefill over BOS and the
    prompt followed by one cached step per token (zero before the start index)."""
    full = model.apply({"params": params}, targets)
    length = targets.shape[1]
    start = prefill_lm(model, params, prompt, max_decode_len=length)
    tokens_to_logits = make_lm_tokens_to_logits(model, params)
    cached = jnp.zeros_like(full).at[:, start.index].set(start.logits)

    def step(position, carry):
        cached, cache = carry
        logits, cache = tokens_to_logits(targets[:, position, None], cache)
        return cached.at[:, position + 1].set(logits), cache

    cached, _ = jax.lax.fori_loop(start.index, length - 1, step, (cached, start.cache))
    return full, cached, start.index


def check_cached_equals_full(config: TransformerConfig):
    model = DecoderOnlyTransformer(config)
    params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(1), TARGETS)["params"])
    full, cached, start = full_and_cached_logits(model, params, TARGETS, PROMPT)
    compared = (TARGETS != PAD_ID) & (jnp.arange(TARGETS.shape[1]) >= start)
    np.testing.assert_allclose(cached[compared], full[compared], atol=1e-5, rtol=0)
    if config.remat_policy != "none":  # remat changes the backward pass alone
        grads = jax.jit(jax.grad(lambda p: model.apply({"params": p}, TARGETS).sum()))(params)
        assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(grads))


# Every option scanned and rematerialised; RoPE, whose positions reach each layer, looped too.
CASES = [(option, "scan_remat") for option in OPTIONS] + [("llama_rope_swiglu_rmsnorm_gqa", "loop")]


@pytest.mark.parametrize("option, stacking", CASES)
def test_each_option_decodes_from_the_cache_as_the_full_forward(option, stacking):
    check_cached_equals_full(TINY.replace(**OPTIONS[option], **STACKINGS[stacking]))


@functools.partial(jax.jit, static_argnums=0)
def packed_and_alone(model, params):
    """Logits of two examples packed in one row (positions restarting), and alone."""
    first, second = [5, 6, 7, 8, EOS_ID], [9, 10, 11, EOS_ID]
    row = jnp.array([first + second + [0]])
    segmentation = jnp.array([[1] * 5 + [2] * 4 + [0]])
    positions = jnp.array([list(range(5)) + list(range(4)) + [0]])
    packed = model.apply({"params": params}, row, segmentation, positions)
    alone = model.apply({"params": params}, jnp.array([first + [0] * 5, second + [0] * 6]))
    return packed, alone


@pytest.mark.parametrize("option", list(OPTIONS))
def test_each_option_gives_packed_examples_their_own_positions(option):
    model = DecoderOnlyTransformer(TINY.replace(**OPTIONS[option]))
    params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(2), TARGETS)["params"])
    packed, alone = packed_and_alone(model, params)
    np.testing.assert_allclose(packed[0, :5], alone[0, :5], atol=1e-5)
    np.testing.assert_allclose(packed[0, 5:9], alone[1, :4], atol=1e-5)


@pytest.mark.parametrize(
    "option", ["t5_relative_geglu_multi_query", "alibi_gelu_head_dim_unscaled"]
)
def test_position_bias_reaches_the_fused_path(option):
    config = TINY.replace(**OPTIONS[option])
    explicit = DecoderOnlyTransformer(config.replace(attention_implementation="explicit"))
    fused = DecoderOnlyTransformer(config.replace(attention_implementation="xla"))
    params = nn.meta.unbox(jax.jit(explicit.init)(jax.random.key(3), TARGETS)["params"])
    np.testing.assert_allclose(
        jax.jit(fused.apply)({"params": params}, TARGETS),
        jax.jit(explicit.apply)({"params": params}, TARGETS),
        atol=1e-5,
    )


T5_LIKE = TINY.replace(
    **OPTIONS["t5_relative_geglu_multi_query"],
    norm="rmsnorm",
    use_bias=False,
    scale_embeddings=False,
    num_encoder_layers=1,
)
SOURCES = jnp.array([[5, 6, 7, 8, 9, 10, 11, EOS_ID], [12, 13, 14, EOS_ID, 0, 0, 0, 0]])


@functools.partial(jax.jit, static_argnums=0)
def encoder_decoder_full_and_cached(model, params, inputs, targets):
    full = model.apply({"params": params}, inputs, targets)
    length = targets.shape[1]
    start = prefill(model, params, inputs, max_decode_len=length)  # BOS alone
    tokens_to_logits = make_tokens_to_logits(model, params, inputs)
    cached = jnp.zeros_like(full).at[:, 0].set(start.logits)

    def step(position, carry):
        cached, cache = carry
        logits, cache = tokens_to_logits(targets[:, position, None], cache)
        return cached.at[:, position + 1].set(logits), cache

    cached, _ = jax.lax.fori_loop(0, length - 1, step, (cached, start.cache))
    return full, cached


def test_t5_like_encoder_decoder_decodes_from_the_cache_as_the_full_forward():
    """Both stacks' relative biases (bidirectional and causal; scanned stacks), with the
    decoder's bias reaching every cached step."""
    model = Transformer(T5_LIKE.replace(scan_layers=True))
    params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(4), SOURCES, TARGETS)["params"])
    assert "position_bias" in params["encoder"] and "position_bias" in params["decoder"]
    full, cached = encoder_decoder_full_and_cached(model, params, SOURCES, TARGETS)
    compared = TARGETS != PAD_ID
    np.testing.assert_allclose(cached[compared], full[compared], atol=1e-5, rtol=0)
