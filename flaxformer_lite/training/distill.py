"""Knowledge distillation (Hinton et al., 2015; DistilBERT) and starting from a trained run.

A student learns from a frozen teacher's temperature-softened class distribution and
from the hard labels:

    loss = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, label)

where t and s are the teacher's and the student's logits. T^2 keeps the soft term's
gradients on the scale of the hard term's as T grows (the soft gradients shrink as 1/T^2).

The teacher runs inside the same jitted train step: its parameters sit beside the
student's, under params["teacher"], and `freeze_teacher` gives them zero updates, so the
optimizer neither moves nor decays them (and the family reads them through
`stop_gradient`, so no gradient is even computed for them).

`load_encoder_params` reads the parameters of an encoder-only run's workdir, for
`config.init_from` (fine-tuning from masked-LM pre-training) and `config.teacher`.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import optax

from flaxformer_lite.config import ConfigError
from flaxformer_lite.training.checkpoint import restore_params

ENCODER_FAMILIES = ("encoder_only", "encoder_classifier")


def distillation_loss(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    hard_loss: jax.Array,
    *,
    temperature: float,
    alpha: float,
) -> jax.Array:
    """Per-example loss, mixing the soft and hard terms. (B, C), (B, C), (B,) -> (B,)."""
    teacher_log_probs = jax.nn.log_softmax(teacher_logits / temperature, axis=-1)
    student_log_probs = jax.nn.log_softmax(student_logits / temperature, axis=-1)
    kl = jnp.sum(jnp.exp(teacher_log_probs) * (teacher_log_probs - student_log_probs), axis=-1)
    return alpha * temperature**2 * kl + (1.0 - alpha) * hard_loss


def freeze_teacher(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """`tx` on params["student"]; zero updates (and no weight decay) on params["teacher"]."""
    return optax.multi_transform(
        {"student": tx, "teacher": optax.set_to_zero()},
        {"student": "student", "teacher": "teacher"},
    )


def read_run_config(workdir: str, option: str) -> ml_collections.ConfigDict:
    """The config of the encoder-only run in `workdir`; a ConfigError names `option` if none."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise ConfigError(
            f"config.{option}={workdir!r} holds no config.json: point it at the --workdir of "
            "an encoder_only or encoder_classifier run of train.py"
            + (", or a Hugging Face model directory." if option == "init_from" else ".")
        )
    with open(path) as file:
        config = ml_collections.ConfigDict(json.load(file))
    if "model_type" in config:  # init_from reads these before calling here
        raise ConfigError(
            f"config.{option}={workdir!r} is a Hugging Face checkpoint, not a trained run: "
            "fine-tune it first (--config.init_from), then use that run's workdir."
        )
    if config.get("model") not in ENCODER_FAMILIES:
        raise ConfigError(
            f"config.{option}={workdir!r} is a config.model={config.get('model')!r} run: it "
            f"needs one of {ENCODER_FAMILIES}."
        )
    return config


def load_encoder_params(workdir: str, option: str) -> dict:
    """The latest parameters of the encoder-only run in `workdir` (a distilled run's student)."""
    read_run_config(workdir, option)
    try:
        params = restore_params(workdir)
    except Exception as error:  # orbax raises many types; all mean "nothing usable here"
        raise ConfigError(
            f"config.{option}={workdir!r}: cannot read its checkpoint ({type(error).__name__}: "
            f"{str(error)[:200]}); train that run first."
        ) from None
    return params.get("student", params)


def merge_pretrained(
    fresh: dict, pretrained: dict, source: str
) -> tuple[dict, list[str], list[str]]:
    """Each top-level part of `fresh` whose tree and shapes `pretrained` has, taken from it.

    Returns the merged parameters, the names loaded and the names left freshly initialised
    (heads the pretrained run did not have). A part both have but with other shapes is a
    ConfigError: the runs disagree on the tokenizer or the model size.
    """
    merged, loaded, fresh_names = {}, [], []
    for name, part in fresh.items():
        if name not in pretrained:
            merged[name] = part
            fresh_names.append(name)
            continue
        shapes = jax.tree.map(jnp.shape, part)
        pretrained_shapes = jax.tree.map(jnp.shape, pretrained[name])
        if shapes != pretrained_shapes:
            raise ConfigError(
                f"{source}: parameters {name!r} have shapes {pretrained_shapes} there and "
                f"{shapes} here: start from a run with the same tokenizer and model sizes."
            )
        merged[name] = jax.tree.map(jnp.asarray, pretrained[name])
        loaded.append(name)
    return merged, loaded, fresh_names
