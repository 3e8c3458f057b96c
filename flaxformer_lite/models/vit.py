"""The Vision Transformer (Dosovitskiy et al., 2021): an image read as a sequence of patches.

    images (B, H, W, C) -> P x P patches -> one linear map -> + 2-D position embeddings
      -> [class token] + patches -> pre-LN encoder stack -> class token or mean -> head

Shapes: B batch, H W C an image (NHWC, float), P the patch size, (Gh, Gw) the grid of
patches (H / P, W / P), N = Gh * Gw patches, D d_model, K classes.

The pieces are public so an image captioner can reuse them: `ImageEncoder` turns images
into a sequence of D-vectors (B, L, D) that a text decoder cross-attends to, and
`VisionTransformer` adds pooling and a classification head on top.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from flaxformer_lite.config import TransformerConfig
from flaxformer_lite.layers import sharding
from flaxformer_lite.models.encoder_decoder import EncoderLayer, FinalNorm
from flaxformer_lite.models.stack import LayerStack

POOLINGS = ("class_token", "mean")


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """A ViT: its image geometry, its pooling and head, and the encoder it runs.

    `transformer` gives the encoder stack (d_model, num_heads, d_ff, num_encoder_layers,
    dropout, norm placement, ...); its vocabulary and decoder fields are unused.
    `image_size` is the resolution the position embeddings are learned at; other
    resolutions (multiples of `patch_size`) interpolate them.
    """

    transformer: TransformerConfig
    image_size: tuple[int, int]  # (H, W)
    patch_size: int
    num_channels: int
    num_classes: int
    pooling: str = "class_token"  # "class_token" (ViT) or "mean" (global average pooling)

    def __post_init__(self):
        def fail(field, value, allowed):
            raise ValueError(f"ViTConfig.{field}={value!r} is invalid: {allowed}.")

        for field in ("patch_size", "num_channels", "num_classes"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                fail(field, value, "it must be a positive integer")
        if len(self.image_size) != 2 or any(side % self.patch_size for side in self.image_size):
            fail(
                "image_size",
                self.image_size,
                f"give (height, width), each a multiple of patch_size={self.patch_size}",
            )
        if self.pooling not in POOLINGS:
            fail("pooling", self.pooling, f"choose one of {POOLINGS}")

    @property
    def grid_size(self) -> tuple[int, int]:
        """(Gh, Gw): the patches along the height and the width at `image_size`."""
        return grid_size(self.image_size, self.patch_size)

    @property
    def num_patches(self) -> int:
        rows, columns = self.grid_size
        return rows * columns

    @property
    def sequence_length(self) -> int:
        """Positions the encoder sees at `image_size`: the patches, and the class token."""
        return self.num_patches + (self.pooling == "class_token")


def grid_size(image_size: tuple[int, int], patch_size: int) -> tuple[int, int]:
    """(H, W), P -> (H / P, W / P); a ValueError when P does not divide both sides."""
    height, width = image_size
    if height % patch_size or width % patch_size:
        raise ValueError(
            f"An image of {height}x{width} pixels does not split into {patch_size}x{patch_size} "
            f"patches: resize it to multiples of {patch_size}."
        )
    return height // patch_size, width // patch_size


def patchify(images: jax.Array, patch_size: int) -> jax.Array:
    """Cut images into non-overlapping patches. (B, H, W, C) -> (B, Gh, Gw, P * P * C).

    Each patch is flattened row by row, the channels of a pixel together: feature
    (i * P + j) * C + c is pixel (i, j) of the patch, channel c (the order of an HWIO
    convolution kernel, so a patch embedding is a stride-P convolution).
    """
    batch, height, width, channels = images.shape
    rows, columns = grid_size((height, width), patch_size)
    patches = images.reshape(batch, rows, patch_size, columns, patch_size, channels)
    patches = patches.transpose(0, 1, 3, 2, 4, 5)  # (B, Gh, Gw, P, P, C)
    return patches.reshape(batch, rows, columns, patch_size * patch_size * channels)


def unpatchify(patches: jax.Array, patch_size: int) -> jax.Array:
    """Put patches back together. (B, Gh, Gw, P * P * C) -> (B, H, W, C); undoes `patchify`."""
    batch, rows, columns, features = patches.shape
    channels = features // (patch_size * patch_size)
    images = patches.reshape(batch, rows, columns, patch_size, patch_size, channels)
    images = images.transpose(0, 1, 3, 2, 4, 5)  # (B, Gh, P, Gw, P, C)
    return images.reshape(batch, rows * patch_size, columns * patch_size, channels)


def interpolate_position_embeddings(
    table: jax.Array, grid: tuple[int, int], method: str = "bicubic"
) -> jax.Array:
    """Position embeddings learned on one grid, resized in 2-D to another. (Gh, Gw, D).

    As the ViT paper does to fine-tune at a new resolution: each of the D features is an
    image over the grid, resampled (`jax.image.resize`, half-pixel centres). The trained
    grid itself comes back unchanged.
    """
    if tuple(grid) == table.shape[:2]:
        return table
    return jax.image.resize(table, (*grid, table.shape[-1]), method=method).astype(table.dtype)


class PatchEmbedding(nn.Module):
    """One linear map from each flattened P x P patch to d_model. (B, H, W, C) -> (B, Gh, Gw, D)."""

    config: ViTConfig

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        cfg = self.config.transformer
        patches = patchify(images.astype(cfg.compute_dtype), self.config.patch_size)
        return nn.Dense(
            cfg.d_model,
            dtype=cfg.compute_dtype,
            param_dtype=cfg.weights_dtype,
            kernel_init=sharding.partitioned(nn.initializers.lecun_normal(), None, "embed"),
            bias_init=sharding.partitioned(nn.initializers.zeros_init(), "embed"),
            name="projection",
        )(patches)  # (B, Gh, Gw, D)


class PositionEmbedding2D(nn.Module):
    """Adds a learned embedding to every patch, by its (row, column) on the grid.

    The table is learned at the config's grid; a feature map on another grid gets
    the table interpolated to it (`interpolate_position_embeddings`).
    """

    config: ViTConfig

    @nn.compact
    def __call__(self, patches: jax.Array) -> jax.Array:
        """patches (B, Gh, Gw, D) -> (B, Gh, Gw, D)."""
        cfg = self.config.transformer
        table = self.param(
            "embedding",
            sharding.partitioned(nn.initializers.normal(stddev=0.02), None, None, "embed"),
            (*self.config.grid_size, cfg.d_model),
            cfg.weights_dtype,
        )  # (Gh0, Gw0, D)
        table = interpolate_position_embeddings(table, patches.shape[1:3])
        return patches + table.astype(patches.dtype)[None]


class ImageEncoder(nn.Module):
    """Images -> a sequence of encoded vectors. (B, H, W, C) -> (B, L, D).

    L is the number of patches, plus one in front for the class token when the
    config pools with it. The stack is the encoder-decoder's `EncoderLayer` (pre-LN
    or post-LN as the transformer config says) without any mask: every patch sees
    every patch. Attention weights are sown under
    `intermediates/encoder/stack/.../self_attention` when this module is named
    "encoder", as `visualize.attention_maps` reads them.
    """

    config: ViTConfig

    @nn.compact
    def __call__(self, images: jax.Array, *, deterministic: bool = True) -> jax.Array:
        vit, cfg = self.config, self.config.transformer
        check_images(images, vit)
        x = PatchEmbedding(vit, name="patch_embedding")(images)  # (B, Gh, Gw, D)
        x = PositionEmbedding2D(vit, name="position_embedding")(x)
        x = x.reshape(x.shape[0], -1, cfg.d_model)  # (B, N, D), row by row
        if vit.pooling == "class_token":
            class_token = self.param(
                "class_token",
                sharding.partitioned(nn.initializers.zeros_init(), None, None, "embed"),
                (1, 1, cfg.d_model),
                cfg.weights_dtype,
            )
            class_tokens = jnp.broadcast_to(
                class_token.astype(x.dtype), (x.shape[0], 1, x.shape[2])
            )
            x = jnp.concatenate([class_tokens, x], axis=1)  # (B, 1 + N, D)
        x = sharding.constrain(x, "batch", "length", "embed")
        x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
        x = LayerStack(EncoderLayer, cfg, cfg.num_encoder_layers, name="stack")(
            x, None, deterministic=deterministic
        )  # no mask: no padding among patches
        return FinalNorm(cfg, name="final")(x)


class VisionTransformer(nn.Module):
    """ViT classifier: `ImageEncoder`, then the class token's vector (or the mean over
    patches), then one linear head. (B, H, W, C) float -> logits (B, K) in float32.
    """

    config: ViTConfig

    @nn.compact
    def __call__(self, images: jax.Array, *, deterministic: bool = True) -> jax.Array:
        vit, cfg = self.config, self.config.transformer
        encoded = ImageEncoder(vit, name="encoder")(images, deterministic=deterministic)
        # (B, D): the class token's output, or the mean over the patches.
        pooled = encoded[:, 0] if vit.pooling == "class_token" else encoded.mean(axis=1)
        # Zero-initialised, as in ViT: every class starts equally likely.
        logits = nn.Dense(
            vit.num_classes,
            dtype=cfg.compute_dtype,
            param_dtype=cfg.weights_dtype,
            kernel_init=sharding.partitioned(nn.initializers.zeros_init(), "embed", "vocab"),
            bias_init=sharding.partitioned(nn.initializers.zeros_init(), "vocab"),
            name="head",
        )(pooled)  # (B, K)
        return logits.astype(jnp.float32)


def check_images(images: jax.Array, config: ViTConfig) -> None:
    """Shapes are static, so a wrong image is a ValueError before anything compiles."""
    if images.ndim != 4:
        raise ValueError(
            f"images must be (batch, height, width, channels) NHWC; got shape {images.shape}."
        )
    if images.shape[-1] != config.num_channels:
        raise ValueError(
            f"images have {images.shape[-1]} channels, the model expects "
            f"num_channels={config.num_channels}: convert them (e.g. PIL .convert('RGB'))."
        )
    grid_size(images.shape[1:3], config.patch_size)
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise ValueError(f"images must be floating point (normalised pixels), not {images.dtype}.")
