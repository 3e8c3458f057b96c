"""Position-wise feed-forward network: FFN(x) = W2 act(W1 x + b1) + b2."""

import flax.linen as nn
import jax.numpy as jnp

from flaxformer_lite.config import TransformerConfig
from flaxformer_lite.layers import matmul

ACTIVATIONS = {"relu": nn.relu, "gelu": nn.gelu}


class FeedForward(nn.Module):
    """The same two-layer MLP applied to every position independently."""

    config: TransformerConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """x (B, L, D) -> (B, L, D), through a (B, L, d_ff) hidden layer."""
        cfg = self.config
        dense = dict(
            dtype=cfg.compute_dtype,
            param_dtype=cfg.weights_dtype,
            kernel_init=nn.initializers.xavier_uniform(),
            dot_general=matmul.dot_general_for(cfg),
        )
        hidden = nn.Dense(cfg.d_ff, name="wi", **dense)(x)  # (B, L, F)
        hidden = ACTIVATIONS[cfg.activation](hidden)
        hidden = nn.Dropout(cfg.dropout_rate)(hidden, deterministic=self.deterministic)
        return nn.Dense(cfg.d_model, name="wo", **dense)(hidden)  # (B, L, D)
