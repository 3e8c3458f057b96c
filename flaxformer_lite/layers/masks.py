"""Attention masks as small functions that combine.

Every mask is boolean, True where a query may attend to a key, and broadcasts
to (batch, heads, queries, keys). `combine_masks` ANDs any number of them, so
padding, causality, packed segments and local windows compose freely.
"""

import jax.numpy as jnp

from flaxformer_lite.special_tokens import PAD_ID


def padding_mask(query_tokens: jnp.ndarray, key_tokens: jnp.ndarray) -> jnp.ndarray:
    """Real (non-PAD) queries attend to real keys. (B, Q), (B, K) -> (B, 1, Q, K)."""
    query_real = query_tokens != PAD_ID
    key_real = key_tokens != PAD_ID
    return query_real[:, None, :, None] & key_real[:, None, None, :]


def key_padding_mask(key_tokens: jnp.ndarray) -> jnp.ndarray:
    """Every query attends to the real keys only. (B, K) -> (B, 1, 1, K)."""
    return (key_tokens != PAD_ID)[:, None, None, :]


def causal_mask(query_length: int, key_length: int | None = None, offset=0) -> jnp.ndarray:
    """Query i (at absolute position i + offset) sees keys 0..i + offset. -> (1, 1, Q, K).

    `offset` may be traced: during cached decoding it is the cache index.
    """
    key_length = query_length if key_length is None else key_length
    query_index = jnp.arange(query_length)[:, None] + offset  # (Q, 1)
    key_index = jnp.arange(key_length)[None, :]  # (1, K)
    return (key_index <= query_index)[None, None]


def segment_mask(query_segments: jnp.ndarray, key_segments: jnp.ndarray) -> jnp.ndarray:
    """Packed examples never see each other. (B, Q), (B, K) -> (B, 1, Q, K)."""
    return query_segments[:, None, :, None] == key_segments[:, None, None, :]


def local_window_mask(
    query_length: int, key_length: int | None = None, window: int = 0, offset=0
) -> jnp.ndarray:
    """Query i sees only keys within +-window of its position i + offset. -> (1, 1, Q, K)."""
    key_length = query_length if key_length is None else key_length
    query_index = jnp.arange(query_length)[:, None] + offset  # (Q, 1)
    key_index = jnp.arange(key_length)[None, :]  # (1, K)
    return (jnp.abs(query_index - key_index) <= window)[None, None]


def combine_masks(*masks: jnp.ndarray | None) -> jnp.ndarray | None:
    """Logical AND of the given masks (broadcasting); None entries are ignored."""
    present = [mask for mask in masks if mask is not None]
    if not present:
        return None
    combined = present[0]
    for mask in present[1:]:
        combined = combined & mask
    return combined


def mask_to_bias(mask: jnp.ndarray, dtype=jnp.float32) -> jnp.ndarray:
    """0 where allowed, the dtype's most negative finite value where masked."""
    return jnp.where(mask, 0.0, jnp.finfo(dtype).min).astype(dtype)
