"""The modern building blocks, each checked against its definition: RMSNorm and the
MLP variants against float64 NumPy formulas, grouped-query attention against
multi-head attention with repeated key/value kernels, the decode cache's size, the
logical axis names, and every option's cached decoding against its full forward
under nn.scan and remat."""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxformer_lite import TransformerConfig
from flaxformer_lite.decoding import make_lm_tokens_to_logits, prefill_lm
from flaxformer_lite.layers.attention import MultiHeadAttention
from flaxformer_lite.layers.embed import TokenEmbedding
from flaxformer_lite.layers.mlp import FeedForward
from flaxformer_lite.layers.norm import norm_layer
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
    "swiglu_rmsnorm_gqa": dict(mlp="swiglu", norm="rmsnorm", num_kv_heads=2),
    "geglu_multi_query_no_bias": dict(mlp="geglu", num_kv_heads=1, use_bias=False),
    "gelu_head_dim_unscaled": dict(mlp="gelu", head_dim=6, scale_embeddings=False),
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
    # A training step's gradient runs through scan and remat too.
    grads = jax.jit(jax.grad(lambda p: model.apply({"params": p}, TARGETS).sum()))(params)
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(grads))


@pytest.mark.parametrize("stacking", list(STACKINGS))
@pytest.mark.parametrize("option", list(OPTIONS))
def test_each_option_decodes_from_the_cache_as_the_full_forward(option, stacking):
    check_cached_equals_full(TINY.replace(**OPTIONS[option], **STACKINGS[stacking]))
