"""`TransformerConfig`: every hyper-parameter of the model, validated once.

Also the two helpers every reader of a flat experiment config shares:
`ConfigError`, and `required_field`, which names the field a config lacks.
"""

import dataclasses
from typing import Any

import jax.numpy as jnp

NORM_PLACEMENTS = ("pre", "post")
NORMS = ("layernorm", "rmsnorm")
MLPS = ("relu", "gelu", "gelu_tanh", "swiglu", "geglu")
POSITION_ENCODINGS = ("sinusoidal", "learned", "rope", "t5_relative", "alibi", "none")
ABSOLUTE_POSITION_ENCODINGS = ("sinusoidal", "learned")  # added to the token embeddings
DTYPES = ("float32", "bfloat16", "float16")
REMAT_POLICIES = ("none", "full", "dots_saveable")
ATTENTION_IMPLEMENTATIONS = ("auto", "xla", "cudnn", "explicit")
MATMUL_BACKWARDS = ("autodiff", "cpu_row_major")


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Hyper-parameters of the encoder-decoder Transformer.

    The defaults are the paper's base model (Vaswani et al., 2017, table 3)
    except for `norm_placement`: pre-LN trains without the careful warm-up
    post-LN needs, so it is the default; `"post"` gives the paper's layout.
    """

    vocab_size: int = 37000  # Shared source/target vocabulary (the paper's BPE size).
    target_vocab_size: int | None = None  # Set only for separate target vocabularies.
    d_model: int = 512
    num_heads: int = 8
    # Key/value heads: None for one per query head (multi-head attention); fewer for
    # grouped-query attention (each serves num_heads // num_kv_heads query heads, as in
    # Llama 2/3), 1 for multi-query attention. The decode cache holds only these heads.
    num_kv_heads: int | None = None
    head_dim: int | None = None  # Features per head; None for d_model // num_heads (T5 sets it).
    d_ff: int = 2048
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    dropout_rate: float = 0.1  # Embeddings, residual branches and FFN hidden layer.
    attention_dropout_rate: float = 0.0  # On the attention weights.
    max_len: int = 256  # Longest source or target sequence the model accepts.
    dtype: str = "float32"  # Activation dtype; softmax, norms and loss stay float32.
    param_dtype: str = "float32"
    norm_placement: str = "pre"  # "pre": x + f(norm(x)); "post": norm(x + f(x)) as in the paper.
    # "layernorm" (mean and variance, scale and bias; the paper, GPT-2, BERT) or "rmsnorm"
    # (x / sqrt(mean(x^2) + eps) * scale: no mean subtraction, no bias; T5, Llama).
    norm: str = "layernorm"
    norm_epsilon: float = 1e-6  # Flax's LayerNorm default; GPT-2 and BERT use 1e-5 and 1e-12.
    # The feed-forward block: W2 act(W1 x) with act "relu" (the paper, T5 v1.0), "gelu"
    # (exact, erf: BERT) or "gelu_tanh" (tanh approximation: GPT-2); or gated,
    # W2 (act(W_gate x) * W_up x), with act SiLU ("swiglu": Llama) or tanh-GELU ("geglu":
    # T5 v1.1 / flan-T5 gated-gelu, Gemma).
    mlp: str = "relu"
    use_bias: bool = (
        True  # Biases in the attention and feed-forward projections (T5, Llama: False).
    )
    scale_embeddings: bool = True  # Token embeddings times sqrt(d_model) (section 3.4); GPT-2,
    # BERT, T5 and Llama look them up unscaled.
    # Where the model learns token order: added to the embeddings ("sinusoidal": the paper;
    # "learned": GPT-2, BERT), rotating queries and keys ("rope": Llama, rotate-half layout),
    # or biasing attention logits by the offset key - query ("t5_relative": T5's learned
    # log-spaced buckets, one table per stack; "alibi": fixed per-head linear penalties);
    # "none" leaves only causal masking to tell positions apart.
    position_encoding: str = "sinusoidal"
    rope_theta: float = 10000.0  # RoPE base: angle of feature pair i is pos * theta^(-2i/Dh).
    relative_num_buckets: int = 32  # T5 buckets (per direction: half in the encoder).
    relative_max_distance: int = 128  # T5: offsets beyond it share the last bucket.
    # Divide the logits Q.K by sqrt(Dh) (the paper). T5 does not: its initialisation
    # folds the factor into the query kernel.
    scale_attention_logits: bool = True
    # Multiply the decoder's last hidden state by d_model^-0.5 before the output layer
    # (T5 v1.0 with its tied head; Hugging Face's `scale_decoder_outputs`).
    scale_decoder_output: bool = False
    tie_output_embedding: bool = True  # Output projection reuses the target embedding.
    local_window: int | None = None  # Self-attention sees only positions within +-window.
    # What computes softmax(Q K^T) V: "explicit" einsums (the only path with attention dropout
    # and sown weights); jax.nn.dot_product_attention's "xla" or "cudnn" kernel; "auto" picks
    # cudnn on a GPU when dtype and shapes allow, else xla (explicit when weights or attention
    # dropout are needed).
    attention_implementation: str = "auto"
    # How dense layers' matmuls are differentiated: "autodiff" (lax.dot_general, every JAX
    # transformation works) or "cpu_row_major" (a custom VJP faster on XLA:CPU, reverse mode
    # only: jax.jvp fails through it; see benchmarks/NOTES.md).
    matmul_backward: str = "autodiff"
    scan_layers: bool = False  # nn.scan over identical layers: compile time flat in depth.
    remat_policy: str = "none"  # Rematerialise layer activations in the backward pass.

    def __post_init__(self):
        def fail(field: str, value: Any, allowed: str):
            raise ValueError(f"TransformerConfig.{field}={value!r} is invalid: {allowed}.")

        for field in ("vocab_size", "d_model", "num_heads", "d_ff", "max_len"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 1:
                fail(field, value, "it must be a positive integer")
        for field in ("num_kv_heads", "head_dim"):
            value = getattr(self, field)
            if value is not None and (not isinstance(value, int) or value < 1):
                fail(field, value, "use None or a positive integer")
        if self.num_kv_heads is not None and self.num_heads % self.num_kv_heads:
            fail(
                "num_kv_heads",
                self.num_kv_heads,
                f"num_heads={self.num_heads} must be a multiple of it, so that every key/value "
                "head serves the same number of query heads",
            )
        if self.position_encoding == "rope" and self.features_per_head % 2:
            fail(
                "position_encoding",
                "rope",
                f"RoPE rotates feature pairs, so head_dim={self.features_per_head} must be even",
            )
        if self.rope_theta <= 1.0:
            fail("rope_theta", self.rope_theta, "the RoPE base must exceed 1 (Llama: 10000)")
        if self.relative_num_buckets < 4 or self.relative_max_distance < self.relative_num_buckets:
            fail(
                "relative_num_buckets",
                self.relative_num_buckets,
                f"use at least 4 buckets and relative_max_distance={self.relative_max_distance} "
                "at least as large (T5: 32 and 128)",
            )
        if not self.norm_epsilon > 0:
            fail("norm_epsilon", self.norm_epsilon, "it must be positive")
        if self.target_vocab_size is not None and self.target_vocab_size < 1:
            fail("target_vocab_size", self.target_vocab_size, "use None or a positive integer")
        for field in ("num_encoder_layers", "num_decoder_layers"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 1:
                fail(field, value, "a stack needs at least 1 layer")
        if self.head_dim is None and self.d_model % self.num_heads:
            fail(
                "d_model",
                self.d_model,
                f"it must be divisible by num_heads={self.num_heads} so every head gets "
                "d_model // num_heads features (or set head_dim)",
            )
        for field in ("dropout_rate", "attention_dropout_rate"):
            value = getattr(self, field)
            if not 0.0 <= value < 1.0:
                fail(field, value, "a dropout rate must lie in [0, 1)")
        choices = {
            "dtype": DTYPES,
            "param_dtype": DTYPES,
            "norm_placement": NORM_PLACEMENTS,
            "norm": NORMS,
            "mlp": MLPS,
            "position_encoding": POSITION_ENCODINGS,
            "remat_policy": REMAT_POLICIES,
            "attention_implementation": ATTENTION_IMPLEMENTATIONS,
            "matmul_backward": MATMUL_BACKWARDS,
        }
        for field, allowed in choices.items():
            value = getattr(self, field)
            if value not in allowed:
                fail(field, value, f"choose one of {allowed}")
        if self.local_window is not None and self.local_window < 0:
            fail("local_window", self.local_window, "use None (global) or a window >= 0")
        if self.attention_implementation == "cudnn" and self.dtype == "float32":
            fail(
                "attention_implementation",
                "cudnn",
                "cuDNN attention needs dtype 'bfloat16' or 'float16'; use 'auto' or 'xla'",
            )
        if self.attention_implementation in ("xla", "cudnn") and self.attention_dropout_rate > 0:
            fail(
                "attention_implementation",
                self.attention_implementation,
                f"attention_dropout_rate={self.attention_dropout_rate} runs only on the explicit "
                "path; use 'auto' or 'explicit', or attention_dropout_rate=0",
            )

    @property
    def output_vocab_size(self) -> int:
        return self.target_vocab_size or self.vocab_size

    @property
    def features_per_head(self) -> int:
        """Dh: `head_dim` when set, else d_model // num_heads."""
        return self.head_dim or self.d_model // self.num_heads

    @property
    def key_value_heads(self) -> int:
        """How many key/value heads attention projects: `num_kv_heads`, else num_heads."""
        return self.num_kv_heads or self.num_heads

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    @property
    def weights_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.param_dtype)

    def replace(self, **changes) -> "TransformerConfig":
        return dataclasses.replace(self, **changes)


class ConfigError(ValueError):
    """An experiment config value that cannot work; the one-line message names field and fix."""


def required_field(config, name: str):
    """`config[name]` of a flat experiment config, or a ConfigError naming the missing field."""
    if name not in config:
        raise ConfigError(
            f"config has no field {name!r}: build the config from configs/default.py "
            "(`default.get_config()`), which sets every field."
        )
    return config[name]
