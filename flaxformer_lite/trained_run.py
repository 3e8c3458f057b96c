"""A finished (or running) training run, read back from its workdir for inference.

train.py leaves three things in a workdir: `config.json` (the experiment config),
the tokenizer (nothing for bytes, a SentencePiece model file otherwise) and the
orbax checkpoints. `load_trained_run` turns them into a model family, a
tokenizer and parameters; translate.py, generate.py and caption.py start from it.
"""

from __future__ import annotations

import dataclasses
import json
import os

import ml_collections

from flaxformer_lite.config import ConfigError
from flaxformer_lite.data import Tokenizer, load_tokenizer
from flaxformer_lite.families import ModelFamily, make_family
from flaxformer_lite.training.checkpoint import restore_params


@dataclasses.dataclass(frozen=True)
class TrainedRun:
    config: ml_collections.ConfigDict
    tokenizer: Tokenizer
    family: ModelFamily
    params: dict


def load_trained_run(
    workdir: str, step: int | None = None, *, families: tuple[str, ...]
) -> TrainedRun:
    """The run in `workdir` at checkpoint `step` (default: the latest).

    `families` names the model families the caller can use; a run of another
    family is a ConfigError that says which it is and which the tool reads.
    """
    config_path = os.path.join(workdir, "config.json")
    if not os.path.exists(config_path):
        raise FileNotFoundError(
            f"{config_path} is missing: point --workdir at a directory train.py wrote."
        )
    with open(config_path) as f:
        config = ml_collections.ConfigDict(json.load(f))
    if config.get("model") not in families:
        raise ConfigError(
            f"{workdir} holds a config.model={config.get('model')!r} run, and this tool "
            f"reads {' or '.join(families)} runs: point --workdir at one of those."
        )
    tokenizer = load_tokenizer(config, workdir)
    return TrainedRun(
        config=config,
        tokenizer=tokenizer,
        family=make_family(config, tokenizer.vocab_size),
        params=restore_params(workdir, step),
    )
