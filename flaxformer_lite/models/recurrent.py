"""Recurrent models: an RNN/LSTM/GRU encoder-decoder with additive attention, and an RNN LM.

The baselines the Transformer replaced, built from Flax's own cells and loops:
`nn.SimpleCell`, `nn.OptimizedLSTMCell` and `nn.GRUCell` step by step under `nn.RNN` (or
`nn.scan`, where attention sits inside the recurrence), `nn.Bidirectional` for an
encoder that reads both ways.

    RecurrentSeq2Seq   source -> target. The encoder's final state starts the decoder;
                       with `attention`, every decoder step also reads a weighted
                       average of all encoder states (Bahdanau et al., 2015), without
                       it the final state is all the decoder knows of the source
                       (Sutskever et al., 2014).
    RecurrentLM        predicts each token from the ones before it.

Decoding threads the recurrent state as its cache: `RecurrentSeq2Seq.start_cache`
and `RecurrentLM.start_cache` build it, and `decode(tokens, cache)` runs the
decoder over any number of tokens and returns the next cache. Every leaf of a cache
is batch-major, so beam search can reorder it along axis 0.

Shapes: B batch, S source length, T target length, E embedding width (`d_model`),
H hidden width (`hidden_size`), A attention width, V vocabulary.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from flaxformer_lite.layers import sharding
from flaxformer_lite.models.inputs import shift_right
from flaxformer_lite.special_tokens import PAD_ID

# The LSTM is Flax's fused variant: nn.LSTMCell's weights and outputs, its four gates
# computed by one matrix product per input instead of four (~25% faster steps on CPU).
CELLS = {"rnn": nn.SimpleCell, "lstm": nn.OptimizedLSTMCell, "gru": nn.GRUCell}

Carry = Any  # One layer's state: (B, H), or (c, h) of (B, H) each for an LSTM.
Cache = dict[str, Any]  # Decoding state: per-layer carries, plus what attention reads.


@dataclasses.dataclass(frozen=True)
class RecurrentConfig:
    """Hyper-parameters of the recurrent models."""

    vocab_size: int
    cell: str = "lstm"  # rnn (Elman, tanh) | lstm | gru
    embed_dim: int = 64  # E: token embeddings
    hidden_size: int = 128  # H: every state the decoder reads; split in two when bidirectional
    num_layers: int = 1  # stacked cells in the encoder and in the decoder
    bidirectional: bool = True  # the encoder also reads the source right to left
    attention: bool = True  # additive attention over the encoder states; off: Sutskever
    dropout_rate: float = 0.0  # on the embeddings and on the features the output layer reads

    def __post_init__(self):
        def fail(field: str, allowed: str):
            value = getattr(self, field)
            raise ValueError(f"RecurrentConfig.{field}={value!r} is invalid: {allowed}.")

        if self.cell not in CELLS:
            fail("cell", f"choose one of {tuple(CELLS)}")
        for field in ("vocab_size", "embed_dim", "hidden_size", "num_layers"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                fail(field, "it must be a positive integer")
        if self.bidirectional and self.hidden_size % 2:
            fail(
                "hidden_size",
                "a bidirectional encoder gives each direction half, so use an even size",
            )
        if not 0.0 <= self.dropout_rate < 1.0:
            fail("dropout_rate", "a dropout rate must lie in [0, 1)")


def make_cell(kind: str, features: int, **module_args) -> nn.RNNCellBase:
    """One of Flax's cells, its kernels named for sharding.

    A kernel maps some width (the embedding for a first layer, a hidden state
    after it) to the hidden width, so only its output axis gets a name.
    """
    return CELLS[kind](
        features=features,
        kernel_init=sharding.partitioned(nn.initializers.lecun_normal(), None, "mlp"),
        recurrent_kernel_init=sharding.partitioned(nn.initializers.orthogonal(), None, "mlp"),
        **module_args,
    )


def unbound_cell(kind: str, features: int) -> nn.RNNCellBase:
    """A cell for `nn.RNN`, which adopts it: its weights sit under the RNN's `cell`."""
    return make_cell(kind, features, parent=None)


