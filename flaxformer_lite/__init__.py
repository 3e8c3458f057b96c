"""flaxformer_lite: a small, fast, readable JAX/Flax Transformer library and trainer."""

from flaxformer_lite.config import TransformerConfig
from flaxformer_lite.layers.attention import (
    MultiHeadAttention,
    attention_weights,
    dot_product_attention,
)
from flaxformer_lite.layers.masks import (
    causal_mask,
    combine_masks,
    key_padding_mask,
    local_window_mask,
    mask_to_bias,
    padding_mask,
    segment_mask,
)
from flaxformer_lite.layers.position import sinusoidal_encoding
from flaxformer_lite.models.encoder_decoder import Transformer
from flaxformer_lite.models.inputs import shift_right
from flaxformer_lite.special_tokens import BOS_ID, EOS_ID, PAD_ID, UNK_ID

__all__ = [
    "BOS_ID",
    "EOS_ID",
    "PAD_ID",
    "UNK_ID",
    "MultiHeadAttention",
    "Transformer",
    "TransformerConfig",
    "attention_weights",
    "causal_mask",
    "combine_masks",
    "dot_product_attention",
    "key_padding_mask",
    "local_window_mask",
    "mask_to_bias",
    "padding_mask",
    "segment_mask",
    "shift_right",
    "sinusoidal_encoding",
]
