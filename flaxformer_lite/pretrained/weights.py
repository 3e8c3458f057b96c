"""A checkpoint's tensors, read with `safetensors` (no torch), and checked before use.

A Hugging Face model directory holds its weights in `model.safetensors`, or in shards
listed by `model.safetensors.index.json` (`weight_map`: tensor name -> shard file).
`CheckpointTensors` opens them lazily: names and shapes come from the file headers,
so every missing key, unknown key and shape mismatch is found before a tensor is read
or anything is compiled.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

import numpy as np
from safetensors import safe_open

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


class PretrainedError(ValueError):
    """A model directory that cannot be loaded; the one-line message names the file or key."""


class CheckpointTensors:
    """The tensors of a model directory by name, with the shapes their headers declare.

    The first of `strip_prefixes` a name starts with is stripped: a checkpoint saved
    from a model with a head (BertForMaskedLM: "bert.encoder...") then reads like the
    bare model ("encoder..."). LayerNorm's TensorFlow-era names (gamma, beta), which
    bert-base checkpoints still carry, read as transformers reads them (weight, bias).
    """

    def __init__(self, model_dir: str, *, strip_prefixes: Iterable[str] = ()):
        self.model_dir = model_dir
        self._file_of: dict[str, str] = {}  # our name -> shard path
        self._stored_name: dict[str, str] = {}  # our name -> name in the file
        self.shapes: dict[str, tuple[int, ...]] = {}
        for path in _shard_paths(model_dir):
            with safe_open(path, framework="numpy") as shard:
                for stored in shard.keys():  # noqa: SIM118 (safe_open is not a dict)
                    name = _legacy_norm_name(_strip(stored, strip_prefixes))
                    self._file_of[name] = path
                    self._stored_name[name] = stored
                    self.shapes[name] = tuple(shard.get_slice(stored).get_shape())

    def __contains__(self, name: str) -> bool:
        return name in self.shapes

    def names(self) -> list[str]:
        return sorted(self.shapes)

    def check(self, expected: dict[str, tuple[int, ...]], *, ignored: Iterable[str] = ()):
        """Every expected tensor present with its shape, and nothing else but `ignored`.

        `ignored` lists names (or name suffixes, starting with ".") the checkpoint may hold
        that the model does not use, such as a pre-training head or attention-mask buffers.
        """
        ignored = tuple(ignored)
        for name, shape in expected.items():
            if name not in self.shapes:
                raise PretrainedError(
                    f"{self.model_dir}: the weights have no tensor {name!r}, which the config "
                    "asks for: the directory's config.json and weights belong to different "
                    "models, or the file is truncated; save the model again."
                )
            if self.shapes[name] != tuple(shape):
                raise PretrainedError(
                    f"{self.model_dir}: tensor {name!r} has shape {list(self.shapes[name])} but "
                    f"config.json implies {list(shape)}: fix config.json to describe these "
                    "weights (or save config and weights together again)."
                )
        unknown = [
            name for name in self.names() if name not in expected and not _matches(name, ignored)
        ]
        if unknown:
            more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
            raise PretrainedError(
                f"{self.model_dir}: tensor {unknown[0]!r}{more} is not part of the model "
                "config.json describes, so loading would silently drop it: check model_type "
                "and the architecture options in config.json."
            )

    def read(self, name: str) -> np.ndarray:
        """The tensor `name` as float32 NumPy (bfloat16 and float16 checkpoints are upcast)."""
        path, stored = self._file_of[name], self._stored_name[name]
        with safe_open(path, framework="numpy") as shard:
            if shard.get_slice(stored).get_dtype() != "BF16":
                return shard.get_tensor(stored).astype(np.float32)
        with safe_open(path, framework="flax") as shard:  # NumPy has no bfloat16; JAX has
            return np.asarray(shard.get_tensor(stored), dtype=np.float32)


def _shard_paths(model_dir: str) -> list[str]:
    """model.safetensors, or every shard model.safetensors.index.json names."""
    single = os.path.join(model_dir, SINGLE_FILE)
    index = os.path.join(model_dir, INDEX_FILE)
    if os.path.exists(single):
        return [single]
    if not os.path.exists(index):
        raise PretrainedError(
            f"{model_dir} has neither {SINGLE_FILE} nor {INDEX_FILE}: save the model with "
            "safetensors (save_pretrained(..., safe_serialization=True)); .bin files need torch."
        )
    with open(index) as f:
        weight_map = json.load(f).get("weight_map")
    if not weight_map:
        raise PretrainedError(f"{index} has no 'weight_map': save the sharded model again.")
    paths = [os.path.join(model_dir, shard) for shard in sorted(set(weight_map.values()))]
    for path in paths:
        if not os.path.exists(path):
            raise PretrainedError(
                f"{path} is missing but {INDEX_FILE} names it: copy every shard into {model_dir}."
            )
    return paths


def _strip(name: str, prefixes: Iterable[str]) -> str:
    for prefix in prefixes:
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


def _legacy_norm_name(name: str) -> str:
    for old, new in (("LayerNorm.gamma", "LayerNorm.weight"), ("LayerNorm.beta", "LayerNorm.bias")):
        if name.endswith(old):
            return name[: -len(old)] + new
    return name


def _matches(name: str, ignored: tuple[str, ...]) -> bool:
    return any(
        name == pattern or (pattern[0] == "." and name.endswith(pattern)) for pattern in ignored
    )
