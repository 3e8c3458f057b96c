"""Checkpoint token ids <-> the ids our models and decoders use.

Our models and decoders fix three ids (`flaxformer_lite.special_tokens`): PAD=0 is
"no token" (masked out of attention, never generated), EOS=1 ends a generation and
BOS=2 starts a decoder. A checkpoint has its own: GPT-2's id 0 is "!", RoBERTa pads
with 1, T5 starts its decoder with its PAD. So a checkpoint's vocabulary moves up by
three places, and the first three rows are the checkpoint's own PAD, EOS and start
rows (zeros where it has none):

    our id 0  = checkpoint PAD (its row, or zeros)    our id 1 = checkpoint EOS
    our id 2  = checkpoint decoder start / BOS        our id h + 3 = checkpoint id h

Token ids going in map the checkpoint's PAD to 0 and EOS to 1, everything else to h + 3,
so the model sees exactly the checkpoint's embeddings. Logits coming out hold the
checkpoint's logits at [3:]; the EOS row at 1 repeats the logit of the checkpoint's EOS,
so greedy search stops exactly where the checkpoint's would.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from flaxformer_lite.pretrained.weights import PretrainedError
from flaxformer_lite.special_tokens import BOS_ID, EOS_ID, PAD_ID

OFFSET = 3  # Our PAD, EOS and BOS rows come before the checkpoint's rows.


@dataclasses.dataclass(frozen=True)
class CheckpointVocabulary:
    """How a checkpoint's `size` token ids sit in our id space."""

    size: int  # rows of the checkpoint's embedding table
    pad_id: int | None  # the checkpoint's ids for these roles, None where it has none
    eos_id: int | None
    start_id: int | None  # the first decoder input: T5's decoder start, GPT-2/Llama's BOS

    @classmethod
    def from_config(cls, hf_config: dict, size: int) -> CheckpointVocabulary:
        """The roles config.json gives (a list of EOS ids counts by its first; a PAD equal
        to EOS counts as none)."""

        def first(value):
            return value[0] if isinstance(value, list) and value else value

        start = hf_config.get("decoder_start_token_id")
        pad, eos = first(hf_config.get("pad_token_id")), first(hf_config.get("eos_token_id"))
        for name in ("pad_token_id", "eos_token_id", "bos_token_id", "decoder_start_token_id"):
            value = first(hf_config.get(name))
            if value is not None and not 0 <= value < size:
                raise PretrainedError(
                    f"config.json: {name}={value} is not an id of the checkpoint's "
                    f"{size}-token vocabulary: set it to the id the tokenizer gives that "
                    "token (or null)."
                )
        return cls(
            size=size,
            # Padding with EOS (a common setting for LMs without a PAD) is padding of
            # ours; an EOS in the text must stay a token the model sees.
            pad_id=None if pad == eos else pad,
            eos_id=eos,
            start_id=first(hf_config.get("bos_token_id")) if start is None else start,
        )

    @property
    def model_vocab_size(self) -> int:
        return self.size + OFFSET

    def to_model_ids(self, checkpoint_ids) -> np.ndarray:
        """Checkpoint ids (any shape) -> our ids."""
        ids = np.asarray(checkpoint_ids, np.int64)
        ours = ids + OFFSET
        if self.eos_id is not None:
            ours = np.where(ids == self.eos_id, EOS_ID, ours)
        if self.pad_id is not None:
            ours = np.where(ids == self.pad_id, PAD_ID, ours)
        return ours.astype(np.int32)

    def to_checkpoint_ids(self, model_ids) -> np.ndarray:
        """Our ids -> checkpoint ids; PAD becomes the checkpoint's PAD (or -1 without one)."""
        ids = np.asarray(model_ids, np.int64)
        roles = {PAD_ID: self.pad_id, EOS_ID: self.eos_id, BOS_ID: self.start_id}
        checkpoint = ids - OFFSET
        for ours, theirs in roles.items():
            checkpoint = np.where(ids == ours, -1 if theirs is None else theirs, checkpoint)
        return checkpoint

    def rows(self, table: np.ndarray) -> np.ndarray:
        """A checkpoint table (size, ...) -> ours (size + 3, ...): PAD, EOS, start rows first."""
        if table.shape[0] != self.size:
            raise ValueError(f"table has {table.shape[0]} rows, the vocabulary {self.size}")
        roles = (self.pad_id, self.eos_id, self.start_id)
        special = [table[i] if i is not None else np.zeros_like(table[0]) for i in roles]
        return np.concatenate([np.stack(special), table], axis=0)

    def checkpoint_logits(self, logits):
        """Our logits (..., size + 3) -> the checkpoint's (..., size)."""
        return logits[..., OFFSET:]
