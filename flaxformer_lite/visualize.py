"""Look inside a model: collect its attention weights and draw them as heatmaps.

Needs matplotlib (`pip install 'flaxformer-lite[notebooks]'`); the rest of the
library does not, so this module is imported on its own:

    logits, state = model.apply(variables, inputs, targets, mutable=["intermediates"])
    maps = visualize.attention_maps(state["intermediates"])
    visualize.plot_attention(maps["cross"][:, 0], query_labels=..., key_labels=...)

Images (a ViT, an image captioner): `attention_rollout` follows attention from the
output back to the patches through every layer, `rollout_to_grid` lays it out over
the patch grid and `plot_patch_heatmap` draws it over the image;
`caption_cross_attention`, `caption_words`, `word_heatmaps` and
`plot_word_attention` show where a captioner looked while writing each word.
"""

import re

import numpy as np

from flaxformer_lite.special_tokens import EOS_ID

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


# ----------------------------------------------------------------------------
# Images: attention rollout over a ViT, a captioner's cross-attention per word.


def attention_rollout(weights) -> np.ndarray:
    """Attention rollout (Abnar & Zuidema, 2020): how much each token of the last layer's
    output draws on each input token, through every layer and its residual connection.

    weights (L, ..., H, N, N), e.g. `attention_maps(...)["encoder_self"]` (L, B, H, N, N),
    layers bottom to top. Each layer's heads are averaged, the identity is added for
    the residual stream and the rows renormalised, A_l = (mean_h W_l + I) / 2; the
    rollout is A_L @ ... @ A_1. Returns (..., N, N) float64, rows summing to 1.
    """
    weights = np.asarray(weights, np.float64)
    if weights.ndim < 4 or weights.shape[-1] != weights.shape[-2]:
        raise ValueError(f"attention_rollout takes (L, ..., H, N, N) weights; got {weights.shape}.")
    mixed = weights.mean(axis=-3) + np.eye(weights.shape[-1])  # (L, ..., N, N)
    mixed /= mixed.sum(axis=-1, keepdims=True)
    rollout = mixed[0]
    for layer in mixed[1:]:
        rollout = layer @ rollout
    return rollout


def rollout_to_grid(rollout, grid: tuple[int, int], *, class_token: bool) -> np.ndarray:
    """What the ViT's output reads from each patch, laid out as the patch grid.

    rollout (..., N, N) from `attention_rollout`. With a class token (token 0), its row
    over the patches; with mean pooling, the mean of every row. -> (..., Gh, Gw).
    """
    rollout = np.asarray(rollout)
    relevance = rollout[..., 0, 1:] if class_token else rollout.mean(axis=-2)  # (..., N)
    if relevance.shape[-1] != grid[0] * grid[1]:
        raise ValueError(
            f"{relevance.shape[-1]} patches do not fill a {grid[0]}x{grid[1]} grid: check "
            "class_token and the grid."
        )
    return relevance.reshape(*relevance.shape[:-1], *grid)


def plot_patch_heatmap(image, heat, *, ax=None, title: str | None = None, alpha: float = 0.55):
    """An image with a heat map over its patches on top; returns the matplotlib Axes.

    image (H, W, C) in [0, 1]; heat (Gh, Gw), one value per patch, scaled to its own
    maximum and stretched over the patch it belongs to.
    """
    image, heat = np.asarray(image, np.float32), np.asarray(heat, np.float32)
    if heat.ndim != 2:
        raise ValueError(f"heat must be (Gh, Gw), one value per patch; got {heat.shape}.")
    if ax is None:
        _, ax = plt.subplots(figsize=(3, 3))
    height, width = image.shape[:2]
    ax.imshow(np.clip(image, 0.0, 1.0), extent=(0, width, height, 0))
    scale = heat.max() if heat.max() > 0 else 1.0
    ax.imshow(
        heat / scale,
        cmap="inferno",
        alpha=alpha,
        vmin=0.0,
        vmax=1.0,
        extent=(0, width, height, 0),
        interpolation="nearest",
    )
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def caption_words(tokens, tokenizer) -> list[tuple[str, list[int]]]:
    """The words of a generated caption, each with the positions of the tokens that spell it.

    tokens (T,) as decoding returns them (EOS, then PAD). A token belongs to the word of
    its first non-space character, whatever the tokenizer (bytes or SentencePiece pieces);
    EOS is the last "word", "<eos>".
    """
    tokens = [int(token) for token in np.asarray(tokens)]
    words, text = [], ""
    for position, token in enumerate(tokens):
        if token == EOS_ID:
            words.append(("<eos>", [position]))
            break
        new_text = tokenizer.decode(tokens[: position + 1])
        added = new_text[len(text) :]
        after_space = not words or added[0].isspace() or text.endswith(" ")
        if added.strip() and after_space:
            words.append((added.strip(), [position]))
        elif added.strip() and words:
            word, positions = words[-1]
            words[-1] = (word + added.strip(), [*positions, position])
        text = new_text
    return words


def caption_cross_attention(model, params, images, tokens) -> np.ndarray:
    """A captioner's cross-attention while it writes `tokens`: (L, B, H, T, N).

    `model` is an `ImageCaptioner`, images (B, H, W, C), tokens (B, T) a caption of each
    (e.g. `decoding.decode_batch`'s output). One teacher-forced pass over the caption
    computes exactly what each step of cached decoding computed.
    """
    _, state = model.apply({"params": params}, images, tokens, mutable=["intermediates"])
    return attention_maps(state["intermediates"])["cross"]


def word_heatmaps(cross, words, grid: tuple[int, int], *, layer: int = -1) -> np.ndarray:
    """Per word, where it looked: cross (L, H, T, N) of one example, `words` from
    `caption_words`. Heads averaged, the word's tokens averaged. -> (words, Gh, Gw)."""
    cross = np.asarray(cross)[layer].mean(axis=0)  # (T, N)
    return np.stack([cross[positions].mean(axis=0).reshape(grid) for _, positions in words])


def plot_word_attention(image, words, heatmaps, *, title: str | None = None):
    """One panel per generated word: the image, and where that word's cross-attention
    went. `words` from `caption_words`, heatmaps (words, Gh, Gw). Returns the Figure."""
    figure, axes = plt.subplots(
        1, len(words), figsize=(1.7 * len(words), 2.0), squeeze=False, layout="constrained"
    )
    for ax, (word, _), heat in zip(axes[0], words, heatmaps, strict=True):
        plot_patch_heatmap(image, heat, ax=ax, title=word)
    if title:
        figure.suptitle(title)
    return figure
