"""flaxformer_lite.visualize on images: attention rollout, patch heat maps, words.

References: the rollout formula written out in float64 NumPy, layer by layer and
head by head; a ViT's own sown weights; the byte positions of each word of a caption.
"""

import jax
import matplotlib
import numpy as np
import pytest

from flaxformer_lite import TransformerConfig, visualize
from flaxformer_lite.data import ByteTokenizer
from flaxformer_lite.models.vit import VisionTransformer, ViTConfig
from flaxformer_lite.special_tokens import EOS_ID, PAD_ID

matplotlib.use("Agg")


def random_attention(rng, shape):
    """Row-stochastic weights (..., N, N): a softmax of random scores."""
    scores = rng.normal(size=shape) * 2.0
    weights = np.exp(scores)
    return weights / weights.sum(axis=-1, keepdims=True)


def rollout_by_hand(weights):
    """Abnar & Zuidema's rollout for one example: weights (L, H, N, N)."""
    num_layers, num_heads, n, _ = weights.shape
    rollout = np.eye(n)
    for layer in range(num_layers):
        average = sum(weights[layer, head] for head in range(num_heads)) / num_heads
        with_residual = 0.5 * average + 0.5 * np.eye(n)  # rows still sum to 1
        rollout = with_residual @ rollout  # the newest layer on the left
    return rollout


def test_rollout_follows_the_formula_for_every_example():
    weights = random_attention(np.random.default_rng(0), (3, 2, 4, 5, 5))  # (L, B, H, N, N)
    rollout = visualize.attention_rollout(weights)
    assert rollout.shape == (2, 5, 5)
    for example in range(2):
        np.testing.assert_allclose(
            rollout[example], rollout_by_hand(weights[:, example]), rtol=1e-12
        )
    np.testing.assert_allclose(rollout.sum(axis=-1), 1.0, rtol=1e-12)
    with pytest.raises(ValueError, match=r"\(L, \.\.\., H, N, N\)"):
        visualize.attention_rollout(weights[0, 0])


def test_rollout_to_grid_reads_the_class_token_row_or_the_mean():
    rollout = random_attention(np.random.default_rng(1), (5, 5))  # class token + 2 x 2 patches
    np.testing.assert_array_equal(
        visualize.rollout_to_grid(rollout, (2, 2), class_token=True), rollout[0, 1:].reshape(2, 2)
    )
    patches = random_attention(np.random.default_rng(2), (6, 6))
    np.testing.assert_allclose(
        visualize.rollout_to_grid(patches, (2, 3), class_token=False),
        patches.mean(axis=0).reshape(2, 3),
    )
    with pytest.raises(ValueError, match="5 patches do not fill a 2x3 grid"):
        visualize.rollout_to_grid(patches, (2, 3), class_token=True)


def test_rollout_over_a_vits_sown_weights():
    vit = ViTConfig(
        transformer=TransformerConfig(
            vocab_size=1, d_model=16, num_heads=2, d_ff=32, num_encoder_layers=2, max_len=8
        ),
        image_size=(8, 12),
        patch_size=4,
        num_channels=3,
        num_classes=3,
    )
    model = VisionTransformer(vit)
    images = jax.random.uniform(jax.random.key(0), (2, 8, 12, 3))
    variables = model.init(jax.random.key(1), images)
    _, state = model.apply(variables, images, mutable=["intermediates"])
    weights = visualize.attention_maps(state["intermediates"])["encoder_self"]
    assert weights.shape == (2, 2, 2, 7, 7)  # (L, B, H, 1 + 2 x 3, 1 + 2 x 3)
    grid = visualize.rollout_to_grid(
        visualize.attention_rollout(weights), vit.grid_size, class_token=True
    )
    assert grid.shape == (2, 2, 3)
    np.testing.assert_allclose(grid[1], rollout_by_hand(weights[:, 1])[0, 1:].reshape(2, 3))


def test_caption_words_group_byte_tokens_and_stop_at_eos():
    tokens = [*ByteTokenizer().encode("a red  circle"), EOS_ID, PAD_ID, PAD_ID]
    assert visualize.caption_words(tokens, ByteTokenizer()) == [
        ("a", [0]),
        ("red", [2, 3, 4]),
        ("circle", [7, 8, 9, 10, 11, 12]),
        ("<eos>", [13]),
    ]


def test_word_heatmaps_average_heads_and_the_words_tokens():
    cross = np.random.default_rng(3).random((2, 3, 5, 4))  # (L, H, T, N) over a 2 x 2 grid
    words = [("ab", [0, 1]), ("c", [3])]
    maps = visualize.word_heatmaps(cross, words, (2, 2))
    np.testing.assert_allclose(maps[0], cross[1, :, 0:2].mean(axis=(0, 1)).reshape(2, 2))
    np.testing.assert_allclose(maps[1], cross[1, :, 3].mean(axis=0).reshape(2, 2))
    first_layer = visualize.word_heatmaps(cross, words, (2, 2), layer=0)
    np.testing.assert_allclose(first_layer[1], cross[0, :, 3].mean(axis=0).reshape(2, 2))


def test_plots_draw_the_image_under_each_heat_map():
    image = np.random.default_rng(4).random((8, 8, 3))
    ax = visualize.plot_patch_heatmap(image, np.arange(4.0).reshape(2, 2), title="rollout")
    picture, heat = ax.images
    assert picture.get_extent() == heat.get_extent() == [0, 8, 8, 0]  # the grid spans the image
    np.testing.assert_allclose(heat.get_array(), np.arange(4.0).reshape(2, 2) / 3.0)
    assert ax.get_title() == "rollout"
    words = [("a", [0]), ("red", [1]), ("<eos>", [2])]
    figure = visualize.plot_word_attention(image, words, np.ones((3, 2, 2)), title="caption")
    assert [ax.get_title() for ax in figure.axes] == ["a", "red", "<eos>"]
    with pytest.raises(ValueError, match=r"heat must be \(Gh, Gw\)"):
        visualize.plot_patch_heatmap(image, np.ones(4))
    matplotlib.pyplot.close("all")
