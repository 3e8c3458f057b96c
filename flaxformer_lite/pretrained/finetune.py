"""Fine-tuning a Hugging Face checkpoint with train.py: `--config.init_from=MODEL_DIR`.

`config.init_from` names the workdir of one of our encoder-only runs, or a Hugging Face
model directory (config.json with a `model_type`, model.safetensors) of a BERT-family
checkpoint: bert, roberta or distilbert. For a checkpoint:

- The checkpoint decides the architecture, the config decides the training.
  `with_checkpoint_architecture` sets every config field that shapes the parameters
  (`architecture`: sizes, norm placement, epsilon, activation, ...) from
  config.json and prints what it changed; dropout, optimiser, lengths and labels stay
  the config's. The model's vocabulary and position table are the checkpoint's too.
- The data are tokenized by the checkpoint's tokenizer (`create_datasets`), in the ids
  of `PipelineTokenizer`, so `CLS text SEP` is the checkpoint's `[CLS] text [SEP]`.
- `params` is the checkpoint's parameter tree in those ids. The family loads every part
  its own model has (embeddings, layers, a pooler); the rest, such as a classifier head,
  stays freshly initialised (families/encoder_only.py, `with_init_from`).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import os

import jax.numpy as jnp
import ml_collections
import numpy as np

from flaxformer_lite.config import ConfigError, required_field
from flaxformer_lite.data import datasets, pipeline
from flaxformer_lite.data.options import DataOptions, process_index_and_count
from flaxformer_lite.pretrained import Pretrained, PretrainedError, read_config
from flaxformer_lite.pretrained import load as load_checkpoint
from flaxformer_lite.pretrained.tokenizer import PipelineTokenizer
from flaxformer_lite.pretrained.vocabulary import OFFSET

ENCODER_TYPES = ("bert", "roberta", "distilbert")
# TransformerConfig fields that shape the parameters, all set from the checkpoint. Dropout
# and the compute options (dtype, attention implementation, remat) leave the parameters as
# they are: those stay the config's.
TRANSFORMER_FIELDS = (
    "d_model",
    "num_heads",
    "num_kv_heads",
    "head_dim",
    "d_ff",
    "num_encoder_layers",
    "norm_placement",
    "norm",
    "norm_epsilon",
    "mlp",
    "use_bias",
    "scale_embeddings",
    "position_encoding",
    "scale_attention_logits",
    "local_window",
    "scan_layers",
)


def is_model_directory(path: str | None) -> bool:
    """Is `path` a Hugging Face model directory (its config.json names a model_type)?

    Our own runs write a config.json too; theirs has `model_type`, ours `model`.
    """
    if path is None or not os.path.isfile(os.path.join(path, "config.json")):
        return False
    try:
        with open(os.path.join(path, "config.json")) as file:
            return "model_type" in json.load(file)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False


def starts_from_checkpoint(config: ml_collections.ConfigDict) -> bool:
    """Does this encoder-only experiment start from a Hugging Face checkpoint?"""
    return config.get("model") in ("encoder_only", "encoder_classifier") and is_model_directory(
        config.get("init_from")
    )


@functools.cache
def load(path: str) -> Pretrained:
    """The checkpoint at `path`, read once per process; any problem is one ConfigError."""
    try:
        model_type = read_config(path).get("model_type")
        if model_type not in ENCODER_TYPES:
            raise PretrainedError(
                f"{os.path.join(path, 'config.json')} has model_type={model_type!r}; an "
                f"encoder-only model starts from one of {', '.join(ENCODER_TYPES)}."
            )
        return load_checkpoint(path)
    except PretrainedError as error:
        raise ConfigError(f"config.init_from={path!r}: {error}") from None


@functools.cache
def pipeline_tokenizer(path: str) -> PipelineTokenizer:
    """The checkpoint's tokenizer in the ids of our data pipeline."""
    loaded = load(path)
    try:
        return PipelineTokenizer(loaded.tokenizer.tokenizer, loaded.tokenizer.vocabulary)
    except PretrainedError as error:
        raise ConfigError(f"config.init_from={path!r}: {error}") from None


