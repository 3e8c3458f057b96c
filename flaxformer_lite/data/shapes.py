"""Built-in images that need no download: coloured shapes drawn with Pillow.

    images, labels = shapes_dataset(1000, image_size=32, seed=0)   # (N, 32, 32, 3) uint8, (N,)
    SHAPES[labels[0]]                                              # e.g. "triangle"

Each image is one shape on a black background, in a random colour, size and position;
its label is the shape. A classifier has to recognise the outline whatever the colour and
place, which a linear model on pixels does poorly and a small ViT learns in a minute.
Every shape is symmetric left to right, so a horizontal flip keeps the label.

The drawing pieces are public for scenes of several objects (image captioning):
`draw_shape` puts one shape in a box on a `PIL.ImageDraw.Draw`.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "diamond", "cross")
# Saturated colours, far apart in RGB, so that a colour word names one unambiguously.
COLOURS = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 240),
    "yellow": (240, 220, 40),
    "magenta": (220, 60, 220),
    "cyan": (40, 220, 220),
    "white": (240, 240, 240),
}


def draw_shape(
    draw: ImageDraw.ImageDraw,
    shape: str,
    colour: tuple[int, int, int],
    box: tuple[int, int, int, int],
) -> None:
    """Fill `shape` inside `box` = (left, top, right, bottom), inclusive pixel corners."""
    left, top, right, bottom = box
    centre_x, centre_y = (left + right) / 2, (top + bottom) / 2
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    elif shape == "triangle":  # pointing up
        draw.polygon([(centre_x, top), (right, bottom), (left, bottom)], fill=colour)
    elif shape == "diamond":
        draw.polygon(
            [(centre_x, top), (right, centre_y), (centre_x, bottom), (left, centre_y)], fill=colour
        )
    elif shape == "cross":  # a plus sign, arms a third of the box wide
        arm_x, arm_y = (right - left) / 6, (bottom - top) / 6
        draw.rectangle((centre_x - arm_x, top, centre_x + arm_x, bottom), fill=colour)
        draw.rectangle((left, centre_y - arm_y, right, centre_y + arm_y), fill=colour)
    else:
        raise ValueError(f"Unknown shape {shape!r}: choose one of {SHAPES}.")


def random_box(
    rng: np.random.Generator, image_size: int, min_size: int, max_size: int
) -> tuple[int, int, int, int]:
    """A square box of a random side in [min_size, max_size] anywhere inside the image."""
    side = int(rng.integers(min_size, max_size + 1))
    left = int(rng.integers(0, image_size - side + 1))
    top = int(rng.integers(0, image_size - side + 1))
    return left, top, left + side - 1, top + side - 1


def shapes_dataset(
    num_examples: int, *, image_size: int = 32, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """`num_examples` images of one shape each, and their labels (indices into SHAPES).

    Returns (N, image_size, image_size, 3) uint8 and (N,) int32. The same seed gives the
    same images. Shapes span 5/16 to 2/3 of the image side.
    """
    if image_size < 8:
        raise ValueError(f"image_size={image_size} is too small to draw shapes: use 8 or more.")
    rng = np.random.default_rng(seed)
    colours = list(COLOURS.values())
    labels = rng.integers(0, len(SHAPES), num_examples).astype(np.int32)
    images = np.zeros((num_examples, image_size, image_size, 3), np.uint8)
    for index, label in enumerate(labels):
        canvas = Image.new("RGB", (image_size, image_size))
        colour = colours[rng.integers(len(colours))]
        box = random_box(rng, image_size, 5 * image_size // 16, 2 * image_size // 3)
        draw_shape(ImageDraw.Draw(canvas), SHAPES[label], colour, box)
        images[index] = np.asarray(canvas)
    return images, labels
