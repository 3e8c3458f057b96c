"""The encoder-decoder Transformer of "Attention Is All You Need".

Shapes: B batch, S source length, T target length, D d_model, V vocabulary.
"""

import flax.linen as nn
import jax.numpy as jnp

from flaxformer_lite.config import ABSOLUTE_POSITION_ENCODINGS, TransformerConfig
from flaxformer_lite.layers import masks as masks_lib
from flaxformer_lite.layers import matmul, sharding
from flaxformer_lite.layers.attention import MultiHeadAttention
from flaxformer_lite.layers.embed import TokenEmbedding
from flaxformer_lite.layers.mlp import FeedForward
from flaxformer_lite.layers.norm import norm_layer
from flaxformer_lite.layers.position import PositionEncoding
from flaxformer_lite.layers.position_bias import PositionBias
from flaxformer_lite.models.inputs import check_tokens, shift_right
from flaxformer_lite.models.stack import LayerStack


class EncoderLayer(nn.Module):
    """Self-attention then feed-forward, each a residual block:

        pre-LN:  x = x + Dropout(sublayer(Norm(x)))
        post-LN: x = Norm(x + Dropout(sublayer(x)))   (the paper)

    Norm is `config.norm`: LayerNorm, or RMSNorm.

    Returns (x, None) so that `nn.scan` can stack it (see LayerStack).
    """

    config: TransformerConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x, mask, positions=None, position_bias=None):
        """x (B, S, D), mask an AttentionMask over (B, 1, S, S) -> ((B, S, D), None).

        positions (B, S) rotate queries and keys under RoPE; position_bias (1, H, S, S)
        (T5, ALiBi) is added to the attention logits. Both are shared by every layer.
        """
        cfg, deterministic = self.config, self.deterministic
        pre_norm, post_norm = cfg.norm_placement == "pre", cfg.norm_placement == "post"

        residual = x
        if pre_norm:
            x = norm_layer(cfg, "pre_self_attention_norm")(x)
        x = MultiHeadAttention(
            cfg, is_self_attention=True, deterministic=deterministic, name="self_attention"
        )(x, mask=mask, positions=positions, position_bias=position_bias)
        x = residual + nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
        if post_norm:
            x = norm_layer(cfg, "post_self_attention_norm")(x)

        residual = x
        if pre_norm:
            x = norm_layer(cfg, "pre_mlp_norm")(x)
        x = FeedForward(cfg, deterministic=deterministic, name="mlp")(x)
        x = residual + nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
        if post_norm:
            x = norm_layer(cfg, "post_mlp_norm")(x)
        return x, None


class DecoderLayer(nn.Module):
    """Masked self-attention, cross-attention over the encoder output, feed-forward:
    three residual blocks, in the norm placement of EncoderLayer.

    Without cross-attention (`has_cross_attention=False`) it is the block of a
    decoder-only language model (GPT): masked self-attention, then feed-forward.
    """

    config: TransformerConfig
    deterministic: bool = True
    decode: bool = False
    has_cross_attention: bool = True

    @nn.compact
    def __call__(
        self, x, mask, encoded, cross_mask, cache_index, positions=None, position_bias=None
    ):
        """x (B, T, D); encoded (B, S, D), or None on decode steps after the prefill.

        mask and cross_mask are AttentionMasks over (B, 1, T, T) and (B, 1, T, S) (mask is
        None in decode mode: attention builds it over the cache) -> ((B, T, D), None).
        positions and position_bias serve self-attention, as in EncoderLayer.
        """
        cfg, deterministic, decode = self.config, self.deterministic, self.decode
        pre_norm, post_norm = cfg.norm_placement == "pre", cfg.norm_placement == "post"

        residual = x
        if pre_norm:
            x = norm_layer(cfg, "pre_self_attention_norm")(x)
        x = MultiHeadAttention(
            cfg,
            is_self_attention=True,
            deterministic=deterministic,
            decode=decode,
            name="self_attention",
        )(
            x,
            mask=mask,
            cache_index=cache_index,
            positions=positions,
            position_bias=position_bias,
        )
        x = residual + nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
        if post_norm:
            x = norm_layer(cfg, "post_self_attention_norm")(x)

        if self.has_cross_attention:
            residual = x
            if pre_norm:
                x = norm_layer(cfg, "pre_cross_attention_norm")(x)
            x = MultiHeadAttention(
                cfg,
                is_self_attention=False,
                deterministic=deterministic,
                decode=decode,
                name="cross_attention",
            )(x, encoded, mask=cross_mask)
            x = residual + nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
            if post_norm:
                x = norm_layer(cfg, "post_cross_attention_norm")(x)

        residual = x
        if pre_norm:
            x = norm_layer(cfg, "pre_mlp_norm")(x)
        x = FeedForward(cfg, deterministic=deterministic, name="mlp")(x)
        x = residual + nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
        if post_norm:
            x = norm_layer(cfg, "post_mlp_norm")(x)
        return x, None