def hidden_state(carry: Carry) -> jax.Array:
    """The part of a carry a layer outputs: h of an LSTM's (c, h), else the carry itself."""
    return carry[1] if isinstance(carry, tuple) else carry


def source_lengths(inputs: jax.Array) -> jax.Array:
    """Real tokens per right-padded row: (B, S) -> (B,)."""
    return jnp.sum(inputs != PAD_ID, axis=1)


def embedding(config: RecurrentConfig) -> nn.Embed:
    return nn.Embed(
        num_embeddings=config.vocab_size,
        features=config.embed_dim,
        embedding_init=sharding.partitioned(nn.initializers.normal(stddev=1.0), "vocab", "embed"),
        name="embedding",
    )


def output_layer(config: RecurrentConfig) -> nn.Dense:
    return nn.Dense(
        config.vocab_size,
        kernel_init=sharding.partitioned(nn.initializers.lecun_normal(), "mlp", "vocab"),
        name="output",
    )


class RecurrentStack(nn.Module):
    """`num_layers` cells, one on top of the other, each run over the sequence by `nn.RNN`."""

    cell: str
    hidden_size: int
    num_layers: int

    @nn.compact
    def __call__(self, x, *, initial_carry=None, seq_lengths=None):
        """x (B, T, D) -> (one carry per layer, top outputs (B, T, H)).

        With `seq_lengths` (B,), a row's carry stops at its last real step, so the
        returned carry is the state after that row's last real token.
        """
        carries = []
        for layer in range(self.num_layers):
            rnn = nn.RNN(unbound_cell(self.cell, self.hidden_size), name=f"layer_{layer}")
            carry, x = rnn(
                x,
                initial_carry=None if initial_carry is None else initial_carry[layer],
                seq_lengths=seq_lengths,
                return_carry=True,
            )
            carries.append(carry)
        return tuple(carries), x


class BidirectionalStack(nn.Module):
    """Stacked `nn.Bidirectional` layers: each direction gets half of `hidden_size`."""

    cell: str
    hidden_size: int
    num_layers: int

    @nn.compact
    def __call__(self, x, *, seq_lengths):
        """x (B, S, D) -> (one carry per layer, outputs (B, S, H)).

        Position s of the outputs is [forward state after x_0..x_s ; backward state
        after x_{n-1}..x_s], n the row's length: the backward direction starts at the
        last real token, not at the padding. A layer's carry is the two directions'
        final carries joined feature-wise, so it has the decoder's width H.
        """
        carries = []
        half = self.hidden_size // 2
        for layer in range(self.num_layers):
            # Unbound RNNs: nn.Bidirectional adopts them as forward_rnn and backward_rnn.
            both_ways = nn.Bidirectional(
                nn.RNN(unbound_cell(self.cell, half), parent=None),
                nn.RNN(unbound_cell(self.cell, half), parent=None),
                return_carry=True,
                name=f"layer_{layer}",
            )
            (forward, backward), x = both_ways(x, seq_lengths=seq_lengths)
            carries.append(jax.tree.map(_join_features, forward, backward))
        return tuple(carries), x


def _join_features(*arrays):
    return jnp.concatenate(arrays, axis=-1)


