"""A stack of identical layers: a Python loop, or `nn.scan` with optional remat.

Scanning compiles one layer body instead of N, so compile time stays flat as
the model deepens; parameters then carry a leading (num_layers,) axis.
Rematerialisation recomputes each layer's activations in the backward pass
instead of storing them, trading compute for memory.
"""

import flax.linen as nn
import jax

from flaxformer_lite.config import TransformerConfig

REMAT_POLICIES = {
    "full": None,  # Save nothing inside a layer: recompute all of it.
    "dots_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class LayerStack(nn.Module):
    """Applies `layer_class` num_layers times: x -> layer_N(...layer_1(x)).

    Each layer is built as layer_class(config, **layer_attributes) and called
    as layer(x, *broadcast_args) -> (x, None); the broadcast arguments (masks,
    encoder output, cache index) are the same for every layer.
    """

    layer_class: type[nn.Module]
    config: TransformerConfig
    num_layers: int

    @nn.compact
    def __call__(self, x, *broadcast_args, **layer_attributes):
        cfg = self.config
        layer_class = self.layer_class
        if cfg.remat_policy != "none":
            layer_class = nn.remat(
                layer_class,
                policy=REMAT_POLICIES[cfg.remat_policy],
                prevent_cse=not cfg.scan_layers,  # scan already stops XLA from merging copies
            )
        if cfg.scan_layers:
            scanned = nn.scan(
                layer_class,
                variable_axes={"params": 0, "cache": 0, "intermediates": 0},
                split_rngs={"params": True, "dropout": True},  # each layer its own masks
                in_axes=(nn.broadcast,) * len(broadcast_args),
                length=self.num_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},  # params gain a "layers" axis
            )
            x, _ = scanned(cfg, name="layers", **layer_attributes)(x, *broadcast_args)
            return x
        for index in range(self.num_layers):
            layer = layer_class(cfg, name=f"layer_{index}", **layer_attributes)
            x, _ = layer(x, *broadcast_args)
        return x
