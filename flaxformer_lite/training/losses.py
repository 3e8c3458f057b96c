"""Label-smoothed cross-entropy from integer labels, and token-weighted metrics."""

import jax
import jax.numpy as jnp

from flaxformer_lite.special_tokens import PAD_ID


def smoothed_cross_entropy(
    logits: jnp.ndarray, labels: jnp.ndarray, label_smoothing: float = 0.0
) -> jnp.ndarray:
    """Per-token cross-entropy against a label-smoothed target. (B, T, V), (B, T) -> (B, T).

    The target puts `1 - label_smoothing` on the label and spreads the rest
    evenly over the other V - 1 tokens. Its entropy is subtracted, so a model
    that predicts exactly that target scores 0. No (B, T, V) one-hot or
    log-probability array is built: with log p_v = z_v - logsumexp(z),
    -sum_v q_v log p_v = logsumexp(z) - (on - off) z_label - off * sum_v z_v.
    """
    vocab_size = logits.shape[-1]
    on_value = 1.0 - label_smoothing
    off_value = label_smoothing / (vocab_size - 1)
    logits = logits.astype(jnp.float32)
    loss = jax.nn.logsumexp(logits, axis=-1) - (on_value - off_value) * _label_logit(logits, labels)
    if off_value > 0.0:
        loss -= off_value * logits.sum(axis=-1)
    return loss - _entropy(on_value, off_value, vocab_size)


def _label_logit(logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
    """The logit of each label. (B, T, V), (B, T) -> (B, T)."""
    return jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]


def _is_argmax(logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
    """labels == logits.argmax(-1), ties going to the first index. -> (B, T) bool.

    No logit may beat the label's, and none before it may equal it. One
    elementwise pass and an `any` over V: ~7x faster on CPU than argmax's
    (value, index) reduction (benchmarks/NOTES.md). A NaN anywhere in the row
    counts as a miss, as it would for argmax (NaN compares false to everything).
    """
    label_logit = _label_logit(logits, labels)[..., None]  # (B, T, 1)
    before_label = jnp.arange(logits.shape[-1]) < labels[..., None]  # (B, T, V)
    beaten = (logits > label_logit) | ((logits == label_logit) & before_label) | jnp.isnan(logits)
    return ~beaten.any(axis=-1)


def _entropy(on_value: float, off_value: float, vocab_size: int) -> float:
    """Entropy of the smoothed target: the lowest loss any model can reach."""
    entropy = -on_value * jnp.log(on_value)
    if off_value > 0.0:
        entropy -= (vocab_size - 1) * off_value * jnp.log(off_value)
    return entropy


def token_metrics(
    logits: jnp.ndarray,
    labels: jnp.ndarray,
    label_smoothing: float = 0.0,
    weights: jnp.ndarray | None = None,
) -> dict[str, jnp.ndarray]:
    """Sums over the counted tokens, to be added across devices before dividing.

    `weights` (B, T) says which tokens count (1.0) and which do not (0.0); by
    default every real (non-PAD) label counts. A prompt -> completion language
    model passes 0 on the prompt, so only the completion is learned and scored.
    Returns loss_sum (the training objective, smoothed), nll_sum (unsmoothed
    cross-entropy, for perplexity), correct_sum, token_count (the summed
    weights), and per-example sequence counts: sequence_count and exact_sum
    (every counted token right).
    """
    real = (labels != PAD_ID).astype(jnp.float32)  # (B, T)
    weights = real if weights is None else weights.astype(jnp.float32) * real
    loss = smoothed_cross_entropy(logits, labels, label_smoothing)
    nll = smoothed_cross_entropy(logits, labels, 0.0)
    correct = _is_argmax(logits, labels).astype(jnp.float32) * weights
    has_tokens = weights.sum(axis=-1) > 0  # (B,) padding rows are not examples
    all_correct = (correct.sum(axis=-1) == weights.sum(axis=-1)) & has_tokens
    return {
        "loss_sum": (loss * weights).sum(),
        "nll_sum": (nll * weights).sum(),
        "correct_sum": correct.sum(),
        "token_count": weights.sum(),
        "exact_sum": all_correct.astype(jnp.float32).sum(),
        "sequence_count": has_tokens.astype(jnp.float32).sum(),
    }
