"""The small BERT that configs/mlm_default.py and configs/classify_default.py share.

BERT's layout (epsilon 1e-12, exact GELU, biases, learned absolute positions, embeddings
unscaled then normalised) at width 64, and BERT's AdamW settings. A classifier starts
from an MLM run (`--config.init_from`) only with the same sizes and norm placement.
"""

import ml_collections


def apply(config: ml_collections.ConfigDict, *, norm_placement: str) -> None:
    """Set the small BERT's model and optimiser fields on `config`, in place."""
    config.norm_placement = norm_placement
    config.norm_epsilon = 1e-12
    config.mlp = "gelu"
    config.use_bias = True
    config.position_encoding = "learned"
    config.scale_embeddings = False
    config.d_model = 64
    config.num_heads = 4
    config.d_ff = 256
    config.num_encoder_layers = 2

    config.per_device_batch_size = 64
    config.learning_rate = 0.001
    config.weight_decay = 0.01
    config.adam_b2 = 0.999
    config.adam_eps = 1e-6
    config.label_smoothing = 0.0
