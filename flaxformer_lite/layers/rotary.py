"""Rotary position embeddings (RoPE; Su et al., 2021), in the "rotate half" layout.

Each head's features are split into a first and a second half; feature i of the
first half and feature i of the second half form a pair, rotated by the angle
position * theta^(-2i / Dh). Queries and keys are rotated by their own
positions, so q_m . k_n depends on m - n alone. The layout is Hugging Face
Llama's (`rotate_half`), so its checkpoints load without permuting any kernel.
"""

import jax.numpy as jnp


def rotary_angles(positions: jnp.ndarray, head_dim: int, theta: float) -> jnp.ndarray:
    """positions (B, L) -> angles (B, L, Dh / 2): position * theta^(-2i / Dh), float32."""
    exponents = jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim  # (Dh / 2,)
    inverse_frequencies = 1.0 / theta**exponents
    return positions.astype(jnp.float32)[..., None] * inverse_frequencies


def apply_rotary(x: jnp.ndarray, positions: jnp.ndarray, theta: float) -> jnp.ndarray:
    """x (B, L, H, Dh) rotated at positions (B, L) -> (B, L, H, Dh), in x's dtype."""
    half = x.shape[-1] // 2
    angles = rotary_angles(positions, x.shape[-1], theta)[:, :, None, :]  # (B, L, 1, Dh / 2)
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    first, second = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
    rotated = jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)
    return rotated.astype(x.dtype)
