"""The residual sub-layer connection, in both norm placements."""

from collections.abc import Callable

import flax.linen as nn
import jax.numpy as jnp

from flaxformer_lite.config import TransformerConfig


class Residual(nn.Module):
    """x -> x + Dropout(sublayer(LayerNorm(x)))   when norm_placement == "pre"
    x -> LayerNorm(x + Dropout(sublayer(x)))      when norm_placement == "post" (the paper)

    The norm is owned here (named `norm`) and the sublayer is passed in, so a
    Transformer layer reads as a list of residual blocks.
    """

    config: TransformerConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: jnp.ndarray, sublayer: Callable[[jnp.ndarray], jnp.ndarray]):
        cfg = self.config
        norm = nn.LayerNorm(dtype=cfg.compute_dtype, param_dtype=cfg.weights_dtype, name="norm")
        dropout = nn.Dropout(cfg.dropout_rate)
        if cfg.norm_placement == "pre":
            return x + dropout(sublayer(norm(x)), deterministic=self.deterministic)
        return norm(x + dropout(sublayer(x), deterministic=self.deterministic))