class AdditiveAttention(nn.Module):
    """Bahdanau attention: score(q, k_s) = v^T tanh(W_q q + W_k k_s), softmax over s.

    The keys' projection W_k k_s is the same at every decoder step, so the caller
    computes it once (`projected_keys`); this module adds the query's part. The
    weights are sown as `intermediates/.../attention_weights`.
    """

    features: int  # A

    @nn.compact
    def __call__(self, query, projected_keys, values, mask):
        """query (B, H), projected_keys (B, S, A), values (B, S, H), mask (B, S) bool
        -> context (B, H): the average of the values under the weights, 0 on padding."""
        projected_query = nn.Dense(
            self.features,
            use_bias=False,
            kernel_init=sharding.partitioned(nn.initializers.lecun_normal(), "mlp", "kv"),
            name="query",
        )(query)  # (B, A)
        energy = jnp.tanh(projected_keys + projected_query[:, None, :])  # (B, S, A)
        scores = nn.Dense(
            1,
            use_bias=False,
            kernel_init=sharding.partitioned(nn.initializers.lecun_normal(), "kv", None),
            name="energy",
        )(energy)[..., 0]  # (B, S)
        scores = jnp.where(mask, scores, jnp.finfo(scores.dtype).min)
        weights = jax.nn.softmax(scores, axis=-1)  # (B, S)
        self.sow("intermediates", "attention_weights", weights)
        return jnp.einsum("bs,bsh->bh", weights, values)


class AttentiveDecoderStep(nn.Module):
    """One decoder step with attention, the body of an `nn.scan` over target positions.

    The previous top-layer state asks where to look; the context it gets joins the
    token's embedding as the first layer's input; the output is [top state ; context].
    """

    cell: str
    hidden_size: int
    num_layers: int

    @nn.compact
    def __call__(self, carry, embedded, projected_keys, values, mask):
        """carry: one per layer; embedded (B, E) -> (new carry, features (B, 2H))."""
        query = hidden_state(carry[-1])  # (B, H)
        attention = AdditiveAttention(self.hidden_size, name="attention")
        context = attention(query, projected_keys, values, mask)  # (B, H)
        x = jnp.concatenate([embedded, context], axis=-1)  # (B, E + H)
        new_carry = []
        for layer, layer_carry in enumerate(carry):
            layer_carry, x = make_cell(self.cell, self.hidden_size, name=f"layer_{layer}")(
                layer_carry, x
            )
            new_carry.append(layer_carry)
        return tuple(new_carry), jnp.concatenate([x, context], axis=-1)


# The attentive decoder over a whole target: time is axis 1 of the embeddings and of the
# outputs; the attention weights of every step are stacked along axis 1 as well.
ScannedAttentiveDecoder = nn.scan(
    AttentiveDecoderStep,
    variable_broadcast="params",
    variable_axes={"intermediates": 1},
    split_rngs={"params": False},
    in_axes=(1, nn.broadcast, nn.broadcast, nn.broadcast),
    out_axes=1,
)