def architecture(path: str) -> dict:
    """The config fields that shape the parameters, as the checkpoint at `path` has them:
    `TRANSFORMER_FIELDS` and the encoder's num_token_types."""
    loaded = load(path)
    values = {name: getattr(loaded.config, name) for name in TRANSFORMER_FIELDS}
    return {**values, "num_token_types": loaded.model.num_token_types}


def max_positions(path: str) -> int:
    """The positions the checkpoint has embeddings for: the longest sequence it reads."""
    return load(path).config.max_len


def with_checkpoint_architecture(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of `config` whose architecture fields are those of its init_from checkpoint.

    Prints the fields that changed, so a run never trains another model than it says.
    """
    path = config.init_from
    resolved = copy.deepcopy(config)
    changes = []
    for name, value in architecture(path).items():
        if required_field(config, name) != value:
            changes.append(f"{name}={value!r} (config: {config[name]!r})")
            resolved[name] = value
    print(
        f"init_from {path}: a {load(path).model_type} checkpoint; its architecture replaces the "
        f"config's: {', '.join(changes) or 'no field differs'}"
    )
    return resolved


def check_against_checkpoint(config: ml_collections.ConfigDict) -> None:
    """A ConfigError unless `config` can train the checkpoint of its init_from as it is.

    `with_checkpoint_architecture` makes the architecture agree; the lengths are the
    config's to choose, within the checkpoint's position table.
    """
    path = config.init_from
    for name, value in architecture(path).items():
        if required_field(config, name) != value:
            raise ConfigError(
                f"config.{name}={config[name]!r} but the checkpoint config.init_from={path!r} "
                f"has {value!r}: set --config.{name}={value}."
            )
    length = required_field(config, "max_source_length")
    if length > max_positions(path):
        raise ConfigError(
            f"config.max_source_length={length} is longer than the {max_positions(path)} "
            f"positions of the checkpoint config.init_from={path!r}: set "
            f"--config.max_source_length={max_positions(path)} or less."
        )


def params(path: str) -> dict:
    """The checkpoint's parameters over the ids of `pipeline_tokenizer(path)`.

    The loader's tables put three rows of ours before the checkpoint's (vocabulary.py);
    the pipeline's ids put seven (`PipelineTokenizer`): the token embedding and the MLM
    output bias are rebuilt from the checkpoint's own rows.
    """
    tree = dict(load(path).params)
    rows = pipeline_tokenizer(path).rows

    def pipeline_rows(table):  # (size + 3, ...) -> (size + 7, ...)
        return jnp.asarray(rows(np.asarray(table)[OFFSET:]))

    embedding = tree["token_embedding"]["embedding"]["embedding"]
    tree["token_embedding"] = {"embedding": {"embedding": pipeline_rows(embedding)}}
    if "mlm_head" in tree:
        tree["mlm_head"] = {
            **tree["mlm_head"],
            "output_bias": pipeline_rows(tree["mlm_head"]["output_bias"]),
        }
    return tree


def create_datasets(
    config: ml_collections.ConfigDict, workdir: str, num_local_devices: int
) -> datasets.Datasets:
    """`data.create_datasets` with the checkpoint's tokenizer: the same examples and batches.

    Encoder-only data (masked LM, classification) are read example by example.
    """
    process_index, process_count = process_index_and_count()
    layout = pipeline.HostLayout(num_local_devices, process_index, process_count)
    options = dataclasses.replace(  # as the data log names the tokenizer
        DataOptions.from_config(config), tokenizer=f"{config.init_from} (the checkpoint's)"
    )
    return datasets.create_example_datasets(
        options, workdir, layout, pretrained_tokenizer=pipeline_tokenizer(config.init_from)
    )
