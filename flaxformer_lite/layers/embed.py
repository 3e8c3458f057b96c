"""Token embeddings, optionally scaled by sqrt(d_model), shareable with the output layer."""

import flax.linen as nn
import jax.numpy as jnp

from flaxformer_lite.config import TransformerConfig
from flaxformer_lite.layers import matmul, sharding


class TokenEmbedding(nn.Module):
    """Token id -> vector, and (tied output) vector -> logits over the vocabulary.

    The table is initialised with stddev d_model^-0.5 and, with
    `config.scale_embeddings`, multiplied by sqrt(d_model) on lookup
    (section 3.4), so embedded tokens have unit scale while tied output logits
    start near unit scale too. GPT-2, BERT, T5 and Llama look tokens up unscaled.
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
            embedding_init=sharding.partitioned(
                nn.initializers.normal(stddev=cfg.d_model**-0.5), "vocab", "embed"
            ),
            name="embedding",
        )

    def __call__(self, tokens: jnp.ndarray) -> jnp.ndarray:
        """tokens (B, L) int -> (B, L, D)."""
        embedded = self.table(tokens)
        if not self.config.scale_embeddings:
            return embedded
        return embedded * jnp.sqrt(self.config.d_model).astype(self.config.compute_dtype)

    def attend(self, hidden: jnp.ndarray) -> jnp.ndarray:
        """hidden (B, L, D) -> logits (B, L, V) against the same table."""
        table = self.table.embedding.astype(self.config.compute_dtype)  # (V, D)
        dot_general = matmul.dot_general_for(self.config)
        return dot_general(hidden, table.T, (((hidden.ndim - 1,), (0,)), ((), ())))