class Embedder(nn.Module):
    """Token embedding + absolute positional encoding (sinusoidal or learned; the other
    encodings act inside attention), then dropout. (B, L) -> (B, L, D).

    The sum is exposed through `perturb("embedded")`, so gradients with respect
    to each position's input (saliency, causality checks) are one `grad` away.
    """

    config: TransformerConfig
    token_embedding: TokenEmbedding

    @nn.compact
    def __call__(self, tokens, positions=None, *, deterministic: bool = True):
        """tokens (B, L), positions (B, L) (None: 0..L-1 in every row) -> (B, L, D)."""
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
        x = self.token_embedding(tokens)
        if self.config.position_encoding in ABSOLUTE_POSITION_ENCODINGS:
            x = PositionEncoding(self.config, name="position")(x, positions)
        x = self.perturb("embedded", x)
        x = sharding.constrain(x, "batch", "length", "embed")
        return nn.Dropout(self.config.dropout_rate)(x, deterministic=deterministic)


class FinalNorm(nn.Module):
    """Pre-LN stacks end un-normalised, so they get one last norm."""

    config: TransformerConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        if cfg.norm_placement == "post":
            return x
        return norm_layer(cfg, "norm")(x)


class Encoder(nn.Module):
    """Embed the source, then N encoder layers. (B, S) -> (B, S, D)."""

    config: TransformerConfig
    token_embedding: TokenEmbedding

    @nn.compact
    def __call__(self, inputs, segmentation=None, positions=None, *, deterministic=True):
        cfg = self.config
        if segmentation is None and cfg.local_window is None:  # right-padded rows
            mask = masks_lib.right_padded_mask(inputs, inputs)
        else:
            mask = masks_lib.AttentionMask(
                dense=masks_lib.combine_masks(
                    masks_lib.padding_mask(inputs, inputs),
                    _segment_mask(segmentation, segmentation),
                    _local_window(cfg, inputs.shape[1]),
                )
            )
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(inputs.shape[1]), inputs.shape)
        x = Embedder(cfg, self.token_embedding, name="embedder")(
            inputs, positions, deterministic=deterministic
        )
        offsets = jnp.arange(inputs.shape[1])  # bias depends on key - query alone
        bias = PositionBias(cfg, bidirectional=True, name="position_bias")(offsets, offsets)
        x = LayerStack(EncoderLayer, cfg, cfg.num_encoder_layers, name="stack")(
            x, mask, positions, bias, deterministic=deterministic
        )
        return FinalNorm(cfg, name="final")(x)


class Decoder(nn.Module):
    """Embed the (shifted) targets, N decoder layers, project to the vocabulary.

    In decode mode the `cache` collection holds one `cache_index` (how many
    target positions are already in the cache) beside each layer's keys and
    values; the first call during `init` only allocates it.
    """

    config: TransformerConfig
    token_embedding: TokenEmbedding
    has_cross_attention: bool = True

    @nn.compact
    def __call__(
        self,
        encoded,
        inputs,
        decoder_inputs,
        inputs_segmentation=None,
        targets_segmentation=None,
        targets_position=None,
        *,
        deterministic=True,
        decode=False,
    ):
        cfg = self.config
        length = decoder_inputs.shape[1]
        packed = inputs_segmentation is not None or targets_segmentation is not None
        if decode:
            allocated = self.has_variable("cache", "cache_index")
            index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
            cache_index = index.value
            positions = cache_index + jnp.broadcast_to(jnp.arange(length), decoder_inputs.shape)
            self_mask = None  # Causal (and local) structure over the cache is built in attention.
            # Queries sit at cache_index...; keys are every position a cache may hold.
            query_offsets, key_offsets = cache_index + jnp.arange(length), jnp.arange(cfg.max_len)
        else:
            cache_index, positions = None, targets_position
            if positions is None:
                positions = jnp.broadcast_to(jnp.arange(length), decoder_inputs.shape)
            self_mask = _causal_self_mask(cfg, decoder_inputs, targets_segmentation)
            query_offsets = key_offsets = jnp.arange(length)
        cross_mask = None
        if self.has_cross_attention:
            cross_mask = _cross_mask(
                decoder_inputs,
                inputs,
                targets_segmentation,
                inputs_segmentation,
                decode=decode,
                packed=packed,
            )
        x = Embedder(cfg, self.token_embedding, name="embedder")(
            decoder_inputs, positions, deterministic=deterministic
        )
        bias = PositionBias(cfg, bidirectional=False, name="position_bias")(
            query_offsets, key_offsets
        )
        x = LayerStack(DecoderLayer, cfg, cfg.num_decoder_layers, name="stack")(
            x,
            self_mask,
            encoded,
            cross_mask,
            cache_index,
            positions,
            bias,
            deterministic=deterministic,
            decode=decode,
            has_cross_attention=self.has_cross_attention,
        )
        x = FinalNorm(cfg, name="final")(x)
        if cfg.scale_decoder_output:
            x = x * cfg.d_model**-0.5
        if decode and allocated:
            index.value = cache_index + length
        if cfg.tie_output_embedding:
            logits = self.token_embedding.attend(x)  # (B, T, V)
        else:
            logits = nn.Dense(
                cfg.output_vocab_size,
                use_bias=False,
                dtype=cfg.compute_dtype,
                param_dtype=cfg.weights_dtype,
                kernel_init=sharding.partitioned(
                    nn.initializers.xavier_uniform(), "embed", "vocab"
                ),
                dot_general=matmul.dot_general_for(cfg),
                name="output_projection",
            )(x)  # (B, T, V)
        logits = sharding.constrain(logits, "batch", "length", "vocab")
        return logits.astype(jnp.float32)


