"""From a checkpoint's tensors to our parameter tree: layouts, and a check of the result.

A PyTorch `nn.Linear(in, out)` stores weight (out, in) and computes x W^T; our Dense
kernels are (in, out). Attention projections to H heads of Dh features are our
DenseGeneral kernels (D, H, Dh); the output projection from heads is (H, Dh, D).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import jax
import numpy as np

from flaxformer_lite.config import TransformerConfig
from flaxformer_lite.pretrained.vocabulary import CheckpointVocabulary

Reader = Callable[[str], np.ndarray]  # checkpoint tensor name -> float32 array


@dataclasses.dataclass(frozen=True)
class Layout:
    """What one checkpoint is in our terms, found from config.json and tensor names alone.

    `expected` maps every tensor the model reads to the shape config.json implies;
    `ignored` lists those it may hold and we do not use (see `CheckpointTensors.check`);
    `params(read)` builds our parameter tree, reading tensors by name.
    """

    module: nn.Module
    config: TransformerConfig
    vocabulary: CheckpointVocabulary
    expected: dict[str, tuple[int, ...]]
    ignored: tuple[str, ...]
    params: Callable[[Reader], dict]
    kind: str  # "encoder", "causal_lm" or "seq2seq"


def linear(weight: np.ndarray) -> np.ndarray:
    """nn.Linear weight (out, in) -> Dense kernel (in, out)."""
    return weight.T


def to_heads(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """nn.Linear weight (H * Dh, D) -> kernel (D, H, Dh)."""
    return weight.T.reshape(weight.shape[1], num_heads, -1)


def from_heads(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """nn.Linear weight (D, H * Dh) -> kernel (H, Dh, D)."""
    return weight.T.reshape(num_heads, -1, weight.shape[0])


def head_bias(bias: np.ndarray, num_heads: int) -> np.ndarray:
    """(H * Dh,) -> (H, Dh)."""
    return bias.reshape(num_heads, -1)


def nest(flat: dict[str, np.ndarray]) -> dict:
    """{"a/b/c": x} -> {"a": {"b": {"c": x}}}."""
    tree: dict = {}
    for path, value in flat.items():
        *parents, leaf = path.split("/")
        node = tree
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value
    return tree


def check_against_module(params: dict, module: nn.Module, example: dict) -> None:
    """Our tree has exactly the module's parameters, each with its shape (a converter bug
    otherwise: the message names the path). Shapes only, nothing is computed."""
    abstract = jax.eval_shape(lambda: module.init(jax.random.key(0), **example))["params"]
    wanted = _flat_shapes(nn.meta.unbox(abstract))
    given = _flat_shapes(params)
    for path in sorted(wanted.keys() | given.keys()):
        if wanted.get(path) != given.get(path):
            raise AssertionError(
                f"converted parameter {path}: shape {given.get(path)}, the module wants "
                f"{wanted.get(path)} (None: absent) -- a bug in flaxformer_lite.pretrained"
            )


def _flat_shapes(tree) -> dict[str, tuple[int, ...]]:
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return {
        "/".join(str(getattr(key, "key", key)) for key in path): tuple(leaf.shape)
        for path, leaf in leaves
    }
