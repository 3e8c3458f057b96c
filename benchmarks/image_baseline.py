"""Simple baselines on the pixels of an image dataset, on the split the ViT trains and holds out.

    python benchmarks/image_baseline.py --config=configs/vit_default.py \\
        --config.dataset=image_folder --config.image_dir=DIR [--config.image_size=32 ...]

Reads the images exactly as `train.py` does with the same config (data/images.py: the same
classes, resizing, channels, held-out split and per-channel normalisation; no augmentation)
and prints the held-out accuracy of two classifiers on the flattened pixels:

    nearest centroid      each class is the mean of its training images; predict the closest
    logistic regression   softmax regression, full-batch Adam (optax), a little weight decay

A ViT that does not beat these has not learned anything about images a linear model cannot.
"""

import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from ml_collections import config_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # configs/ and flaxformer_lite from this checkout

from flaxformer_lite.data import DataOptions  # noqa: E402
from flaxformer_lite.data.images import (  # noqa: E402
    ImageOptions,
    channel_statistics,
    load_image_splits,
)

config_flags.DEFINE_config_file(
    "config", os.path.join(REPO, "configs", "vit_default.py"), "The ViT's experiment config."
)
flags.DEFINE_integer("steps", 500, "Adam steps of the logistic regression.")


def pixel_features(source, normalize) -> tuple[np.ndarray, np.ndarray]:
    """Every image of a source as a normalised, flattened row: (N, H * W * C), labels (N,)."""
    examples = [source[index] for index in range(len(source))]
    features = np.stack([normalize(example["image"]).reshape(-1) for example in examples])
    return features, np.array([example["label"] for example in examples])


def nearest_centroid_accuracy(train_x, train_y, test_x, test_y, num_classes) -> float:
    present = [label for label in range(num_classes) if np.any(train_y == label)]
    centroids = np.stack([train_x[train_y == label].mean(axis=0) for label in present])
    distances = ((test_x[:, None, :] - centroids[None]) ** 2).sum(axis=-1)  # (N, K)
    return float(np.mean(np.asarray(present)[distances.argmin(axis=1)] == test_y))


def logistic_regression_accuracy(
    train_x, train_y, test_x, test_y, num_classes, steps, weight_decay=1e-4
) -> float:
    params = {
        "w": jnp.zeros((train_x.shape[1], num_classes)),
        "b": jnp.zeros(num_classes),
    }
    optimizer = optax.adamw(1e-2, weight_decay=weight_decay)

    def loss(params):
        logits = train_x @ params["w"] + params["b"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, train_y).mean()

    @jax.jit
    def step(params, state):
        grads = jax.grad(loss)(params)
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    state = optimizer.init(params)
    for _ in range(steps):
        params, state = step(params, state)
    predictions = (test_x @ params["w"] + params["b"]).argmax(axis=-1)
    return float(np.mean(np.asarray(predictions) == test_y))


def main(argv):
    del argv
    config = flags.FLAGS.config
    options = ImageOptions.from_config(config)
    splits = load_image_splits(options, DataOptions.from_config(config))
    normalize = channel_statistics(splits.train)
    train_x, train_y = pixel_features(splits.train, normalize)
    test_x, test_y = pixel_features(splits.validation, normalize)
    num_classes = len(splits.class_names)
    print(f"data: {splits.description}")
    print(f"features: {train_x.shape[1]} normalised pixels per image")
    print(f"images: {len(train_y)} to train on, {len(test_y)} held out")
    start = time.perf_counter()
    centroid = nearest_centroid_accuracy(train_x, train_y, test_x, test_y, num_classes)
    print(f"nearest centroid:    accuracy {centroid:.4f} ({time.perf_counter() - start:.1f} s)")
    start = time.perf_counter()
    logistic = logistic_regression_accuracy(
        jnp.asarray(train_x), train_y, jnp.asarray(test_x), test_y, num_classes, flags.FLAGS.steps
    )
    print(f"logistic regression: accuracy {logistic:.4f} ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    app.run(main)
