"""Positional encodings: the paper's fixed sinusoids, or learned embeddings."""

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from flaxformer_lite.config import TransformerConfig
from flaxformer_lite.layers import sharding


def sinusoidal_encoding(max_len: int, d_model: int) -> np.ndarray:
    """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d)).

    Returns a float32 (max_len, d_model) table; even columns hold the sines and
    odd columns the cosines of the same frequency, as in the paper.
    """
    positions = np.arange(max_len, dtype=np.float64)[:, None]  # (L, 1)
    two_i = np.arange(0, d_model, 2, dtype=np.float64)[None, :]  # (1, ceil(D/2))
    angles = positions / np.power(10000.0, two_i / d_model)  # (L, ceil(D/2))
    table = np.zeros((max_len, d_model), dtype=np.float64)
    table[:, 0::2] = np.sin(angles)
    table[:, 1::2] = np.cos(angles[:, : d_model // 2])
    return table.astype(np.float32)


class PositionEncoding(nn.Module):
    """Adds the encoding of each token's position to its embedding.

    `positions` (B, L) restart at 0 in every packed example; None means
    0..L-1 for every row.
    """

    config: TransformerConfig

    @nn.compact
    def __call__(self, embedded: jnp.ndarray, positions: jnp.ndarray) -> jnp.ndarray:
        """embedded (B, L, D), positions (B, L) -> (B, L, D)."""
        cfg = self.config
        if cfg.position_encoding == "learned":
            table = self.param(
                "position_embedding",
                sharding.partitioned(nn.initializers.normal(stddev=0.02), "length", "embed"),
                (cfg.max_len, cfg.d_model),
                cfg.weights_dtype,
            )
        else:
            table = jnp.asarray(sinusoidal_encoding(cfg.max_len, cfg.d_model))
        return embedded + jnp.take(table, positions, axis=0).astype(embedded.dtype)
