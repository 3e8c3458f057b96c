"""The experiment config: one flat `ConfigDict` (configs/default.py), checked before any work.

`configs/default.py` is the one source of experiment defaults. Its fields feed three readers:
the data pipeline (`DataOptions`), the model (`TransformerConfig`, built here by
`model_config_from`) and the training loop. `check_config` asks each of them about the whole
config up front, so a value that cannot work stops the run at once with one line, not after
data preparation, compilation or the first hour of training.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

import ml_collections

from flaxformer_lite.config import TransformerConfig
from flaxformer_lite.data import DataError, DataOptions

# TransformerConfig fields that the data decide, not the experiment config.
DATA_DECIDED_MODEL_FIELDS = ("vocab_size", "target_vocab_size", "max_len")
SCHEDULES = ("rsqrt", "cosine")


class ConfigError(ValueError):
    """An experiment config value that cannot work; the one-line message names field and fix."""


def model_config_from(config: ml_collections.ConfigDict, vocab_size: int) -> TransformerConfig:
    """The model an experiment config describes, for a tokenizer of `vocab_size` ids.

    Every model field comes from the experiment config. `max_len` covers the longest
    sequence the model will see: a source, a training target, or a generated output of
    `max_decode_length` tokens (decoding builds its cache at that length).
    """
    values = {}
    for field in dataclasses.fields(TransformerConfig):
        if field.name not in DATA_DECIDED_MODEL_FIELDS:
            values[field.name] = _required(config, field.name)
    max_len = max(
        _required(config, "max_source_length"),
        _required(config, "max_target_length"),
        _required(config, "max_decode_length"),
    )
    try:
        return TransformerConfig(vocab_size=vocab_size, max_len=max_len, **values)
    except (TypeError, ValueError) as error:
        # TransformerConfig names its own field; the user sets it as config.<field>.
        raise ConfigError(str(error).replace("TransformerConfig.", "config.", 1)) from None


def check_config(config: ml_collections.ConfigDict) -> None:
    """Raises `ConfigError` naming the first field of `config` whose value cannot work."""
    try:
        DataOptions.from_config(config)
    except DataError as error:
        raise ConfigError(str(error)) from None
    # The tokenizer decides the real vocabulary size; any positive size checks the rest.
    model_config_from(config, vocab_size=1)
    _check_optimisation(config)
    _check_evaluation(config)


def _check_optimisation(config: ml_collections.ConfigDict) -> None:
    _check_int(config, "num_train_steps", minimum=1)
    _check_int(config, "seed", minimum=0)
    schedule = _required(config, "schedule")
    if schedule not in SCHEDULES:
        _fail("schedule", schedule, f"choose one of {SCHEDULES}")
    # The paper's schedule divides by the warm-up length; cosine may start at its peak.
    _check_int(config, "warmup_steps", minimum=1 if schedule == "rsqrt" else 0)
    _check_number(config, "learning_rate", low=0.0, low_inclusive=False)
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
        if not isinstance(_required(config, name), bool):
            _fail(name, config[name], "use True or False")


def _required(config: ml_collections.ConfigDict, name: str):
    if name not in config:
        raise ConfigError(
            f"config has no field {name!r}: build the config from configs/default.py "
            "(`default.get_config()`), which sets every field."
        )
    return config[name]


def _check_int(config: ml_collections.ConfigDict, name: str, *, minimum: int) -> None:
    value = _required(config, name)
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
    value = _required(config, name)
    is_number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    above_low = is_number and (value >= low if low_inclusive else value > low)
    if not (is_number and math.isfinite(value) and above_low and value < high):
        bracket = "[" if low_inclusive else "("
        interval = f"{bracket}{low:g}, {high:g})" if math.isfinite(high) else None
        wanted = f"in {interval}" if interval else f"{'>=' if low_inclusive else '>'} {low:g}"
        _fail(name, value, f"use a finite number {wanted}")


def _fail(name: str, value, fix: str) -> None:
    raise ConfigError(f"config.{name}={value!r} cannot work: {fix}.")
