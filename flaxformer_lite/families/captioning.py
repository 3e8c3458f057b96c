"""The image-captioning family: a ViT image encoder, the Transformer's text decoder."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from flaxformer_lite import flops
from flaxformer_lite.config import ConfigError, TransformerConfig, required_field
from flaxformer_lite.decoding import decode_batch
from flaxformer_lite.families.base import Batch, ModelFamily, transformer_config_from
from flaxformer_lite.models.captioner import ImageCaptioner
from flaxformer_lite.special_tokens import PAD_ID
from flaxformer_lite.training.losses import token_metrics


@dataclasses.dataclass(frozen=True)
class ImageCaptioning(ModelFamily):
    """Reads `image` (B, H, W, C) float and `targets` (B, T); predicts the caption.

    Training is teacher-forced cross-entropy over the caption tokens. Evaluation
    generates each caption from the image alone (greedy search, or beam search when
    beam_size > 1) with the KV cache; the trainer scores it by exact match and BLEU.
    """

    name = "image_captioning"
    model_config: TransformerConfig
    image_size: int
    image_channels: int
    patch_size: int
    max_target_length: int
    max_decode_length: int
    beam_size: int = 1
    length_penalty_alpha: float = 0.6

    @classmethod
    def from_config(cls, config, vocab_size: int) -> ImageCaptioning:
        image_size = required_field(config, "image_size")
        patch_size = required_field(config, "patch_size")
        for name, value in (("image_size", image_size), ("patch_size", patch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"config.{name}={value!r} cannot work: use a positive integer.")
        if image_size % patch_size:
            raise ConfigError(
                f"config.image_size={image_size} is not a multiple of config.patch_size="
                f"{patch_size}: the image must split into whole patches."
            )
        family = cls(
            model_config=transformer_config_from(config, vocab_size),
            image_size=image_size,
            image_channels=required_field(config, "image_channels"),
            patch_size=patch_size,
            max_target_length=config.max_target_length,
            max_decode_length=config.max_decode_length,
            beam_size=config.beam_size,
            length_penalty_alpha=config.length_penalty_alpha,
        )
        try:
            family.module.vit_config  # noqa: B018 - builds and checks the image encoder's config
        except ValueError as error:
            raise ConfigError(str(error)) from None
        return family

    @property
    def module(self) -> ImageCaptioner:
        return ImageCaptioner(
            self.model_config,
            image_size=(self.image_size, self.image_size),
            patch_size=self.patch_size,
            num_channels=self.image_channels,
        )

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def example_batch(self) -> Batch:
        side = self.image_size
        return {
            "image": jnp.zeros((1, side, side, self.image_channels), jnp.float32),
            "targets": jnp.ones((1, self.max_target_length), jnp.int32),
        }

    def model_inputs(self, batch: Batch) -> dict:
        return {"images": batch["image"], "targets": batch["targets"]}

    def metric_sums(self, outputs, batch: Batch, *, label_smoothing: float) -> dict:
        return token_metrics(outputs, batch["targets"], label_smoothing=label_smoothing)

    def predict(self, params, batch: Batch):
        """Generated captions (B, max_decode_length), EOS then PAD."""
        return decode_batch(
            self.module,
            params,
            batch["image"],
            max_decode_len=self.max_decode_length,
            beam_size=self.beam_size,
            alpha=self.length_penalty_alpha,
        )

    def sources(self, batch: Batch):
        """A caption is conditioned on an image, not on tokens: one PAD per row (B, 1)."""
        return jnp.full((*batch["targets"].shape[:-1], 1), PAD_ID, jnp.int32)

    def train_step_flops(self, num_rows: int) -> int:
        """The encoder-decoder's count with the patches as the source, plus the patch
        embedding (one (P * P * C, D) matmul per patch); backward = 2 x forward."""
        patch_features = self.patch_size**2 * self.image_channels
        patch_embedding = (
            2 * num_rows * self.num_patches * patch_features * self.model_config.d_model
        )
        return (
            flops.train_step_flops(
                self.model_config, num_rows, self.num_patches, self.max_target_length
            )
            + 3 * patch_embedding
        )
