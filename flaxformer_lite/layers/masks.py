"""Attention masks as small functions that combine.

Every mask is boolean, True where a query may attend to a key, and broadcasts
to (batch, heads, queries, keys). `combine_masks` ANDs any number of them, so
padding, causality, packed segments and local windows compose freely.

`AttentionMask` carries such a mask to attention together, where the mask is
only causality and right padding, with the compact description fused kernels
take instead (`is_causal`, per-row lengths): cuDNN then never reads a (Q, K)
array and skips the blocks above the diagonal.
"""

import flax.struct
import jax
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


def real_lengths(tokens: jnp.ndarray) -> jnp.ndarray:
    """Non-PAD tokens per row, the length of a right-padded row. (B, L) -> (B,) int32."""
    return jnp.sum(tokens != PAD_ID, axis=-1, dtype=jnp.int32)


@flax.struct.dataclass
class AttentionMask:
    """Where each query may attend, as a dense boolean mask and, when it has one, compact.

    `dense` (B|1, 1, Q, K) is always exact; the explicit path uses it. When
    `has_compact_form`, the mask is exactly "causal (if is_causal), keys before
    key_value_lengths, queries before query_lengths" (a missing length means the
    whole row), and the fused paths take that form instead of `dense`.
    """

    dense: jax.Array
    is_causal: bool = flax.struct.field(pytree_node=False, default=False)
    query_lengths: jax.Array | None = None  # (B,) int32
    key_value_lengths: jax.Array | None = None  # (B,) int32

    @property
    def has_compact_form(self) -> bool:
        lengths = (self.query_lengths, self.key_value_lengths)
        return self.is_causal or any(length is not None for length in lengths)

    def query_has_keys(self, batch: int, query_length: int) -> jnp.ndarray:
        """(B, Q) bool: the query sees at least one key (else its output must be zero)."""
        if not self.has_compact_form:
            return jnp.broadcast_to(self.dense.any(axis=-1)[:, 0], (batch, query_length))
        has_keys = jnp.ones((batch, query_length), bool)
        if self.query_lengths is not None:
            has_keys &= jnp.arange(query_length)[None, :] < self.query_lengths[:, None]
        if self.key_value_lengths is not None:  # causal query i always sees key 0, if any
            has_keys &= (self.key_value_lengths > 0)[:, None]
        return has_keys


def right_padded_mask(
    query_tokens: jnp.ndarray, key_tokens: jnp.ndarray, *, is_causal: bool = False
) -> AttentionMask:
    """Padding (and causality) of right-padded rows, dense and compact. (B, Q), (B, K)."""
    causal = causal_mask(query_tokens.shape[1], key_tokens.shape[1]) if is_causal else None
    return AttentionMask(
        dense=combine_masks(padding_mask(query_tokens, key_tokens), causal),
        is_causal=is_causal,
        query_lengths=real_lengths(query_tokens),
        key_value_lengths=real_lengths(key_tokens),
    )
