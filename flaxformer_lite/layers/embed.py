"""Token embeddings scaled by sqrt(d_model), shareable with the output layer."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from flaxformer_lite.config import TransformerConfig


@jax.custom_vjp
def vocab_logits(hidden: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
    """hidden (..., D) @ kernel (D, V) -> logits (..., V): the output layer's matmul.

    The gradient is the plain matmul's, scheduled for XLA:CPU: the (..., V)
    logits gradient is materialised once, row-major, behind an optimization
    barrier. Left alone, XLA:CPU computes it a second time into a transposed
    buffer for the kernel-gradient matmul, a strided write that took 12% of a
    CPU train step at B*T x V = 2048 x 8000 (benchmarks/NOTES.md).
    """
    return hidden @ kernel


def _vocab_logits_forward(hidden, kernel):
    return hidden @ kernel, (hidden, kernel)


def _vocab_logits_backward(residuals, logits_grad):
    hidden, kernel = residuals
    logits_grad = jax.lax.optimization_barrier(logits_grad)  # (..., V)
    hidden_grad = logits_grad @ kernel.T  # (..., D)
    kernel_grad = jnp.einsum("...d,...v->dv", hidden, logits_grad)  # (D, V)
    return hidden_grad, kernel_grad


vocab_logits.defvjp(_vocab_logits_forward, _vocab_logits_backward)


class TokenEmbedding(nn.Module):
    """Token id -> vector, and (tied output) vector -> logits over the vocabulary.

    The table is initialised with stddev d_model^-0.5 and multiplied by
    sqrt(d_model) on lookup (section 3.4), so embedded tokens have unit scale
    while tied output logits start near unit scale too.
    """

    config: TransformerConfig
    vocab_size: int

    def setup(self):
        cfg = self.config
        self.table = nn.Embed(
            num_embeddings=self.vocab_size,
            features=cfg.d_model,
            dtype=cfg.compute_dtype,
            param_dtype=cfg.weights_dtype,
            embedding_init=nn.initializers.normal(stddev=cfg.d_model**-0.5),
            name="embedding",
        )

    def __call__(self, tokens: jnp.ndarray) -> jnp.ndarray:
        """tokens (B, L) int -> (B, L, D)."""
        return self.table(tokens) * jnp.sqrt(self.config.d_model).astype(self.config.compute_dtype)

    def attend(self, hidden: jnp.ndarray) -> jnp.ndarray:
        """hidden (B, L, D) -> logits (B, L, V) against the same table."""
        table = self.table.embedding.astype(self.config.compute_dtype)  # (V, D)
        return vocab_logits(hidden, table.T)


class OutputProjection(nn.Module):
    """An untied output layer: hidden (B, L, D) -> logits (B, L, V), no bias."""

    config: TransformerConfig
    vocab_size: int

    @nn.compact
    def __call__(self, hidden: jnp.ndarray) -> jnp.ndarray:
        cfg = self.config
        kernel = self.param(
            "kernel",
            nn.initializers.xavier_uniform(),
            (cfg.d_model, self.vocab_size),
            cfg.weights_dtype,
        )
        return vocab_logits(hidden, kernel.astype(cfg.compute_dtype))
