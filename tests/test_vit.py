"""The Vision Transformer: patches, patch embedding, position interpolation, and learning.

Each part is checked against an independent computation: patches against slices of the
image, the patch embedding against a strided convolution (lax.conv_general_dilated), the
position embeddings against the parameter table itself, and training against chance.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from configs import vit_default
from flaxformer_lite.config import ConfigError, TransformerConfig
from flaxformer_lite.families import make_family
from flaxformer_lite.models import vit
from flaxformer_lite.training.trainer import train_and_evaluate

TRANSFORMER = TransformerConfig(
    vocab_size=5, d_model=32, num_heads=2, d_ff=64, num_encoder_layers=1, dropout_rate=0.0
)
# Not square, so that swapping height and width anywhere shows.
CONFIG = vit.ViTConfig(
    TRANSFORMER, image_size=(16, 24), patch_size=4, num_channels=3, num_classes=5
)


@pytest.fixture(scope="module")
def params():
    images = jnp.zeros((1, 16, 24, 3), jnp.float32)
    variables = vit.VisionTransformer(CONFIG).init(jax.random.key(0), images)
    return nn.meta.unbox(variables)["params"]


def random_images(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def test_patchify_cuts_image_slices_and_unpatchify_restores_the_image():
    images = random_images((2, 8, 12, 3))
    patches = np.asarray(vit.patchify(jnp.asarray(images), 4))  # (B, Gh, Gw, P * P * C)
    assert patches.shape == (2, 2, 3, 48)
    for row in range(2):
        for column in range(3):
            expected = images[:, 4 * row : 4 * row + 4, 4 * column : 4 * column + 4, :]
            np.testing.assert_array_equal(patches[:, row, column], expected.reshape(2, -1))
    np.testing.assert_array_equal(np.asarray(vit.unpatchify(jnp.asarray(patches), 4)), images)


def test_patchify_refuses_a_size_the_patch_does_not_divide():
    with pytest.raises(ValueError, match="does not split into 4x4 patches"):
        vit.patchify(jnp.zeros((1, 10, 12, 3)), 4)


def test_patch_embedding_is_a_stride_p_convolution(params):
    images = jnp.asarray(random_images((2, 16, 24, 3)))
    dense = params["encoder"]["patch_embedding"]["projection"]
    embedded = vit.PatchEmbedding(CONFIG).apply({"params": {"projection": dense}}, images)
    kernel = dense["kernel"].reshape(4, 4, 3, TRANSFORMER.d_model)  # HWIO
    convolved = lax.conv_general_dilated(
        images,
        kernel,
        window_strides=(4, 4),
        padding="VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=lax.Precision.HIGHEST,
    )
    assert embedded.shape == (2, 4, 6, TRANSFORMER.d_model)
    np.testing.assert_allclose(embedded, convolved + dense["bias"], rtol=1e-5, atol=1e-5)


def test_position_embeddings_at_the_trained_resolution_are_the_table(params):
    table = params["encoder"]["position_embedding"]["embedding"]  # (Gh, Gw, D) = (4, 6, D)
    assert table.shape == (4, 6, TRANSFORMER.d_model)
    np.testing.assert_array_equal(vit.interpolate_position_embeddings(table, (4, 6)), table)
    patches = jnp.asarray(random_images((2, 4, 6, TRANSFORMER.d_model)))
    added = vit.PositionEmbedding2D(CONFIG).apply(
        {"params": params["encoder"]["position_embedding"]}, patches
    )
    np.testing.assert_array_equal(added, patches + table[None])


def test_position_embeddings_interpolate_in_2d_to_a_new_grid(params):
    # A table that varies along the width only stays so, and keeps its range, on a finer grid.
    ramp = jnp.broadcast_to(jnp.linspace(-1.0, 1.0, 6)[None, :, None], (4, 6, 8))
    resized = np.asarray(vit.interpolate_position_embeddings(ramp, (6, 9), method="bilinear"))
    assert resized.shape == (6, 9, 8)
    np.testing.assert_allclose(resized, np.broadcast_to(resized[:1], resized.shape), atol=1e-6)
    assert np.all(np.diff(resized[0, :, 0]) > 0)  # still increasing from left to right
    # The model reads an unseen resolution (6 x 9 patches) with the same parameters.
    logits = vit.VisionTransformer(CONFIG).apply(
        {"params": params}, jnp.asarray(random_images((2, 24, 36, 3)))
    )
    assert logits.shape == (2, 5) and np.all(np.isfinite(logits))


@pytest.mark.parametrize("pooling", ["class_token", "mean"])
def test_attention_weights_are_sown_over_every_patch(pooling):
    config = vit.ViTConfig(TRANSFORMER, (16, 24), 4, 3, 5, pooling=pooling)
    model = vit.VisionTransformer(config)
    images = jnp.asarray(random_images((2, 16, 24, 3)))
    variables = nn.meta.unbox(model.init(jax.random.key(1), images))
    _, state = model.apply(variables, images, mutable=["intermediates"])
    weights = state["intermediates"]["encoder"]["stack"]["layer_0"]["self_attention"]
    length = 24 + (pooling == "class_token")
    assert weights["attention_weights"][0].shape == (2, 2, length, length)
    np.testing.assert_allclose(weights["attention_weights"][0].sum(-1), 1.0, rtol=1e-5)


def test_metric_sums_count_each_image_once_and_skip_padding_rows():
    family = make_family(vit_default.get_config(), vocab_size=3)
    logits = jnp.array([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 1.0]])
    batch = {
        "label": jnp.array([0, 2, 0]),  # right, wrong, (padding)
        "loss_weights": jnp.array([1.0, 1.0, 0.0]),
    }
    sums = family.metric_sums(logits, batch, label_smoothing=0.0)
    log_probs = np.asarray(jax.nn.log_softmax(logits))
    assert float(sums["correct_sum"]) == 1.0 and float(sums["token_count"]) == 2.0
    np.testing.assert_allclose(sums["nll_sum"], -(log_probs[0, 0] + log_probs[1, 2]), rtol=1e-6)


def test_bad_vit_options_are_one_line_config_errors():
    config = vit_default.get_config()
    config.patch_size = 5
    with pytest.raises(ConfigError, match=r"config.image_size=\(32, 32\).*patch_size=5"):
        make_family(config, vocab_size=5)
    config = vit_default.get_config()
    config.vit_pooling = "max"
    with pytest.raises(ConfigError, match="config.vit_pooling='max'"):
        make_family(config, vocab_size=5)


def tiny_run_config():
    config = vit_default.get_config()
    config.num_train_examples = 2_000
    config.num_eval_examples = 300
    config.image_size = 16
    config.crop_padding = 1
    config.per_device_batch_size = 64
    config.per_device_eval_batch_size = 300
    config.d_model = 32
    config.num_heads = 2
    config.d_ff = 64
    config.num_encoder_layers = 1
    config.num_train_steps = 80
    config.learning_rate = 0.003
    config.warmup_steps = 10
    config.eval_every_steps = 1_000
    config.checkpoint_every_steps = 1_000
    return config


def test_vit_learns_the_built_in_shapes_through_the_trainer(tmp_path):
    metrics = train_and_evaluate(tiny_run_config(), str(tmp_path))
    # Five balanced classes: chance is 0.2, and over 300 held-out images a model that learned
    # nothing stays below 0.3. Eighty steps of this tiny ViT reach about 0.45.
    assert metrics["eval_accuracy"] >= 0.35, metrics
    assert "exact_match" not in metrics  # a classifier generates no text
