"""Scaled dot-product attention and multi-head attention with a decode cache.

Shapes: B batch, Q queries, K keys, H heads, Hkv key/value heads, Dh features per
head, D model width. With grouped-query attention (Hkv < H) query head h reads
key/value head h // (H / Hkv), the layout of Llama and jax.nn.dot_product_attention.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from flaxformer_lite.config import TransformerConfig
from flaxformer_lite.layers import masks as masks_lib
from flaxformer_lite.layers import matmul, sharding
from flaxformer_lite.layers.rotary import apply_rotary


def attention_weights(
    query: jnp.ndarray,
    key: jnp.ndarray,
    mask: jnp.ndarray | None = None,
    bias: jnp.ndarray | None = None,
    scale: float | None = None,
) -> jnp.ndarray:
    """softmax(Q K^T * scale + bias) in float32. (B,Q,H,Dh),(B,K,H,Dh) -> (B,H,Q,K).

    `scale` defaults to 1 / sqrt(Dh). A query row whose keys are all masked gets
    weights of exactly zero (so its output is zero), never the NaN of a softmax
    over nothing.
    """
    if scale is None:
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
    mask: masks_lib.AttentionMask | jnp.ndarray | None = None,
    bias: jnp.ndarray | None = None,
    *,
    scale: float | None = None,
    implementation: str = "explicit",
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
) -> tuple[jnp.ndarray, jnp.ndarray | None]:
    """Attention(Q, K, V) = softmax(Q K^T * scale + bias) V, per head; scale 1/sqrt(Dh)
    unless given.

    query (B, Q, H, Dh); key, value (B, K, Hkv, Dh), Hkv dividing H (grouped-query
    attention when Hkv < H); mask a boolean array or an
    `AttentionMask`, bias additive, both broadcastable to (B, H, Q, K).
    `implementation` is "explicit" (einsums; returns the weights and can drop
    them out), or "xla", "cudnn", "auto" (`jax.nn.dot_product_attention`, see
    `choose_implementation`). Returns the output (B, Q, H, Dh) and the
    pre-dropout weights (B, H, Q, K), or None for the weights on a fused path.
    """
    if mask is not None and not isinstance(mask, masks_lib.AttentionMask):
        mask = masks_lib.AttentionMask(dense=mask)
    use_dropout = dropout_rng is not None and dropout_rate > 0.0
    implementation = choose_implementation(implementation, query, needs_weights=use_dropout)
    if implementation != "explicit":
        return _fused_attention(query, key, value, mask, bias, scale, implementation), None

    if key.shape[2] != query.shape[2]:  # Grouped-query: each KV head serves H / Hkv queries.
        group_size = query.shape[2] // key.shape[2]
        key = jnp.repeat(key, group_size, axis=2)  # (B, K, H, Dh)
        value = jnp.repeat(value, group_size, axis=2)
    weights = attention_weights(query, key, None if mask is None else mask.dense, bias, scale)
    kept_weights = weights  # (B, H, Q, K) float32
    if use_dropout:
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, weights.shape)
        kept_weights = jnp.where(keep, weights / (1.0 - dropout_rate), 0.0)
    output = jnp.einsum("bhqk,bkhd->bqhd", kept_weights.astype(value.dtype), value)
    return output, weights


def choose_implementation(implementation: str, query: jnp.ndarray, *, needs_weights: bool) -> str:
    """The attention path that runs: "explicit", "xla" or "cudnn".

    "auto" is explicit when weights are needed (sown, or dropped out), cuDNN on
    a GPU for the dtypes and head sizes its flash attention takes, else XLA.
    """
    if implementation == "cudnn" and jax.default_backend() != "gpu":
        raise ValueError(
            f"attention_implementation='cudnn' needs a GPU, but JAX runs on "
            f"{jax.default_backend()!r}: use 'auto' or 'xla'."
        )
    if implementation == "cudnn" and query.dtype not in (jnp.bfloat16, jnp.float16):
        raise ValueError(
            f"attention_implementation='cudnn' needs bfloat16 or float16 inputs, not "
            f"{query.dtype}: set dtype='bfloat16', or use 'auto' or 'xla'."
        )
    if implementation == "explicit" or needs_weights:
        return "explicit"
    if implementation != "auto":
        return implementation
    return "cudnn" if jax.default_backend() == "gpu" and _cudnn_accepts(query) else "xla"


def _cudnn_accepts(query: jnp.ndarray) -> bool:
    """cuDNN flash attention takes 16-bit floats and head sizes up to 128 in steps of 8."""
    head_dim = query.shape[-1]
    return query.dtype in (jnp.bfloat16, jnp.float16) and head_dim % 8 == 0 and head_dim <= 128


def _fused_attention(query, key, value, mask, bias, scale, implementation):
    """jax.nn.dot_product_attention, given the mask in its compact form where it has one."""
    batch, query_length = query.shape[:2]
    if mask is None:
        mask_arguments = {}
    elif mask.has_compact_form:
        mask_arguments = dict(
            is_causal=mask.is_causal,
            query_seq_lengths=mask.query_lengths,
            key_value_seq_lengths=mask.key_value_lengths,
        )
    else:
        dense = jnp.broadcast_to(mask.dense, (batch, 1, query_length, key.shape[1]))
        mask_arguments = dict(mask=dense)
    output = jax.nn.dot_product_attention(
        query,
        key,
        value,
        bias=bias,
        scale=scale,
        implementation=implementation,
        **mask_arguments,
    )  # (B, Q, H, Dh)
    if mask is None:
        return output
    # A query with no visible key: the kernels average every value; we return zeros.
    has_keys = mask.query_has_keys(batch, query_length)  # (B, Q)
    return output * has_keys[:, :, None, None].astype(output.dtype)


class MultiHeadAttention(nn.Module):
    """Multi-head attention: project to H heads, attend in parallel, concat, W^O.

    `is_self_attention` decides what the decode cache holds: for decoder
    self-attention, the keys and values of every position generated so far
    (a static (B, Hkv, max_decode_len, Dh) buffer written in place); for
    cross-attention, the projected encoder keys and values, computed once per
    source on the first decode call and reused at every step after it.

    Attention weights (before attention dropout) are recorded with `sow` under
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
        mask: masks_lib.AttentionMask | jnp.ndarray | None = None,
        cache_index: jnp.ndarray | None = None,
        *,
        positions: jnp.ndarray | None = None,
        position_bias: jnp.ndarray | None = None,
    ) -> jnp.ndarray:
        """inputs_q (B, Q, D); inputs_kv (B, K, D) for cross-attention -> (B, Q, D).

        In decode mode, `cache_index` is the position of inputs_q's first row;
        cross-attention called with inputs_kv=None reads the cached keys/values.
        `positions` (B, Q), each token's position in its example, rotate self-attention's
        queries and keys under RoPE. `position_bias` (1, H, Q, K) is added to the logits
        (T5, ALiBi); in decode mode it may cover more keys than the cache, which keeps
        the first K.
        """
        cfg = self.config
        dense_general = functools.partial(
            nn.DenseGeneral,
            use_bias=cfg.use_bias,
            dtype=cfg.compute_dtype,
            param_dtype=cfg.weights_dtype,
            dot_general=matmul.dot_general_for(cfg),
        )

        def project(num_heads: int, name: str) -> nn.DenseGeneral:
            """D -> (num_heads, Dh): a kernel (D, heads, Dh), a bias (heads, Dh)."""
            return dense_general(
                features=(num_heads, cfg.features_per_head),
                kernel_init=sharding.partitioned(
                    nn.initializers.xavier_uniform(), "embed", "heads", "kv"
                ),
                bias_init=sharding.partitioned(nn.initializers.zeros, "heads", "kv"),
                name=name,
            )

        def heads(x: jnp.ndarray) -> jnp.ndarray:
            return sharding.constrain(x, "batch", "length", "heads", "kv")

        query = heads(project(cfg.num_heads, "query")(inputs_q))  # (B, Q, H, Dh)

        overflow = None
        kv_heads = cfg.key_value_heads
        if self.is_self_attention:
            key = heads(project(kv_heads, "key")(inputs_q))  # (B, Q, Hkv, Dh)
            value = heads(project(kv_heads, "value")(inputs_q))
            if cfg.position_encoding == "rope":  # Keys enter the cache already rotated.
                if positions is None:
                    raise ValueError("RoPE self-attention needs the positions of its tokens.")
                query = apply_rotary(query, positions, cfg.rope_theta)
                key = apply_rotary(key, positions, cfg.rope_theta)
            if self.decode:
                key, value, mask, overflow = self._update_self_cache(key, value, mask, cache_index)
        elif self.decode and inputs_kv is None:
            key, value = self._cached_cross_key_value()
        else:
            key = heads(project(kv_heads, "key")(inputs_kv))  # (B, K, Hkv, Dh)
            value = heads(project(kv_heads, "value")(inputs_kv))
            if self.decode:
                self._store_cross_key_value(key, value)

        attention_dropout = not self.deterministic and cfg.attention_dropout_rate > 0.0
        want_weights = self.is_mutable_collection("intermediates")
        if position_bias is not None:
            position_bias = position_bias[..., : key.shape[1]]  # (1, H, Q, K)
        output, weights = dot_product_attention(
            query,
            key,
            value,
            mask,
            position_bias,
            scale=None if cfg.scale_attention_logits else 1.0,
            implementation="explicit" if want_weights else cfg.attention_implementation,
            dropout_rate=cfg.attention_dropout_rate,
            dropout_rng=self.make_rng("dropout") if attention_dropout else None,
        )  # (B, Q, H, Dh)
        if want_weights:
            self.sow("intermediates", "attention_weights", weights)
        if overflow is not None:  # Past the cache nothing is right: say so with NaN.
            output = jnp.where(overflow, jnp.nan, output)
        # W^O over the concatenated heads: (B, Q, H, Dh) -> (B, Q, D).
        return dense_general(
            features=cfg.d_model,
            axis=(-2, -1),
            kernel_init=sharding.partitioned(
                nn.initializers.xavier_uniform(), "heads", "kv", "embed"
            ),
            bias_init=sharding.partitioned(nn.initializers.zeros, "embed"),
            name="out",
        )(output)

    def _update_self_cache(self, key, value, mask, cache_index):
        """Write this call's keys/values at cache_index; attend over the whole buffer.

        The first (shape-setting) call during `init` allocates the buffer from
        the full-length input and attends normally. Returns keys, values, the
        mask over the buffer and whether this call ran past the buffer's end
        (a traced bool, or None when that was ruled out while tracing).
        """
        initialized = self.has_variable("cache", "cached_key")
        heads_first = (key.shape[0], key.shape[2], key.shape[1], key.shape[3])  # (B, Hkv, L, Dh)
        cached_key = self.variable("cache", "cached_key", jnp.zeros, heads_first, key.dtype)
        cached_value = self.variable("cache", "cached_value", jnp.zeros, heads_first, value.dtype)
        if not initialized:
            return key, value, mask, None
        num_new, max_length = key.shape[1], cached_key.value.shape[2]
        overflow = _check_cache_room(cache_index, num_new, max_length)
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
        if isinstance(mask, masks_lib.AttentionMask):
            mask = mask.dense
        cache_mask = masks_lib.AttentionMask(dense=masks_lib.combine_masks(mask, visible))
        if mask is None and num_new == 1 and self.config.local_window is None:
            # One new query sees the cache up to itself: a length per row says it all.
            lengths = jnp.full((key.shape[0],), cache_index + 1, jnp.int32)
            cache_mask = cache_mask.replace(key_value_lengths=lengths)
        key, value = cached_key.value.swapaxes(1, 2), cached_value.value.swapaxes(1, 2)
        return key, value, cache_mask, overflow

    def _store_cross_key_value(self, key, value):
        key, value = key.swapaxes(1, 2), value.swapaxes(1, 2)  # stored (B, Hkv, S, Dh)
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


def _check_cache_room(cache_index, num_new: int, max_length: int):
    """Raise if `num_new` positions from `cache_index` overrun a `max_length` cache.

    dynamic_update_slice would clamp the write silently. The width is checked
    while tracing and a concrete index now; a traced index cannot raise, so the
    traced overrun flag is returned for the caller to poison its output.
    """
    if num_new > max_length:
        raise ValueError(
            f"The decoder got {num_new} tokens at once but its cache holds {max_length} "
            "positions: allocate the cache for more (max_decode_len) or feed fewer tokens."
        )
    if isinstance(cache_index, jax.core.Tracer):
        return cache_index + num_new > max_length
    if int(cache_index) + num_new > max_length:
        raise ValueError(
            f"cache_index={int(cache_index)} + {num_new} new tokens overruns the "
            f"{max_length}-position cache: decode at most {max_length} tokens per cache."
        )
    return None
