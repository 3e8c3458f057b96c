"""flaxformer_lite.visualize: collecting attention weights and drawing them."""

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import pytest

from flaxformer_lite import Transformer, TransformerConfig, visualize

matplotlib.use("Agg")


def sowed_weights(scan_layers: bool):
    config = TransformerConfig(
        vocab_size=20,
        d_model=16,
        num_heads=2,
        d_ff=32,
        num_encoder_layers=3,
        num_decoder_layers=2,
        max_len=8,
        scan_layers=scan_layers,
    )
    model = Transformer(config)
    inputs = jnp.array([[5, 6, 7, 1, 0, 0], [8, 9, 1, 0, 0, 0]])
    targets = jnp.array([[7, 6, 5, 1], [9, 8, 1, 0]])
    variables = model.init(jax.random.key(0), inputs, targets)
    _, state = model.apply(variables, inputs, targets, mutable=["intermediates"])
    return model, variables, inputs, state["intermediates"]


@pytest.mark.parametrize("scan_layers", [False, True])
def test_attention_maps_stack_every_layer(scan_layers):
    *_, intermediates = sowed_weights(scan_layers)
    maps = visualize.attention_maps(intermediates)
    assert {kind: weights.shape for kind, weights in maps.items()} == {
        "encoder_self": (3, 2, 2, 6, 6),
        "decoder_self": (2, 2, 2, 4, 4),
        "cross": (2, 2, 2, 4, 6),
    }
    # Rows of real queries are distributions over the real keys; padding gets nothing.
    np.testing.assert_allclose(maps["cross"][:, 0, :, :, :4].sum(-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(maps["cross"][:, 0, :, :, 4:], 0.0)
    np.testing.assert_array_equal(np.triu(maps["decoder_self"][:, 0], k=1), 0.0)


def test_attention_maps_loop_and_scan_orders_agree():
    """Layer i of the loop is entry i of the scanned axis (same parameters, same weights)."""
    _, _, _, loop = sowed_weights(False)
    maps = visualize.attention_maps(loop)
    layers = loop["encoder"]["stack"]
    for index in range(3):
        expected = layers[f"layer_{index}"]["self_attention"]["attention_weights"][0]
        np.testing.assert_array_equal(maps["encoder_self"][index], expected)


def test_attention_maps_of_the_encoder_alone():
    model, variables, inputs, _ = sowed_weights(False)
    _, state = model.apply(variables, inputs, method=model.encode, mutable=["intermediates"])
    assert list(visualize.attention_maps(state["intermediates"])) == ["encoder_self"]


def test_attention_maps_orders_layers_numerically():
    weights = {
        f"layer_{i}": {"self_attention": {"attention_weights": (np.full((1,), i),)}}
        for i in range(12)
    }
    maps = visualize.attention_maps({"encoder": {"stack": weights}})
    np.testing.assert_array_equal(maps["encoder_self"][:, 0], np.arange(12))


@pytest.mark.parametrize("shape", [(4, 6), (2, 4, 6), (3, 2, 4, 6)])
def test_plot_attention_draws_one_panel_per_layer_and_head(shape):
    weights = np.random.default_rng(0).random(shape)
    figure = visualize.plot_attention(
        weights, query_labels=list("abcd"), key_labels=list("pqrstu"), title="cross"
    )
    panels = [ax for ax in figure.axes if ax.images]
    assert len(panels) == int(np.prod(shape[:-2]))
    num_heads = shape[-3] if len(shape) > 2 else 1
    bottom_left = panels[-num_heads]
    assert [t.get_text() for t in bottom_left.get_xticklabels()] == list("pqrstu")
    assert [t.get_text() for t in panels[0].get_yticklabels()] == list("abcd")
    assert all(panel.images[0].get_clim() == (0.0, 1.0) for panel in panels)
    assert figure._suptitle.get_text() == "cross"
    matplotlib.pyplot.close(figure)


def test_plot_heatmap_annotates_and_checks_labels():
    ax = visualize.plot_heatmap(np.eye(3), annotate=True, x_labels="abc", y_labels="xyz")
    assert [text.get_text() for text in ax.texts][:3] == ["1.00", "0.00", "0.00"]
    with pytest.raises(ValueError, match="2 tick labels for an axis of length 3"):
        visualize.plot_heatmap(np.eye(3), x_labels="ab")
    with pytest.raises(ValueError, match="2-D"):
        visualize.plot_heatmap(np.ones((2, 2, 2)))
    with pytest.raises(ValueError, match=r"\(L, H, Q, K\)"):
        visualize.plot_attention(np.ones(3))
    matplotlib.pyplot.close("all")
