"""The one seam between a model family and the trainer.

The trainer, the pure steps and the evaluation loop know nothing of any
particular model. Everything they need comes through a `ModelFamily`:

    module             the Flax network, built from `flaxformer_lite.layers`
    example_batch()    one row of every field the module reads (shapes for `init`)
    model_inputs(b)    batch fields -> the module's keyword arguments, by name
    metric_sums(o, b)  module outputs -> the loss and metric sums of the batch
    predict(p, b)      what evaluation scores: generated tokens, or labels

Metric sums are added over devices and steps before anything is divided (see
`training.metrics.summarize`), so every family reports the same keys:
`loss_sum` and `loss_weight` (the loss is their ratio, the global mean over
every counted token or example), `nll_sum`, `correct_sum`, and optionally
`exact_sum` over `sequence_count`.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, ClassVar

import flax.linen as nn
import jax
import numpy as np
import optax

from flaxformer_lite.config import ConfigError, TransformerConfig, required_field

Batch = dict[str, Any]  # Named arrays: "inputs", "targets", "loss_weights", "image", ...

# TransformerConfig fields that the data decide, not the experiment config.
DATA_DECIDED_MODEL_FIELDS = ("vocab_size", "target_vocab_size", "max_len")


def transformer_config_from(config, vocab_size: int) -> TransformerConfig:
    """The Transformer a flat experiment config describes, for a `vocab_size` tokenizer.

    Every model field comes from the experiment config. `max_len` covers the longest
    sequence the model will see: a source, a training target, or a generated output of
    `max_decode_length` tokens (decoding builds its cache at that length).
    """
    values = {}
    for field in dataclasses.fields(TransformerConfig):
        if field.name not in DATA_DECIDED_MODEL_FIELDS:
            values[field.name] = required_field(config, field.name)
    max_len = max(
        required_field(config, "max_source_length"),
        required_field(config, "max_target_length"),
        required_field(config, "max_decode_length"),
    )
    try:
        return TransformerConfig(vocab_size=vocab_size, max_len=max_len, **values)
    except (TypeError, ValueError) as error:
        # TransformerConfig names its own field; the user sets it as config.<field>.
        raise ConfigError(str(error).replace("TransformerConfig.", "config.", 1)) from None


class ModelFamily(abc.ABC):
    """What one family of models tells the trainer. Subclasses set `name` and `module`."""

    name: ClassVar[str]
    module: nn.Module
    # Evaluation decodes text with `predict` and scores it against the references (exact
    # match, BLEU). A classifier sets False: its accuracy is `correct_sum` of metric_sums.
    generates_text: ClassVar[bool] = True

    @classmethod
    @abc.abstractmethod
    def from_config(cls, config, vocab_size: int) -> ModelFamily:
        """The family a flat experiment config describes, for a `vocab_size` tokenizer."""

    @abc.abstractmethod
    def example_batch(self) -> Batch:
        """One row of every field `model_inputs` reads, with the training shapes."""

    @abc.abstractmethod
    def model_inputs(self, batch: Batch) -> dict[str, Any]:
        """The module's keyword arguments, taken from the batch by name."""

    @abc.abstractmethod
    def metric_sums(
        self, outputs: jax.Array, batch: Batch, *, label_smoothing: float
    ) -> dict[str, jax.Array]:
        """Loss and metric sums of one batch (see the module docstring for the keys)."""

    @abc.abstractmethod
    def predict(self, params, batch: Batch) -> jax.Array:
        """What evaluation scores, computed without dropout; runs under `jit`/`pmap`.

        Sequence families return the generated target tokens (B, L): EOS, then PAD.
        """

    @abc.abstractmethod
    def sources(self, batch: Batch) -> jax.Array:
        """The tokens each example is conditioned on (B, S), for printing examples."""

    @abc.abstractmethod
    def train_step_flops(self, num_rows: int) -> int:
        """Model FLOPs of one training step on `num_rows` rows (see `flaxformer_lite.flops`)."""

    def eval_metrics(self, sums: list[Batch]) -> dict[str, float]:
        """Metrics of this family beyond the shared ones (e.g. macro-F1), from the metric sums
        of every evaluation step; the trainer reports each as eval_<name>."""
        return {}

    def optimizer(self, tx: optax.GradientTransformation) -> optax.GradientTransformation:
        """The optimizer this family trains with: `tx`, or `tx` kept off frozen parameters."""
        return tx

    def init_params(self, rng: jax.Array):
        """Parameters from shapes alone: `module.init` on `example_batch`, compiled.

        Plain arrays: the logical axis names of `layers.sharding` are unboxed away.
        """
        inputs = self.model_inputs(jax.tree.map(np.asarray, self.example_batch()))
        return nn.meta.unbox(jax.jit(self.module.init)(rng, **inputs)["params"])

    def apply(self, params, batch: Batch, *, deterministic: bool = True, rngs=None, **kwargs):
        """The module on a batch: outputs such as logits (B, T, V)."""
        return self.module.apply(
            {"params": params},
            **self.model_inputs(batch),
            deterministic=deterministic,
            rngs=rngs,
            **kwargs,
        )
