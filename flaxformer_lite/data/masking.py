"""Masked-LM rows: BERT's masking, drawn afresh every time a row is read (dynamic masking).

Of a row's real text tokens (not PAD, CLS, SEP or another special id), round(15%) are
chosen, at least one and at most `max_predictions` (BERT's `create_pretraining_data`).
Of the chosen tokens 80% become MASK, 10% a uniformly random ordinary token, 10% stay as
they were; the model must predict the original token at every chosen position, whatever
happened to it. The chosen positions and their original ids come in fixed-size arrays, so
the model computes its 30k-way output layer at those P positions only, not at all S:

    inputs               (S,)  the row with the chosen tokens replaced
    mlm_positions        (P,)  the chosen positions, then 0
    mlm_ids              (P,)  the original tokens there, then PAD
    mlm_weights          (P,)  1.0 for a chosen position, 0.0 after

`MaskTokens` is a grain `RandomMapTransform`. In the training pipeline grain seeds its
generator from the pipeline seed and the number of rows read so far, so each epoch draws
new masks (RoBERTa's dynamic masking), and a run resumed from a checkpoint (which saves
the iterator's position) draws the same masks an uninterrupted run would. Evaluation rows
are masked by their index with a fixed seed: the same masks at every evaluation.
"""

from __future__ import annotations

import math

import grain
import numpy as np

from flaxformer_lite.special_tokens import MASK_ID, NUM_SPECIAL_TOKENS

MASK_FRACTION = 0.8  # of the chosen tokens, replaced by MASK
RANDOM_FRACTION = 0.1  # replaced by a random ordinary token; the other 10% are kept
EVAL_MASK_SEED = 20181011  # any fixed number: evaluation masks never change between evaluations


def max_predictions(probability: float, length: int, configured: int | None) -> int:
    """P, the predictions a row holds: `configured`, or enough for `probability` of `length`."""
    return configured if configured is not None else math.ceil(probability * length)


def mask_tokens(
    tokens: np.ndarray,
    rng: np.random.Generator,
    *,
    probability: float,
    max_predictions: int,
    vocab_size: int,
) -> dict[str, np.ndarray]:
    """BERT's masking of one row of token ids. (S,) -> the four arrays of the module docstring."""
    candidates = np.flatnonzero(tokens >= NUM_SPECIAL_TOKENS)  # real text tokens
    count = min(max_predictions, max(1, round(len(candidates) * probability)))
    count = min(count, len(candidates))  # an empty (padding) row has nothing to predict
    chosen = np.sort(rng.choice(candidates, size=count, replace=False))  # (count,)
    fate = rng.random(count)  # < 0.8: MASK; < 0.9: a random token; else kept
    replacements = np.where(
        fate < MASK_FRACTION,
        MASK_ID,
        np.where(
            fate < MASK_FRACTION + RANDOM_FRACTION,
            rng.integers(NUM_SPECIAL_TOKENS, vocab_size, size=count),
            tokens[chosen],
        ),
    )
    masked = tokens.copy()
    masked[chosen] = replacements
    positions = np.zeros(max_predictions, np.int32)
    positions[:count] = chosen
    ids = np.zeros(max_predictions, np.int32)
    ids[:count] = tokens[chosen]
    weights = np.zeros(max_predictions, np.float32)
    weights[:count] = 1.0
    return {"mlm_positions": positions, "mlm_ids": ids, "mlm_weights": weights, "inputs": masked}


class MaskTokens(grain.transforms.RandomMap):
    """A padded or packed row -> the same row with BERT's masks and the prediction arrays."""

    def __init__(self, *, probability: float, max_predictions: int, vocab_size: int):
        self._probability = probability
        self._max_predictions = max_predictions
        self._vocab_size = vocab_size

    def random_map(self, row: dict[str, np.ndarray], rng: np.random.Generator):
        masked = mask_tokens(
            row["inputs"],
            rng,
            probability=self._probability,
            max_predictions=self._max_predictions,
            vocab_size=self._vocab_size,
        )
        return {**row, **masked}
