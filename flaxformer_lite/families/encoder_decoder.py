"""The encoder-decoder family: the Transformer of the paper, source -> target."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from flaxformer_lite import flops
from flaxformer_lite.config import TransformerConfig
from flaxformer_lite.decoding import decode_batch
from flaxformer_lite.families.base import Batch, ModelFamily, transformer_config_from
from flaxformer_lite.models.encoder_decoder import Transformer
from flaxformer_lite.training.losses import token_metrics


@dataclasses.dataclass(frozen=True)
class EncoderDecoder(ModelFamily):
    """Reads `inputs` and `targets` (B, L) with optional packing fields; predicts targets.

    Evaluation decodes the target from the source: greedy search, or beam
    search when beam_size > 1.
    """

    name = "encoder_decoder"
    model_config: TransformerConfig
    max_source_length: int
    max_target_length: int
    max_decode_length: int
    beam_size: int = 1
    length_penalty_alpha: float = 0.6

    @classmethod
    def from_config(cls, config, vocab_size: int) -> EncoderDecoder:
        return cls(
            model_config=transformer_config_from(config, vocab_size),
            max_source_length=config.max_source_length,
            max_target_length=config.max_target_length,
            max_decode_length=config.max_decode_length,
            beam_size=config.beam_size,
            length_penalty_alpha=config.length_penalty_alpha,
        )

    @property
    def module(self) -> Transformer:
        return Transformer(self.model_config)

    def example_batch(self) -> Batch:
        return {
            "inputs": jnp.ones((1, self.max_source_length), jnp.int32),
            "targets": jnp.ones((1, self.max_target_length), jnp.int32),
        }

    def model_inputs(self, batch: Batch) -> dict:
        names = ("inputs", "targets", "inputs_segmentation", "targets_segmentation")
        names += ("inputs_position", "targets_position")
        return {name: batch.get(name) for name in names}

    def metric_sums(self, outputs, batch: Batch, *, label_smoothing: float) -> dict:
        return token_metrics(outputs, batch["targets"], label_smoothing=label_smoothing)

    def predict(self, params, batch: Batch):
        """Generated target tokens (B, max_decode_length), EOS then PAD."""
        return decode_batch(
            self.module,
            params,
            batch["inputs"],
            max_decode_len=self.max_decode_length,
            beam_size=self.beam_size,
            alpha=self.length_penalty_alpha,
        )

    def sources(self, batch: Batch):
        return batch["inputs"]

    def train_step_flops(self, num_rows: int) -> int:
        return flops.train_step_flops(
            self.model_config, num_rows, self.max_source_length, self.max_target_length
        )
