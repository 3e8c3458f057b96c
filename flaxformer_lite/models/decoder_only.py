"""The decoder-only Transformer: a GPT-style language model.

One stack of causal self-attention blocks (the decoder of the paper without
cross-attention) reads tokens and predicts, at every position, the next one.
The output layer is the token embedding, transposed (tied).

Shapes: B batch, T sequence length, D d_model, V vocabulary.
"""

import flax.linen as nn

from flaxformer_lite.config import TransformerConfig
from flaxformer_lite.layers.embed import TokenEmbedding
from flaxformer_lite.models.encoder_decoder import Decoder
from flaxformer_lite.models.inputs import check_tokens, shift_right


class DecoderOnlyTransformer(nn.Module):
    """A language model. `__call__` trains with teacher forcing; `decode` runs
    the stack on inputs already shifted right, with a KV cache for generation.

    Token inputs are (B, T) int arrays, right-padded with PAD_ID=0. Packed rows
    pass `segmentation` (1, 2, ... per example, 0 on padding) and `positions`
    (restarting at 0 in every example). Position embeddings, learned or
    sinusoidal, come from `config.position_encoding`; the decoder layers are
    `config.num_decoder_layers` deep.
    """

    config: TransformerConfig

    def setup(self):
        cfg = self.config
        embedding = TokenEmbedding(cfg, cfg.vocab_size, name="token_embedding")
        self.decoder = Decoder(cfg, embedding, has_cross_attention=False)

    def __call__(self, targets, segmentation=None, positions=None, *, deterministic=True):
        """targets (B, T) -> logits (B, T, V): position t predicts targets[t] from
        BOS and targets[:t] (each packed example starts again from BOS)."""
        return self.decode(
            shift_right(targets, positions), segmentation, positions, deterministic=deterministic
        )

    def decode(
        self, decoder_inputs, segmentation=None, positions=None, *, deterministic=True, decode=False
    ):
        """decoder_inputs (B, T), already shifted right -> logits (B, T, V) in float32.

        With `decode=True` the `cache` collection keeps every position's keys
        and values: the first call (the prefill) may pass BOS and a whole
        prompt, later calls one token per row.
        """
        cfg = self.config
        check_tokens(
            decoder_inputs,
            cfg.vocab_size,
            cfg.max_len,
            "decoder_inputs",
            packed=segmentation is not None,
        )
        return self.decoder(
            None,
            None,
            decoder_inputs,
            targets_segmentation=segmentation,
            targets_position=positions,
            deterministic=deterministic,
            decode=decode,
        )
