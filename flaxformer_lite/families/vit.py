"""The ViT family: a Vision Transformer that classifies images (models/vit.py)."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from flaxformer_lite import flops
from flaxformer_lite.config import ConfigError, required_field
from flaxformer_lite.data.images import ImageOptions
from flaxformer_lite.families.base import Batch, ModelFamily, transformer_config_from
from flaxformer_lite.models.vit import VisionTransformer, ViTConfig
from flaxformer_lite.training.losses import smoothed_cross_entropy

# ViTConfig's fields as the experiment config names them.
CONFIG_FIELDS = {
    "image_size": "image_size",
    "patch_size": "patch_size",
    "num_channels": "image_channels",
    "num_classes": "the number of classes",
    "pooling": "vit_pooling",
}


@dataclasses.dataclass(frozen=True)
class VisionTransformerClassifier(ModelFamily):
    """Reads `image` (B, H, W, C) float32, `label` (B,) int32 and `loss_weights` (B,).

    The model's "vocabulary" is its set of classes: `from_config` takes the number of
    classes the data hold as `vocab_size`. The loss is the (label-smoothed) cross-entropy
    over the images whose weight is 1; evaluation scores accuracy (`correct_sum` over
    `token_count` images) and generates nothing.
    """

    name = "vit"
    generates_text = False
    config: ViTConfig

    @classmethod
    def from_config(cls, config, vocab_size: int) -> VisionTransformerClassifier:
        ImageOptions.from_config(config)  # A bad image option stops the run before any work.
        image_size = required_field(config, "image_size")
        try:
            vit_config = ViTConfig(
                transformer=transformer_config_from(config, vocab_size),
                image_size=(image_size, image_size),
                patch_size=required_field(config, "patch_size"),
                num_channels=required_field(config, "image_channels"),
                num_classes=vocab_size,
                pooling=required_field(config, "vit_pooling"),
            )
        except ValueError as error:
            message = str(error)
            for field, config_name in CONFIG_FIELDS.items():
                message = message.replace(f"ViTConfig.{field}=", f"config.{config_name}=")
            raise ConfigError(message) from None
        return cls(vit_config)

    @property
    def module(self) -> VisionTransformer:
        return VisionTransformer(self.config)

    def example_batch(self) -> Batch:
        height, width = self.config.image_size
        return {"image": jnp.zeros((1, height, width, self.config.num_channels), jnp.float32)}

    def model_inputs(self, batch: Batch) -> dict:
        return {"images": batch["image"]}

    def metric_sums(self, outputs, batch: Batch, *, label_smoothing: float) -> dict:
        """outputs: logits (B, K). Each image counts once; padding rows (weight 0) not at all."""
        labels, weights = batch["label"], batch["loss_weights"].astype(jnp.float32)  # (B,)
        loss = smoothed_cross_entropy(outputs, labels, label_smoothing)  # (B,)
        nll = smoothed_cross_entropy(outputs, labels, 0.0)
        correct = (jnp.argmax(outputs, axis=-1) == labels).astype(jnp.float32) * weights
        return {
            "loss_sum": (loss * weights).sum(),
            "nll_sum": (nll * weights).sum(),
            "correct_sum": correct.sum(),
            "token_count": weights.sum(),  # images: the loss and accuracy are per image
            "exact_sum": correct.sum(),
            "sequence_count": weights.sum(),
        }

    def predict(self, params, batch: Batch):
        """The predicted class of every image (B,)."""
        return jnp.argmax(self.apply(params, batch), axis=-1)

    def sources(self, batch: Batch):
        """What each prediction is conditioned on: the images themselves."""
        return batch["image"]

    def train_step_flops(self, num_rows: int) -> int:
        """3 x the forward matmuls: patch embedding, the encoder stack, the head."""
        vit, cfg = self.config, self.config.transformer
        length, patch_features = vit.sequence_length, vit.patch_size**2 * vit.num_channels
        layer = flops.attention_flops(num_rows, length, length, cfg.d_model)
        layer += flops.feed_forward_flops(num_rows, length, cfg.d_model, cfg.d_ff)
        forward = (
            2 * num_rows * vit.num_patches * patch_features * cfg.d_model
            + cfg.num_encoder_layers * layer
            + 2 * num_rows * cfg.d_model * vit.num_classes
        )
        return 3 * forward
