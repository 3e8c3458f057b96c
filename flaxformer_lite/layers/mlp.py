"""Position-wise feed-forward networks, plain or gated.

    plain:  FFN(x) = W2 act(W1 x + b1) + b2                    relu | gelu | gelu_tanh
    gated:  FFN(x) = W2 (act(W_gate x) * (W_up x))             swiglu (SiLU) | geglu (tanh-GELU)

Gated forms (Shazeer, 2020, "GLU Variants Improve Transformer") have two input
projections; Llama's SwiGLU and T5 v1.1's gated-gelu are the two in use.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from flaxformer_lite.config import TransformerConfig
from flaxformer_lite.layers import matmul, sharding

ACTIVATIONS = {
    "relu": nn.relu,
    "gelu": functools.partial(jax.nn.gelu, approximate=False),  # erf: BERT, torch's nn.GELU()
    "gelu_tanh": functools.partial(jax.nn.gelu, approximate=True),  # GPT-2's gelu_new
}
GATED_ACTIVATIONS = {"swiglu": nn.silu, "geglu": ACTIVATIONS["gelu_tanh"]}


class FeedForward(nn.Module):
    """The same MLP applied to every position independently."""

    config: TransformerConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """x (B, L, D) -> (B, L, D), through a (B, L, d_ff) hidden layer."""
        cfg = self.config
        dense = functools.partial(
            nn.Dense,
            use_bias=cfg.use_bias,
            dtype=cfg.compute_dtype,
            param_dtype=cfg.weights_dtype,
            dot_general=matmul.dot_general_for(cfg),
        )
        expand = functools.partial(
            dense,
            cfg.d_ff,
            kernel_init=sharding.partitioned(nn.initializers.xavier_uniform(), "embed", "mlp"),
            bias_init=sharding.partitioned(nn.initializers.zeros, "mlp"),
        )
        if cfg.mlp in GATED_ACTIVATIONS:
            gate = expand(name="wi_gate")(x)  # (B, L, F)
            hidden = GATED_ACTIVATIONS[cfg.mlp](gate) * expand(name="wi_up")(x)
        else:
            hidden = ACTIVATIONS[cfg.mlp](expand(name="wi")(x))  # (B, L, F)
        hidden = sharding.constrain(hidden, "batch", "length", "mlp")
        hidden = nn.Dropout(cfg.dropout_rate)(hidden, deterministic=self.deterministic)
        return dense(
            cfg.d_model,
            kernel_init=sharding.partitioned(nn.initializers.xavier_uniform(), "mlp", "embed"),
            bias_init=sharding.partitioned(nn.initializers.zeros, "embed"),
            name="wo",
        )(hidden)  # (B, L, D)
