"""Scaled dot-product attention and multi-head attention with a decode cache.

Shapes: B batch, Q queries, K keys, H heads, Dh features per head, D model width.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from flaxformer_lite.config import TransformerConfig
from flaxformer_lite.layers import masks as masks_lib
from flaxformer_lite.layers import matmul


def attention_weights(
    query: jnp.ndarray,
    key: jnp.ndarray,
    mask: jnp.ndarray | None = None,
    bias: jnp.ndarray | None = None,
) -> jnp.ndarray:
    """softmax(Q K^T / sqrt(Dh) + bias) in float32. (B,Q,H,Dh),(B,K,H,Dh) -> (B,H,Q,K).

    A query row whose keys are all masked gets weights of exactly zero (so
    its output is zero), never the NaN of a softmax over nothing.
    """
    scale = query.shape[-1] ** -0.5
    logits = jnp.einsum("bqhd,bkhd->bhqk", query, key, preferred_element_type=jnp.float32)
    logits = logits * scale
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    if mask is None:
        return jax.nn.softmax(logits, axis=-1)
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1)
    return jnp.where(mask.any(axis=-1, keepdims=True), weights, 0.0)


def dot_product_attention(
    query: jnp.ndarray,
    key: jnp.ndarray,
    value: jnp.ndarray,
    mask: jnp.ndarray | None = None,
    bias: jnp.ndarray | None = None,
    *,
    fused: bool = False,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
) -> tuple[jnp.ndarray, jnp.ndarray | None]:
    """Attention(Q, K, V) = softmax(Q K^T / sqrt(Dh)) V, per head.

    query (B, Q, H, Dh); key, value (B, K, H, Dh); mask boolean and bias
    additive, both broadcastable to (B, H, Q, K). Returns the output
    (B, Q, H, Dh) and the weights (B, H, Q, K), or None for the weights when
    the `fused` path (`jax.nn.dot_product_attention`, cuDNN flash attention on
    GPU) ran. The fused path cannot drop weights out, so `dropout_rng` given
    with a positive rate always takes the explicit path.
    """
    use_dropout = dropout_rng is not None and dropout_rate > 0.0
    if fused and not use_dropout:
        if mask is not None:
            mask = jnp.broadcast_to(mask, (query.shape[0], 1, query.shape[1], key.shape[1]))
        output = jax.nn.dot_product_attention(query, key, value, bias=bias, mask=mask)
        if mask is not None:  # Fully masked rows: the fused kernel averages, we return zeros.
            row_has_keys = mask.any(axis=-1)  # (B, 1, Q)
            output = output * jnp.swapaxes(row_has_keys, 1, 2)[..., None].astype(output.dtype)
        return output, None

    weights = attention_weights(query, key, mask, bias)  # (B, H, Q, K) float32
    if use_dropout:
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, weights.shape)
        weights = jnp.where(keep, weights / (1.0 - dropout_rate), 0.0)
    output = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(value.dtype), value)
    return output, weights


class MultiHeadAttention(nn.Module):
    """Multi-head attention: project to H heads, attend in parallel, concat, W^O.

    `is_self_attention` decides what the decode cache holds: for decoder
    self-attention, the keys and values of every position generated so far
    (a static (B, H, max_len, Dh) buffer written in place); for
    cross-attention, the projected encoder keys and values, computed once per
    source on the first decode call and reused at every step after it.

    Attention weights are recorded with `sow` under
    `intermediates/.../attention_weights` whenever the caller makes the
    `intermediates` collection mutable; that also selects the explicit path.
    """

    config: TransformerConfig
    is_self_attention: bool = True
    deterministic: bool = True
    decode: bool = False

    @nn.compact
    def __call__(
        self,
        inputs_q: jnp.ndarray,
        inputs_kv: jnp.ndarray | None = None,
        mask: jnp.ndarray | None = None,
        cache_index: jnp.ndarray | None = None,
    ) -> jnp.ndarray:
        """inputs_q (B, Q, D); inputs_kv (B, K, D) for cross-attention -> (B, Q, D).

        In decode mode, `cache_index` is the position of inputs_q's first row;
        cross-attention called with inputs_kv=None reads the cached keys/values.
        """
        cfg = self.config
        project = functools.partial(
            nn.DenseGeneral,
            features=(cfg.num_heads, cfg.head_dim),
            dtype=cfg.compute_dtype,
            param_dtype=cfg.weights_dtype,
            kernel_init=nn.initializers.xavier_uniform(),
            dot_general=matmul.dot_general,
        )
        query = project(name="query")(inputs_q)  # (B, Q, H, Dh)

        if self.is_self_attention:
            key = project(name="key")(inputs_q)  # (B, Q, H, Dh)
            value = project(name="value")(inputs_q)
            if self.decode:
                key, value, mask = self._update_self_cache(key, value, mask, cache_index)
        elif self.decode and inputs_kv is None:
            key, value = self._cached_cross_key_value()
        else:
            key = project(name="key")(inputs_kv)  # (B, K, H, Dh)
            value = project(name="value")(inputs_kv)
            if self.decode:
                self._store_cross_key_value(key, value)

        attention_dropout = not self.deterministic and cfg.attention_dropout_rate > 0.0
        want_weights = self.is_mutable_collection("intermediates")
        output, weights = dot_product_attention(
            query,
            key,
            value,
            mask,
            fused=cfg.fused_attention and not want_weights,
            dropout_rate=cfg.attention_dropout_rate,
            dropout_rng=self.make_rng("dropout") if attention_dropout else None,
        )
        if want_weights:
            self.sow("intermediates", "attention_weights", weights)
        return nn.DenseGeneral(  # W^O over the concatenated heads: (B, Q, H, Dh) -> (B, Q, D)
            features=cfg.d_model,
            axis=(-2, -1),
            dtype=cfg.compute_dtype,
            param_dtype=cfg.weights_dtype,
            kernel_init=nn.initializers.xavier_uniform(),
            dot_general=matmul.dot_general,
            name="out",
        )(output)

    def _update_self_cache(self, key, value, mask, cache_index):
        """Write this call's keys/values at cache_index; attend over the whole buffer.

        The first (shape-setting) call during `init` allocates the buffer from
        the full-length input and attends normally.
        """
        initialized = self.has_variable("cache", "cached_key")
        heads_first = (key.shape[0], key.shape[2], key.shape[1], key.shape[3])  # (B, H, L, Dh)
        cached_key = self.variable("cache", "cached_key", jnp.zeros, heads_first, key.dtype)
        cached_value = self.variable("cache", "cached_value", jnp.zeros, heads_first, value.dtype)
        if not initialized:
            return key, value, mask
        num_new, max_length = key.shape[1], cached_key.value.shape[2]
        start = (0, 0, cache_index, 0)
        cached_key.value = lax.dynamic_update_slice(cached_key.value, key.swapaxes(1, 2), start)
        cached_value.value = lax.dynamic_update_slice(
            cached_value.value, value.swapaxes(1, 2), start
        )
        # New query q sits at position cache_index + q and may see keys up to there.
        visible = masks_lib.causal_mask(num_new, max_length, offset=cache_index)
        if self.config.local_window is not None:
            window = masks_lib.local_window_mask(
                num_new, max_length, self.config.local_window, offset=cache_index
            )
            visible = visible & window
        key, value = cached_key.value.swapaxes(1, 2), cached_value.value.swapaxes(1, 2)
        return key, value, masks_lib.combine_masks(mask, visible)

    def _store_cross_key_value(self, key, value):
        key, value = key.swapaxes(1, 2), value.swapaxes(1, 2)  # stored (B, H, S, Dh)
        self.variable("cache", "cross_key", jnp.zeros, key.shape, key.dtype).value = key
        self.variable("cache", "cross_value", jnp.zeros, value.shape, value.dtype).value = value

    def _cached_cross_key_value(self):
        if not self.has_variable("cache", "cross_key"):
            raise ValueError(
                "Cross-attention has no cached encoder keys/values: run the first decode "
                "step (the prefill) with the encoder output before calling it with encoded=None."
            )
        key = self.get_variable("cache", "cross_key")
        value = self.get_variable("cache", "cross_value")
        return key.swapaxes(1, 2), value.swapaxes(1, 2)  # back to (B, S, H, Dh)
