"""The experiment config: one flat `ConfigDict` (configs/default.py), checked before any work.

`configs/default.py` is the one source of experiment defaults. Its fields feed three readers:
the data pipeline (`DataOptions`), the model family that `config.model` names
(`flaxformer_lite.families`) and the training loop. `check_config` asks each of them about the whole
config up front, so a value that cannot work stops the run at once with one line, not after
data preparation, compilation or the first hour of training.
"""

from __future__ import annotations

import math
import numbers

import ml_collections

from flaxformer_lite import data, families
from flaxformer_lite.config import ConfigError, required_field
from flaxformer_lite.data import DataError, DataOptions
from flaxformer_lite.pretrained import finetune
from flaxformer_lite.special_tokens import NUM_SPECIAL_TOKENS

__all__ = ["ConfigError", "check_config", "create_datasets", "resolve_config"]

SCHEDULES = ("rsqrt", "cosine")


def check_config(config: ml_collections.ConfigDict) -> None:
    """Raises `ConfigError` naming the first field of `config` whose value cannot work."""
    try:
        DataOptions.from_config(config)
    except DataError as error:
        raise ConfigError(str(error)) from None
    # The model family checks its own fields. The tokenizer decides the real
    # vocabulary size; any size that holds the special tokens checks the rest.
    families.make_family(config, vocab_size=NUM_SPECIAL_TOKENS + 1)
    _check_optimisation(config)
    _check_evaluation(config)


def resolve_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config` with the fields its sources decide: a Hugging Face checkpoint in
    config.init_from sets the architecture (pretrained/finetune.py); otherwise unchanged."""
    if finetune.starts_from_checkpoint(config):
        return finetune.with_checkpoint_architecture(config)
    return config


def create_datasets(
    config: ml_collections.ConfigDict, workdir: str, num_local_devices: int
) -> data.Datasets:
    """The data of `config`, tokenized by the checkpoint's tokenizer when it starts from one."""
    if finetune.starts_from_checkpoint(config):
        return finetune.create_datasets(config, workdir, num_local_devices)
    return data.create_datasets(config, workdir, num_local_devices)


def _check_optimisation(config: ml_collections.ConfigDict) -> None:
    _check_int(config, "num_train_steps", minimum=1)
    _check_int(config, "seed", minimum=0)
    schedule = required_field(config, "schedule")
    if schedule not in SCHEDULES:
        _fail("schedule", schedule, f"choose one of {SCHEDULES}")
    # The paper's schedule divides by the warm-up length; cosine may start at its peak.
    _check_int(config, "warmup_steps", minimum=1 if schedule == "rsqrt" else 0)
    _check_number(config, "learning_rate", low=0.0, low_inclusive=False)
    _check_number(config, "min_learning_rate", low=0.0)
    if config.min_learning_rate > config.learning_rate:  # the cosine would decay upwards
        _fail("min_learning_rate", config.min_learning_rate, "use at most config.learning_rate")
    _check_number(config, "adam_b1", low=0.0, high=1.0)
    _check_number(config, "adam_b2", low=0.0, high=1.0)
    _check_number(config, "adam_eps", low=0.0, low_inclusive=False)
    _check_number(config, "weight_decay", low=0.0)
    _check_number(config, "grad_clip_norm", low=0.0, low_inclusive=False)
    _check_number(config, "label_smoothing", low=0.0, high=1.0)


def _check_evaluation(config: ml_collections.ConfigDict) -> None:
    for name in ("log_every_steps", "eval_every_steps", "checkpoint_every_steps"):
        _check_int(config, name, minimum=1)
    _check_int(config, "keep_checkpoints", minimum=1)
    _check_int(config, "max_decode_length", minimum=1)
    _check_int(config, "beam_size", minimum=1)
    _check_number(config, "length_penalty_alpha", low=0.0)
    _check_int(config, "num_print_examples", minimum=0)
    for name in ("eval_bleu", "distributed"):
        if not isinstance(required_field(config, name), bool):
            _fail(name, config[name], "use True or False")


def _check_int(config: ml_collections.ConfigDict, name: str, *, minimum: int) -> None:
    value = required_field(config, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        _fail(name, value, f"use an integer >= {minimum}")


def _check_number(
    config: ml_collections.ConfigDict,
    name: str,
    *,
    low: float,
    high: float = math.inf,
    low_inclusive: bool = True,
) -> None:
    """A finite real number in [low, high), or (low, high) when not `low_inclusive`."""
    value = required_field(config, name)
    is_number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    above_low = is_number and (value >= low if low_inclusive else value > low)
    if not (is_number and math.isfinite(value) and above_low and value < high):
        bracket = "[" if low_inclusive else "("
        interval = f"{bracket}{low:g}, {high:g})" if math.isfinite(high) else None
        wanted = f"in {interval}" if interval else f"{'>=' if low_inclusive else '>'} {low:g}"
        _fail(name, value, f"use a finite number {wanted}")


def _fail(name: str, value, fix: str) -> None:
    raise ConfigError(f"config.{name}={value!r} cannot work: {fix}.")
