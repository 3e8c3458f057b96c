"""Normalisation layers: LayerNorm (the paper, GPT-2, BERT) or RMSNorm (T5, Llama).

LayerNorm(x) = (x - mean(x)) / sqrt(var(x) + eps) * scale + bias
RMSNorm(x)   = x / sqrt(mean(x^2) + eps) * scale          (no mean, no bias)

Both compute their statistics in float32 whatever the activation dtype.
"""

import flax.linen as nn

from flaxformer_lite.config import TransformerConfig
from flaxformer_lite.layers import sharding


def norm_layer(config: TransformerConfig, name: str) -> nn.Module:
    """The normalisation `config.norm` names, over the last (d_model) axis."""
    common = dict(
        epsilon=config.norm_epsilon,
        dtype=config.compute_dtype,
        param_dtype=config.weights_dtype,
        scale_init=sharding.partitioned(nn.initializers.ones, "embed"),
        name=name,
    )
    if config.norm == "rmsnorm":
        return nn.RMSNorm(**common)
    return nn.LayerNorm(bias_init=sharding.partitioned(nn.initializers.zeros, "embed"), **common)
