"""The encoder-only Transformer: BERT and its descendants (RoBERTa, DistilBERT, MiniLM).

One bidirectional stack of encoder layers reads the whole sequence; heads on top of it
predict masked tokens (masked-LM pre-training), classify the sequence from its first
token, or pool it into a sentence embedding.

    tokens (B, S) -> token + position (+ token type) embeddings -> [LayerNorm] -> dropout
                  -> N EncoderLayers (post-LN as BERT, or pre-LN + a final LayerNorm)
                  -> hidden (B, S, D)
    hidden at chosen positions (B, P, D) -> MLM head -> logits (B, P, V)
    hidden[:, 0] -> pooler (dense + tanh) -> dropout -> classifier -> logits (B, C)
    hidden, mean over real tokens -> sentence embedding (B, D)

BERT's layout is `TransformerConfig(norm_placement="post", norm_epsilon=1e-12, mlp="gelu",
use_bias=True, position_encoding="learned", scale_embeddings=False)` with
`embedding_norm=True`; the layers are the encoder layers of the encoder-decoder.

Parameter tree (stable names; `flaxformer_lite.pretrained` maps checkpoints onto it).
Kernels of projections to heads are (D, H, Dh), from heads (H, Dh, D):

    token_embedding/embedding/embedding           (V, D)    also the MLM output layer (tied)
    embeddings/position/position_embedding        (max_len, D)   position_encoding="learned"
    embeddings/token_type_embedding/embedding     (num_token_types, D)   if num_token_types > 0
    embeddings/norm/{scale, bias}                 (D,)      if embedding_norm
    stack/layer_{i}/                              i = 0 .. num_encoder_layers - 1; with
                                                  scan_layers, stack/layers/ with a leading
                                                  (num_encoder_layers,) axis on every leaf
        self_attention/{query, key, value}/kernel (D, H, Dh), bias (H, Dh)
        self_attention/out/kernel (H, Dh, D), bias (D,)
        post_self_attention_norm/{scale, bias}    (D,)  (pre-LN: pre_self_attention_norm)
        mlp/wi/kernel (D, F), bias (F,); mlp/wo/kernel (F, D), bias (D,)
        post_mlp_norm/{scale, bias}               (D,)  (pre-LN: pre_mlp_norm)
    final/norm/{scale, bias}                      (D,)      pre-LN only
    mlm_head/transform/{kernel (D, D), bias (D,)}           if has_mlm_head
    mlm_head/norm/{scale, bias}                   (D,)
    mlm_head/output_bias                          (V,)
    pooler/dense/{kernel (D, D), bias (D,)}                 if has_pooler
    classifier/{kernel (D, C), bias (C,)}                   if num_classes > 0

Shapes: B batch, S sequence length, P predicted positions per row, D d_model, V vocabulary,
C classes.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from flaxformer_lite.config import TransformerConfig
from flaxformer_lite.layers import masks as masks_lib
from flaxformer_lite.layers import matmul, sharding
from flaxformer_lite.layers.embed import TokenEmbedding
from flaxformer_lite.layers.mlp import ACTIVATIONS
from flaxformer_lite.layers.norm import norm_layer
from flaxformer_lite.layers.position import PositionEncoding
from flaxformer_lite.models.encoder_decoder import EncoderLayer, FinalNorm
from flaxformer_lite.models.inputs import check_tokens
from flaxformer_lite.models.stack import LayerStack
from flaxformer_lite.special_tokens import PAD_ID

HEAD_INIT = nn.initializers.normal(stddev=0.02)  # BERT's initialiser, for the layers added here


def dense(config: TransformerConfig, features: int, in_axis: str, out_axis: str, name: str):
    """A Dense layer with a bias, its kernel and bias named by logical axes."""
    return nn.Dense(
        features,
        dtype=config.compute_dtype,
        param_dtype=config.weights_dtype,
        kernel_init=sharding.partitioned(HEAD_INIT, in_axis, out_axis),
        bias_init=sharding.partitioned(nn.initializers.zeros, out_axis),
        dot_general=matmul.dot_general_for(config),
        name=name,
    )


class Embeddings(nn.Module):
    """Token + position (+ token type) embeddings, LayerNorm, dropout. (B, S) -> (B, S, D).

    The sum is exposed through `perturb("embedded")`, so the gradient with respect to each
    position's input is one `grad` away (as in the encoder-decoder's Embedder).
    """

    config: TransformerConfig
    token_embedding: TokenEmbedding
    num_token_types: int
    use_norm: bool

    @nn.compact
    def __call__(self, tokens, token_types, positions, *, deterministic: bool):
        cfg = self.config
        x = PositionEncoding(cfg, name="position")(self.token_embedding(tokens), positions)
        if self.num_token_types:
            type_table = nn.Embed(
                self.num_token_types,
                cfg.d_model,
                dtype=cfg.compute_dtype,
                param_dtype=cfg.weights_dtype,
                embedding_init=sharding.partitioned(HEAD_INIT, None, "embed"),
                name="token_type_embedding",
            )
            x = x + type_table(token_types)
        x = self.perturb("embedded", x)
        if self.use_norm:
            x = norm_layer(cfg, "norm")(x)
        x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
        return sharding.constrain(x, "batch", "length", "embed")


class MaskedLanguageModelHead(nn.Module):
    """hidden (B, P, D) -> logits (B, P, V): dense, activation, LayerNorm, tied output + bias."""

    config: TransformerConfig
    token_embedding: TokenEmbedding
    activation: str

    @nn.compact
    def __call__(self, hidden):
        cfg = self.config
        x = dense(cfg, cfg.d_model, "embed", "embed", "transform")(hidden)  # (B, P, D)
        x = norm_layer(cfg, "norm")(ACTIVATIONS[self.activation](x))
        output_bias = self.param(
            "output_bias",
            sharding.partitioned(nn.initializers.zeros, "vocab"),
            (cfg.vocab_size,),
            cfg.weights_dtype,
        )
        logits = self.token_embedding.attend(x) + output_bias.astype(cfg.compute_dtype)
        return logits.astype(jnp.float32)  # (B, P, V)


class Pooler(nn.Module):
    """The first token's hidden state through dense + tanh: BERT's summary. (B, S, D) -> (B, D)."""

    config: TransformerConfig

    @nn.compact
    def __call__(self, hidden):
        first = hidden[:, 0]  # (B, D): CLS
        return jnp.tanh(dense(self.config, self.config.d_model, "embed", "embed", "dense")(first))


def gather_positions(hidden: jax.Array, positions: jax.Array) -> jax.Array:
    """The hidden states at `positions` of each row. (B, S, D), (B, P) int -> (B, P, D)."""
    return jnp.take_along_axis(hidden, positions[:, :, None], axis=1)


def mean_pool(hidden: jax.Array, real: jax.Array) -> jax.Array:
    """The mean hidden state over each row's real tokens. (B, S, D), (B, S) bool -> (B, D).

    A row without real tokens pools to zeros.
    """
    weights = real.astype(hidden.dtype)[:, :, None]  # (B, S, 1)
    total = (hidden * weights).sum(axis=1)  # (B, D)
    return total / jnp.maximum(weights.sum(axis=1), 1.0)


class EncoderOnlyTransformer(nn.Module):
    """BERT-style encoder with optional heads: masked LM, pooler, classifier.

    `__call__` returns a dict of the outputs the module's heads give:

        "hidden"        (B, S, D)   the encoder's last hidden states, always
        "mlm_logits"    (B, P, V)   if has_mlm_head: at `masked_positions` (B, P), or at every
                                    position (P = S) when they are None
        "pooled"        (B, D)      if has_pooler
        "class_logits"  (B, C)      if num_classes > 0 (needs has_pooler)

    Token inputs are right-padded with PAD_ID=0. Packed rows, or tokenizers whose padding
    id is not 0 (RoBERTa), pass `segmentation` (B, S): 1, 2, ... per example, 0 on
    padding; attention then follows segmentation alone. `positions` (B, S) default to
    0..S-1 (restart them per packed example); `token_types` (B, S) default to 0.
    Attention weights are sown into `intermediates` when that collection is mutable.
    """

    config: TransformerConfig
    num_token_types: int = 2  # BERT's sentence A / sentence B; 0: none (DistilBERT, ours)
    embedding_norm: bool = True  # LayerNorm after the embedding sum (BERT)
    has_mlm_head: bool = True
    head_activation: str = "gelu"  # of the MLM head's transform: BERT's hidden_act
    has_pooler: bool = False
    num_classes: int = 0
    classifier_dropout_rate: float | None = None  # None: config.dropout_rate

    def setup(self):
        cfg = self.config
        if self.num_classes and not self.has_pooler:
            raise ValueError(
                "EncoderOnlyTransformer: the classifier reads the pooler; set has_pooler=True."
            )
        self.token_embedding = TokenEmbedding(cfg, cfg.vocab_size)
        self.embeddings = Embeddings(
            cfg, self.token_embedding, self.num_token_types, self.embedding_norm
        )
        self.stack = LayerStack(EncoderLayer, cfg, cfg.num_encoder_layers)
        self.final = FinalNorm(cfg)
        if self.has_mlm_head:
            self.mlm_head = MaskedLanguageModelHead(cfg, self.token_embedding, self.head_activation)
        if self.has_pooler:
            self.pooler = Pooler(cfg)
        if self.num_classes:
            self.classifier = dense(cfg, self.num_classes, "embed", None, "classifier")
            rate = self.classifier_dropout_rate
            self.classifier_dropout = nn.Dropout(cfg.dropout_rate if rate is None else rate)

    def encode(
        self, inputs, token_types=None, segmentation=None, positions=None, *, deterministic=True
    ):
        """inputs (B, S) -> hidden states (B, S, D), every position seeing every other."""
        cfg = self.config
        check_tokens(inputs, cfg.vocab_size, cfg.max_len, "inputs", packed=segmentation is not None)
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(inputs.shape[1]), inputs.shape)
        if token_types is None:
            token_types = jnp.zeros_like(inputs)
        x = self.embeddings(inputs, token_types, positions, deterministic=deterministic)
        x = self.stack(x, self_attention_mask(inputs, segmentation), deterministic=deterministic)
        return self.final(x)

    def __call__(
        self,
        inputs,
        token_types=None,
        segmentation=None,
        positions=None,
        masked_positions=None,
        *,
        deterministic=True,
    ) -> dict[str, jax.Array]:
        hidden = self.encode(
            inputs, token_types, segmentation, positions, deterministic=deterministic
        )
        outputs = {"hidden": hidden}
        if self.has_mlm_head:
            # Only the chosen positions go through the output layer, which over a
            # 30k vocabulary costs more than the whole encoder.
            chosen = (
                hidden if masked_positions is None else gather_positions(hidden, masked_positions)
            )
            outputs["mlm_logits"] = self.mlm_head(chosen)
        if self.has_pooler:
            outputs["pooled"] = self.pooler(hidden)
        if self.num_classes:
            pooled = self.classifier_dropout(outputs["pooled"], deterministic=deterministic)
            outputs["class_logits"] = self.classifier(pooled).astype(jnp.float32)
        return outputs

    def sentence_embedding(self, inputs, token_types=None, segmentation=None):
        """Mean pooling over the real tokens, for sentence embeddings. (B, S) -> (B, D)."""
        hidden = self.encode(inputs, token_types, segmentation, deterministic=True)
        real = inputs != PAD_ID if segmentation is None else segmentation > 0
        return mean_pool(hidden, real)


def self_attention_mask(inputs, segmentation) -> masks_lib.AttentionMask:
    """Every real token sees every real token of its own example, before and after it."""
    if segmentation is None:  # right-padded rows: lengths describe the padding
        return masks_lib.right_padded_mask(inputs, inputs)
    real = segmentation > 0
    return masks_lib.AttentionMask(
        dense=masks_lib.segment_mask(segmentation, segmentation)
        & real[:, None, :, None]
        & real[:, None, None, :]
    )