class Transformer(nn.Module):
    """Encoder-decoder Transformer. `__call__` trains with teacher forcing;
    `encode` and `decode` run the two halves alone (decoding uses them).

    Token inputs are (B, L) int arrays, right-padded with PAD_ID=0 (attention
    then takes padding as lengths; concrete inputs are checked). Packed rows
    pass `*_segmentation` (1, 2, ... per example, 0 on padding) and
    `*_position` (restarting at 0 in every example).
    """

    config: TransformerConfig

    def setup(self):
        cfg = self.config
        source_embedding = TokenEmbedding(cfg, cfg.vocab_size, name="source_embedding")
        if cfg.target_vocab_size is None:
            target_embedding = source_embedding
        else:
            target_embedding = TokenEmbedding(cfg, cfg.target_vocab_size, name="target_embedding")
        self.encoder = Encoder(cfg, source_embedding)
        self.decoder = Decoder(cfg, target_embedding)

    def encode(self, inputs, inputs_segmentation=None, inputs_position=None, *, deterministic=True):
        """inputs (B, S) -> encoded (B, S, D)."""
        cfg = self.config
        packed = inputs_segmentation is not None
        check_tokens(inputs, cfg.vocab_size, cfg.max_len, "inputs", packed=packed)
        return self.encoder(
            inputs, inputs_segmentation, inputs_position, deterministic=deterministic
        )

    def decode(
        self,
        encoded,
        inputs,
        decoder_inputs,
        inputs_segmentation=None,
        targets_segmentation=None,
        targets_position=None,
        *,
        deterministic=True,
        decode=False,
    ):
        """decoder_inputs (B, T), already shifted right -> logits (B, T, V) in float32.

        `inputs` (B, S) are the source tokens, used for the cross-attention
        padding mask. With `decode=True` the model keeps a KV cache in the
        mutable `cache` collection: the first call (the prefill) passes the
        encoder output and any number of tokens; later calls may pass
        `encoded=None` and continue from the cache index.
        """
        cfg = self.config
        packed = targets_segmentation is not None
        check_tokens(
            decoder_inputs, cfg.output_vocab_size, cfg.max_len, "decoder_inputs", packed=packed
        )
        return self.decoder(
            encoded,
            inputs,
            decoder_inputs,
            inputs_segmentation,
            targets_segmentation,
            targets_position,
            deterministic=deterministic,
            decode=decode,
        )

    def __call__(
        self,
        inputs,
        targets,
        inputs_segmentation=None,
        targets_segmentation=None,
        inputs_position=None,
        targets_position=None,
        *,
        deterministic=True,
    ):
        """inputs (B, S), targets (B, T) -> logits (B, T, V) predicting `targets`."""
        encoded = self.encode(
            inputs, inputs_segmentation, inputs_position, deterministic=deterministic
        )
        return self.decode(
            encoded,
            inputs,
            shift_right(targets, targets_position),
            inputs_segmentation,
            targets_segmentation,
            targets_position,
            deterministic=deterministic,
        )


def _segment_mask(query_segments, key_segments):
    if query_segments is None or key_segments is None:
        return None
    return masks_lib.segment_mask(query_segments, key_segments)


def _local_window(config, length):
    if config.local_window is None:
        return None
    return masks_lib.local_window_mask(length, length, config.local_window)


def _causal_self_mask(config, decoder_inputs, segmentation):
    """Causal self-attention over right-padded rows, or over packed / windowed rows."""
    if segmentation is None and config.local_window is None:
        return masks_lib.right_padded_mask(decoder_inputs, decoder_inputs, is_causal=True)
    length = decoder_inputs.shape[1]
    return masks_lib.AttentionMask(
        dense=masks_lib.combine_masks(
            masks_lib.causal_mask(length),
            masks_lib.padding_mask(decoder_inputs, decoder_inputs),
            _segment_mask(segmentation, segmentation),
            _local_window(config, length),
        )
    )


def _cross_mask(
    decoder_inputs, inputs, targets_segmentation, inputs_segmentation, *, decode, packed
):
    """Target positions attend to the real source tokens of their own example."""
    if decode:  # One source per row; the queries are the new target positions.
        return masks_lib.AttentionMask(
            dense=masks_lib.key_padding_mask(inputs),  # (B, 1, 1, S)
            key_value_lengths=masks_lib.real_lengths(inputs),
        )
    if not packed:
        return masks_lib.right_padded_mask(decoder_inputs, inputs)
    return masks_lib.AttentionMask(
        dense=masks_lib.combine_masks(
            masks_lib.padding_mask(decoder_inputs, inputs),
            _segment_mask(targets_segmentation, inputs_segmentation),
        )
    )
