"""Input helpers shared by the model families: teacher forcing and id checks."""

import jax
import jax.numpy as jnp
import numpy as np

from flaxformer_lite.special_tokens import BOS_ID, PAD_ID


def shift_right(targets: jnp.ndarray, positions: jnp.ndarray | None = None) -> jnp.ndarray:
    """Teacher forcing: the decoder sees BOS, y_0, ..., y_{n-2} and predicts y_0..y_{n-1}.

    targets (B, T) -> (B, T). With packed rows, `positions` (B, T) restart at 0
    in every example, and each example's first input is BOS rather than the
    last token of the example before it. PAD stays PAD.
    """
    shifted = jnp.pad(targets, ((0, 0), (1, 0)), constant_values=BOS_ID)[:, :-1]
    if positions is not None:
        shifted = jnp.where(positions == 0, BOS_ID, shifted)
    return jnp.where(targets == PAD_ID, PAD_ID, shifted)


def check_tokens(tokens, vocab_size: int, max_len: int, name: str, *, packed: bool = False) -> None:
    """Raise a clear ValueError for over-long sequences, ids outside [0, vocab_size),
    or (unless `packed`) a row that is not right-padded.

    The length check works on shapes, so it runs under `jit` too. The other
    checks need concrete values: under `jit` they are skipped, and JAX's gather
    clamps an out-of-range id to the last table row without complaint.
    Unpacked rows must be right-padded because attention then describes their
    padding by lengths (see `AttentionMask`).
    """
    if tokens.ndim != 2:
        raise ValueError(f"{name} must be (batch, length) token ids; got shape {tokens.shape}.")
    if tokens.shape[1] > max_len:
        raise ValueError(
            f"{name} has length {tokens.shape[1]} > max_len={max_len}: truncate the sequences "
            "or build the model with a larger TransformerConfig.max_len."
        )
    if isinstance(tokens, jax.core.Tracer):
        return
    values = np.asarray(tokens)
    if values.size and (values.min() < 0 or values.max() >= vocab_size):
        raise ValueError(
            f"{name} holds token ids in [{values.min()}, {values.max()}] but the vocabulary "
            f"is [0, {vocab_size}): check the tokenizer, or raise vocab_size to match it."
        )
    real = values != PAD_ID
    real_after_pad = real[:, 1:] & ~real[:, :-1]  # (B, L - 1)
    if not packed and real_after_pad.any():
        row = int(np.flatnonzero(real_after_pad.any(axis=1))[0])
        raise ValueError(
            f"{name} row {row} has a token after PAD: pad rows on the right, or pass "
            "*_segmentation for packed rows."
        )
