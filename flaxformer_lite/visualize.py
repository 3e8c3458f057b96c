"""Look inside a model: collect its attention weights and draw them as heatmaps.

Needs matplotlib (`pip install 'flaxformer-lite[notebooks]'`); the rest of the
library does not, so this module is imported on its own:

    logits, state = model.apply(variables, inputs, targets, mutable=["intermediates"])
    maps = visualize.attention_maps(state["intermediates"])
    visualize.plot_attention(maps["cross"][:, 0], query_labels=..., key_labels=...)
"""

import re

import numpy as np

try:
    import matplotlib.pyplot as plt
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "flaxformer_lite.visualize draws with matplotlib: pip install 'flaxformer-lite[notebooks]'"
    ) from error

# Where each kind of attention sits in a layer of the encoder or the decoder.
ATTENTION_KINDS = {
    "encoder_self": ("encoder", "self_attention"),
    "decoder_self": ("decoder", "self_attention"),
    "cross": ("decoder", "cross_attention"),
}


def attention_maps(intermediates) -> dict[str, np.ndarray]:
    """The attention weights a model sowed, stacked over layers.

    `intermediates` is `state["intermediates"]` after
    `model.apply(..., mutable=["intermediates"])`. Returns a dict with the keys
    among "encoder_self" (L, B, H, S, S), "decoder_self" (L, B, H, T, T) and
    "cross" (L, B, H, T, S) whose halves ran, for a Python-loop stack
    (`layer_0`, `layer_1`, ...) and a scanned one (`layers`, with a leading
    layer axis) alike.
    """
    maps = {}
    for kind, (half, module) in ATTENTION_KINDS.items():
        if half not in intermediates:
            continue
        stack = intermediates[half]["stack"]
        if "layers" in stack:  # nn.scan: one entry whose arrays carry the layer axis
            weights = np.asarray(stack["layers"][module]["attention_weights"][0])
        else:
            names = sorted(stack, key=lambda name: int(re.sub(r"\D", "", name)))
            weights = np.stack(
                [np.asarray(stack[n][module]["attention_weights"][0]) for n in names]
            )
        maps[kind] = weights
    return maps


def plot_heatmap(
    matrix,
    *,
    ax=None,
    x_labels=None,
    y_labels=None,
    title: str | None = None,
    cmap: str = "viridis",
    vmin: float | None = None,
    vmax: float | None = None,
    annotate: bool = False,
    colorbar: bool = True,
):
    """Draw a 2-D array with rows top to bottom; returns the matplotlib Axes.

    `annotate` writes each value in its cell (for small matrices).
    """
    matrix = np.asarray(matrix, dtype=np.float32)
    if matrix.ndim != 2:
        raise ValueError(f"plot_heatmap draws a 2-D array; got shape {matrix.shape}.")
    if ax is None:
        rows, columns = matrix.shape
        _, ax = plt.subplots(figsize=(min(0.6 * columns + 2, 9), min(0.6 * rows + 1, 6)))
    image = ax.imshow(matrix, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    _set_tick_labels(ax, x_labels, y_labels, matrix.shape)
    if annotate:
        middle = np.nanmean(image.get_clim())
        for (row, column), value in np.ndenumerate(matrix):
            color = "black" if value > middle else "white"
            ax.text(column, row, f"{value:.2f}", ha="center", va="center", fontsize=8, color=color)
    if title:
        ax.set_title(title)
    if colorbar:
        ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return ax


def plot_attention(
    weights,
    *,
    query_labels=None,
    key_labels=None,
    title: str | None = None,
    cell_inches: float = 2.2,
):
    """Attention weights as a grid of heatmaps: one row per layer, one column per head.

    `weights` is (Q, K), (H, Q, K) or (L, H, Q, K), e.g. `attention_maps(...)["cross"][:, 0]`
    for the first example. Every panel shares the colour scale [0, 1], so
    bright cells are where a query (row) puts its weight among the keys
    (columns). Returns the matplotlib Figure.
    """
    weights = np.asarray(weights, dtype=np.float32)
    if not 2 <= weights.ndim <= 4:
        raise ValueError(
            f"plot_attention takes (Q, K), (H, Q, K) or (L, H, Q, K); got {weights.shape}."
        )
    weights = weights.reshape((1,) * (4 - weights.ndim) + weights.shape)
    num_layers, num_heads = weights.shape[:2]
    figure, axes = plt.subplots(
        num_layers,
        num_heads,
        figsize=(cell_inches * num_heads + 0.6, cell_inches * num_layers + 0.4),
        squeeze=False,
        layout="constrained",
    )
    for (layer, head), ax in np.ndenumerate(axes):
        plot_heatmap(
            weights[layer, head],
            ax=ax,
            x_labels=key_labels if layer == num_layers - 1 else (),
            y_labels=query_labels if head == 0 else (),
            vmin=0.0,
            vmax=1.0,
            colorbar=False,
        )
        ax.set_title(f"layer {layer} head {head}" if num_layers > 1 else f"head {head}", fontsize=9)
        if key_labels is not None and any(len(str(label)) > 2 for label in key_labels):
            ax.tick_params(axis="x", labelrotation=90)
    figure.colorbar(axes[0, 0].images[0], ax=axes, shrink=0.8, label="attention weight")
    figure.supxlabel("key", fontsize=10)
    figure.supylabel("query", fontsize=10)
    if title:
        figure.suptitle(title)
    return figure


def _set_tick_labels(ax, x_labels, y_labels, shape) -> None:
    """One tick per row/column with its label; `None` keeps matplotlib's ticks, `()` hides them."""
    for labels, length, set_ticks in (
        (x_labels, shape[1], ax.set_xticks),
        (y_labels, shape[0], ax.set_yticks),
    ):
        if labels is None:
            continue
        labels = [str(label) for label in labels]
        if labels and len(labels) != length:
            raise ValueError(f"Got {len(labels)} tick labels for an axis of length {length}.")
        set_ticks(range(len(labels)), labels, fontsize=8)
