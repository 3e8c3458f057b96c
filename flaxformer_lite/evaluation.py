"""Scoring decoded outputs: exact match and token accuracy on token ids; on text, exact match
and corpus BLEU.

Token arrays are (B, L) ids, such as `decoding.decode_batch` returns and the
pipeline's padded targets: a row ends at its first EOS (which counts as a
token), and PAD after it is ignored. Predictions and targets may differ in L.
"""

import numpy as np
from sacrebleu.metrics import BLEU

from flaxformer_lite.special_tokens import EOS_ID, PAD_ID


def _up_to_eos(tokens, length: int) -> np.ndarray:
    """(B, L') -> (B, length): PAD after each row's first EOS, PAD-extended or cut to length."""
    tokens = np.asarray(tokens)
    is_eos = tokens == EOS_ID
    after_eos = (np.cumsum(is_eos, axis=1) - is_eos) > 0
    tokens = np.where(after_eos, PAD_ID, tokens)[:, :length]
    return np.pad(tokens, ((0, 0), (0, length - tokens.shape[1])), constant_values=PAD_ID)


def exact_match(predicted_tokens, target_tokens) -> float:
    """The fraction of rows whose prediction equals the target up to and including EOS."""
    length = max(np.shape(predicted_tokens)[1], np.shape(target_tokens)[1])
    predicted = _up_to_eos(predicted_tokens, length)
    targets = _up_to_eos(target_tokens, length)
    return float(np.mean(np.all(predicted == targets, axis=1)))


def token_accuracy(predicted_tokens, target_tokens) -> float:
    """The fraction of target tokens (EOS included, PAD not) predicted at their position."""
    length = max(np.shape(predicted_tokens)[1], np.shape(target_tokens)[1])
    predicted = _up_to_eos(predicted_tokens, length)
    targets = _up_to_eos(target_tokens, length)
    counted = targets != PAD_ID
    return float(np.sum((predicted == targets) & counted) / max(np.sum(counted), 1))


def exact_text_match(hypotheses: list[str], references: list[str]) -> float:
    """The fraction of decoded hypotheses identical to their reference text."""
    if len(hypotheses) != len(references):
        raise ValueError(
            f"exact_text_match got {len(hypotheses)} hypotheses but {len(references)} references."
        )
    pairs = zip(hypotheses, references, strict=True)
    matches = [hypothesis == reference for hypothesis, reference in pairs]
    return float(np.mean(matches)) if matches else 0.0


def corpus_bleu(hypotheses: list[str], references: list[str]) -> tuple[float, str]:
    """Corpus BLEU (0-100) of detokenised text against one reference per sentence.

    Uses sacrebleu's defaults (13a tokenisation, exponential smoothing). Returns
    the score and sacrebleu's signature, which belongs next to any reported BLEU.
    """
    if len(hypotheses) != len(references):
        raise ValueError(
            f"corpus_bleu got {len(hypotheses)} hypotheses but {len(references)} references."
        )
    bleu = BLEU()
    score = bleu.corpus_score(hypotheses, [references]).score
    return score, str(bleu.get_signature())