class RecurrentSeq2Seq(nn.Module):
    """Encoder-decoder RNN: `model.apply(variables, inputs, targets)` -> logits (B, T, V).

    inputs (B, S) and targets (B, T) hold one right-padded example per row (PAD=0,
    each ending in EOS); the decoder reads BOS, y_0, ..., y_{T-2}. Packed rows are
    not supported: a carry would run from one example into the next.
    """

    config: RecurrentConfig

    def setup(self):
        cfg = self.config
        self.embed = embedding(cfg)
        stack = BidirectionalStack if cfg.bidirectional else RecurrentStack
        self.encoder = stack(cfg.cell, cfg.hidden_size, cfg.num_layers)
        if cfg.attention:
            self.attention_keys = nn.Dense(
                cfg.hidden_size,
                use_bias=False,
                kernel_init=sharding.partitioned(nn.initializers.lecun_normal(), "mlp", "kv"),
            )
            self.decoder = ScannedAttentiveDecoder(cfg.cell, cfg.hidden_size, cfg.num_layers)
        else:
            self.decoder = RecurrentStack(cfg.cell, cfg.hidden_size, cfg.num_layers)
        self.dropout = nn.Dropout(cfg.dropout_rate)
        self.output = output_layer(cfg)

    def __call__(self, inputs, targets, *, deterministic: bool = True, **unused_packing):
        """inputs (B, S), targets (B, T) -> logits (B, T, V), teacher-forced."""
        del unused_packing  # segmentation and positions of unpacked rows say nothing new
        cache = self.start_cache(inputs, deterministic=deterministic)
        logits, _ = self.decode(shift_right(targets), cache, deterministic=deterministic)
        return logits

    def start_cache(self, inputs, *, deterministic: bool = True) -> Cache:
        """Encode the source: the decoder's initial cache, every leaf batch-major.

        {"carry": the encoder's final carry of each layer (the state after the last
        real token), and with attention "keys" (B, S, A) projected once, "values"
        (B, S, H) the encoder states, "mask" (B, S) the real source tokens}.
        """
        embedded = self.dropout(self.embed(inputs), deterministic=deterministic)  # (B, S, E)
        embedded = sharding.constrain(embedded, "batch", "length", "embed")
        carry, states = self.encoder(embedded, seq_lengths=source_lengths(inputs))
        if not self.config.attention:
            return {"carry": carry}
        return {
            "carry": carry,
            "keys": self.attention_keys(states),  # (B, S, A)
            "values": states,  # (B, S, H)
            "mask": inputs != PAD_ID,  # (B, S)
        }

    def decode(self, tokens, cache: Cache, *, deterministic: bool = True, seq_lengths=None):
        """Run the decoder over tokens (B, T) from `cache` -> (logits (B, T, V), next cache).

        One token per call is a decoding step; the teacher-forced forward is the same
        call over the whole shifted target. With `seq_lengths` (B,), a row's carry
        stops after its first seq_lengths tokens (the attentive decoder ignores it and
        is only called with equal lengths).
        """
        embedded = self.dropout(self.embed(tokens), deterministic=deterministic)  # (B, T, E)
        if self.config.attention:
            carry, features = self.decoder(
                cache["carry"], embedded, cache["keys"], cache["values"], cache["mask"]
            )  # features (B, T, 2H)
        else:
            carry, features = self.decoder(
                embedded, initial_carry=cache["carry"], seq_lengths=seq_lengths
            )  # features (B, T, H)
        features = self.dropout(features, deterministic=deterministic)
        return self.output(features), {**cache, "carry": carry}


class RecurrentLM(nn.Module):
    """Recurrent language model: `model.apply(variables, targets)` -> logits (B, T, V).

    Position t predicts targets[t] from BOS and targets[:t], one right-padded
    example per row.
    """

    config: RecurrentConfig

    def setup(self):
        cfg = self.config
        self.embed = embedding(cfg)
        self.stack = RecurrentStack(cfg.cell, cfg.hidden_size, cfg.num_layers)
        self.dropout = nn.Dropout(cfg.dropout_rate)
        self.output = output_layer(cfg)

    def __call__(self, targets, *, deterministic: bool = True, **unused_packing):
        """targets (B, T) -> logits (B, T, V), teacher-forced from a zero state."""
        del unused_packing
        cache = self.start_cache(targets.shape[0])
        logits, _ = self.decode(shift_right(targets), cache, deterministic=deterministic)
        return logits

    def start_cache(self, batch: int) -> Cache:
        """The zero state of every layer, before BOS."""
        cell = CELLS[self.config.cell](features=self.config.hidden_size, parent=None)
        zero = cell.initialize_carry(jax.random.key(0), (batch, self.config.embed_dim))
        return {"carry": (zero,) * self.config.num_layers}

    def decode(self, tokens, cache: Cache, *, deterministic: bool = True, seq_lengths=None):
        """tokens (B, T) from `cache` -> (logits (B, T, V), next cache); see RecurrentSeq2Seq."""
        embedded = self.dropout(self.embed(tokens), deterministic=deterministic)  # (B, T, E)
        carry, features = self.stack(
            embedded, initial_carry=cache["carry"], seq_lengths=seq_lengths
        )  # (B, T, H)
        features = self.dropout(features, deterministic=deterministic)
        return self.output(features), {"carry": carry}
