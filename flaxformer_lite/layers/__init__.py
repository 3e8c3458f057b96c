"""Primitives: attention, masks, positional encodings, embeddings, MLP, matmul."""
