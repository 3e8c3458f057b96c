"""An image captioner: a ViT image encoder and the Transformer's text decoder.

    images (B, H, W, C) -> ImageEncoder (patches + 2-D positions + encoder stack)
      -> encoded patches (B, N, D) -> Decoder: masked self-attention over the caption,
      cross-attention over the patches, feed-forward -> logits (B, T, V)

The decoder is the encoder-decoder Transformer's, unchanged: a caption is a
translation whose source is a sequence of patches instead of tokens. `encode` and
`decode` have the signatures of `Transformer.encode` / `Transformer.decode`, with the
images where the source tokens were, so `flaxformer_lite.decoding.decode_batch`
captions a batch of images (greedy or beam search over the KV cache) as it
translates a batch of sentences.

Shapes: B batch, N patches, T caption length, D d_model, V vocabulary.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from flaxformer_lite.config import TransformerConfig
from flaxformer_lite.layers.embed import TokenEmbedding
from flaxformer_lite.models.encoder_decoder import Decoder
from flaxformer_lite.models.inputs import check_tokens, shift_right
from flaxformer_lite.models.vit import ImageEncoder, ViTConfig, grid_size


class ImageCaptioner(nn.Module):
    """Captions images. `config` sizes both halves (d_model, heads, layers, ...) and the
    caption vocabulary; `image_size`, `patch_size` and `num_channels` the image encoder.

    The encoder is the ViT's without a class token: the decoder reads every patch.
    Attention weights are sown as for the Transformer: the encoder's self-attention under
    `intermediates/encoder/...`, the decoder's under `intermediates/decoder/...`, so
    `visualize.attention_maps` reads both.
    """

    config: TransformerConfig
    image_size: tuple[int, int]  # (H, W), the resolution the position embeddings learn
    patch_size: int
    num_channels: int = 3

    @property
    def vit_config(self) -> ViTConfig:
        return ViTConfig(
            transformer=self.config,
            image_size=tuple(self.image_size),
            patch_size=self.patch_size,
            num_channels=self.num_channels,
            num_classes=1,  # no classification head is built: only the encoder is used
            pooling="mean",  # no class token among the patches
        )

    def setup(self):
        cfg = self.config
        self.encoder = ImageEncoder(self.vit_config)
        self.decoder = Decoder(cfg, TokenEmbedding(cfg, cfg.vocab_size, name="token_embedding"))

    def encode(self, images, *, deterministic=True):
        """images (B, H, W, C) float -> encoded patches (B, N, D)."""
        return self.encoder(images, deterministic=deterministic)

    def decode(self, encoded, images, decoder_inputs, *, deterministic=True, decode=False):
        """decoder_inputs (B, T), already shifted right -> logits (B, T, V) in float32.

        `images` (B, H, W, C) stand where a translation model's source tokens are; only
        their shape is read, for the number of patches every caption position may see.
        With `decode=True` the decoder keeps a KV cache (see `Transformer.decode`): the
        prefill passes the encoded patches, later steps `encoded=None`.
        """
        cfg = self.config
        check_tokens(decoder_inputs, cfg.output_vocab_size, cfg.max_len, "decoder_inputs")
        return self.decoder(
            encoded,
            every_patch_is_real(images, self.patch_size),
            decoder_inputs,
            deterministic=deterministic,
            decode=decode,
        )

    def __call__(self, images, targets, *, deterministic=True):
        """images (B, H, W, C), targets (B, T) -> logits (B, T, V) predicting `targets`."""
        encoded = self.encode(images, deterministic=deterministic)
        return self.decode(encoded, images, shift_right(targets), deterministic=deterministic)


def every_patch_is_real(images, patch_size: int):
    """(B, H, W, C) -> (B, N) int32 ones: the decoder's cross-attention mask reads source
    tokens and treats PAD (0) as absent; no patch is padding, so every entry is 1."""
    rows, columns = grid_size(images.shape[1:3], patch_size)
    return jnp.ones((images.shape[0], rows * columns), jnp.int32)
