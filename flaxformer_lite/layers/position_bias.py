"""Position biases added to the attention logits: T5's relative buckets and ALiBi.

Both depend only on the offset key - query, so one (1, H, Q, K) bias per stack
serves every layer and every packed example (positions restart per example, but
offsets inside one example are the same as offsets along the row; attention
across examples is masked anyway).
"""

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from flaxformer_lite.config import TransformerConfig
from flaxformer_lite.layers import sharding


def t5_relative_bucket(
    relative_position: jnp.ndarray, *, bidirectional: bool, num_buckets: int, max_distance: int
) -> jnp.ndarray:
    """T5's bucket of each offset key - query (Raffel et al., 2020, section 2.1). int32.

    Bidirectional attention spends half the buckets on keys after the query. Of
    the buckets for one direction, the first half hold the offsets 0, 1, 2, ...
    exactly; the rest cover larger offsets on a log scale up to max_distance,
    beyond which everything shares the last bucket. Causal attention sees only
    offsets <= 0 and spends all its buckets on them.
    """
    bucket = jnp.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        bucket = jnp.where(relative_position > 0, num_buckets, 0)
        distance = jnp.abs(relative_position)
    else:
        distance = jnp.maximum(-relative_position, 0)
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    log_ratio = jnp.log(jnp.maximum(distance, 1) / max_exact) / np.log(max_distance / max_exact)
    large = max_exact + (log_ratio * (num_buckets - max_exact)).astype(jnp.int32)
    large = jnp.minimum(large, num_buckets - 1)
    return (bucket + jnp.where(is_small, distance, large)).astype(jnp.int32)


def alibi_slopes(num_heads: int) -> np.ndarray:
    """ALiBi's per-head slopes (Press et al., 2022, section 3): for H a power of two, the
    geometric sequence 2^(-8/H), 2^(-16/H), ..., 2^(-8). Otherwise the slopes of the
    nearest smaller power of two P, then every other slope of 2P, as the paper's code.
    """
    closest = 2 ** int(np.floor(np.log2(num_heads)))
    slopes = 2.0 ** (-8.0 / closest * np.arange(1, closest + 1))
    if closest < num_heads:
        doubled = 2.0 ** (-8.0 / (2 * closest) * np.arange(1, 2 * closest + 1))
        slopes = np.concatenate([slopes, doubled[0::2][: num_heads - closest]])
    return slopes.astype(np.float32)


def alibi_bias(num_heads: int, query_positions, key_positions) -> jnp.ndarray:
    """-slope_h * |query - key|: (Q,), (K,) -> (1, H, Q, K), float32. Causal attention
    masks the keys after the query, so there it is the paper's -slope * (query - key)."""
    distance = jnp.abs(query_positions[:, None] - key_positions[None, :]).astype(jnp.float32)
    return -jnp.asarray(alibi_slopes(num_heads))[None, :, None, None] * distance[None, None]


class PositionBias(nn.Module):
    """The attention bias of `config.position_encoding`: T5's learned relative bias (one
    scalar per bucket and head), ALiBi's fixed one, or None for the other encodings."""

    config: TransformerConfig
    bidirectional: bool  # Encoder self-attention: True; causal decoder self-attention: False.

    @nn.compact
    def __call__(self, query_positions, key_positions) -> jnp.ndarray | None:
        """query_positions (Q,), key_positions (K,) -> (1, H, Q, K) float32, or None."""
        cfg = self.config
        if cfg.position_encoding == "alibi":
            return alibi_bias(cfg.num_heads, query_positions, key_positions)
        if cfg.position_encoding != "t5_relative":
            return None
        table = self.param(
            "relative_attention_bias",  # (buckets, H), as Hugging Face T5's
            sharding.partitioned(nn.initializers.normal(stddev=cfg.d_model**-0.5), None, "heads"),
            (cfg.relative_num_buckets, cfg.num_heads),
            cfg.weights_dtype,
        )
        buckets = t5_relative_bucket(
            key_positions[None, :] - query_positions[:, None],  # (Q, K)
            bidirectional=self.bidirectional,
            num_buckets=cfg.relative_num_buckets,
            max_distance=cfg.relative_max_distance,
        )
        bias = jnp.take(table, buckets, axis=0).astype(jnp.float32)  # (Q, K, H)
        return bias.transpose(2, 0, 1)[None]
