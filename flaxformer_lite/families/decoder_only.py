"""The decoder-only family: a GPT, one causal stack that predicts the next token."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from flaxformer_lite import flops
from flaxformer_lite.config import TransformerConfig
from flaxformer_lite.decoding import generate
from flaxformer_lite.families.base import Batch, ModelFamily, transformer_config_from
from flaxformer_lite.models.decoder_only import DecoderOnlyTransformer
from flaxformer_lite.special_tokens import PAD_ID
from flaxformer_lite.training.losses import token_metrics


@dataclasses.dataclass(frozen=True)
class DecoderOnly(ModelFamily):
    """Reads `targets` (B, T), with optional packing fields and `loss_weights` (B, T).

    Position t predicts targets[t] from BOS and targets[:t]. The loss counts the
    tokens whose weight is 1: the completion of a `prompt SEP completion` row,
    or every token of plain text. Evaluation generates: the prompt is the
    zero-weight prefix of each row, and decoding (greedy, or beam search when
    beam_size > 1) writes the completion after it with the KV cache.
    """

    name = "decoder_only"
    model_config: TransformerConfig
    max_length: int
    max_decode_length: int
    beam_size: int = 1
    length_penalty_alpha: float = 0.6

    @classmethod
    def from_config(cls, config, vocab_size: int) -> DecoderOnly:
        return cls(
            model_config=transformer_config_from(config, vocab_size),
            max_length=config.max_target_length,
            max_decode_length=config.max_decode_length,
            beam_size=config.beam_size,
            length_penalty_alpha=config.length_penalty_alpha,
        )

    @property
    def module(self) -> DecoderOnlyTransformer:
        return DecoderOnlyTransformer(self.model_config)

    def example_batch(self) -> Batch:
        return {"targets": jnp.ones((1, self.max_length), jnp.int32)}

    def model_inputs(self, batch: Batch) -> dict:
        return {
            "targets": batch["targets"],
            "segmentation": batch.get("targets_segmentation"),
            "positions": batch.get("targets_position"),
        }

    def metric_sums(self, outputs, batch: Batch, *, label_smoothing: float) -> dict:
        return token_metrics(
            outputs,
            batch["targets"],
            label_smoothing=label_smoothing,
            weights=batch.get("loss_weights"),
        )

    def sources(self, batch: Batch):
        """The prompt of each row: the zero-weight prefix of `targets`, PAD after it."""
        return jnp.where(batch["loss_weights"] > 0, PAD_ID, batch["targets"])

    def predict(self, params, batch: Batch):
        """The generated completion (B, max_decode_length): EOS, then PAD.

        Decoding continues each row's prompt (greedy, or beam search when
        beam_size > 1) and the prompt is then cut off the front of the row.
        """
        prompt = self.sources(batch)  # (B, T), right-padded
        # A row's completion holds at least EOS, so its prompt fits in T - 1 positions.
        tokens = generate(
            self.module,
            params,
            prompt[:, : prompt.shape[1] - 1],
            max_decode_len=self.max_decode_length,
            beam_size=self.beam_size,
            alpha=self.length_penalty_alpha,
        )  # (B, N): prompt, completion, EOS, PAD
        return _drop_prompt(tokens, (prompt != PAD_ID).sum(axis=1))

    def train_step_flops(self, num_rows: int) -> int:
        forward = flops.decoder_only_forward_flops(self.model_config, num_rows, self.max_length)
        return 3 * forward


def _drop_prompt(tokens, prompt_lengths):
    """Shift every row left by its prompt length, PAD behind. (B, N), (B,) -> (B, N)."""
    width = tokens.shape[1]
    source_index = prompt_lengths[:, None] + jnp.arange(width)[None, :]  # (B, N)
    shifted = jnp.take_along_axis(tokens, jnp.minimum(source_index, width - 1), axis=1)
    return jnp.where(source_index < width, shifted, PAD_ID)
