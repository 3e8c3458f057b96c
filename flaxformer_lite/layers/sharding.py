"""Logical axis names: how every parameter and key activation says what its axes mean.

A kernel created with `partitioned(init, "embed", "mlp")` carries the names of its
axes; an activation passed through `constrain(x, "batch", "length", "embed")` asks
the partitioner to lay it out by name. Neither says which device holds what: a run
under `parallelism="mesh"` maps the names onto mesh axes with its logical axis rules
(data parallel, FSDP, tensor parallel). Without rules both are free: `init_params`
unboxes the names away, and `constrain` returns its input unchanged.

The vocabulary, shared by every model family:

    batch    examples in a batch              length   positions in a sequence
    embed    the model width d_model          mlp      the feed-forward hidden width
    heads    attention heads (query or KV)    kv       features of one head
    vocab    the token vocabulary             layers   the stacked-layer axis of nn.scan
"""

from collections.abc import Callable

import flax.linen as nn
import jax

AXIS_NAMES = ("batch", "length", "embed", "mlp", "heads", "kv", "vocab", "layers")


def partitioned(initializer: Callable, *axis_names: str | None) -> Callable:
    """`initializer` whose parameters carry one logical name per axis."""
    return nn.with_logical_partitioning(initializer, axis_names)


def constrain(x: jax.Array, *axis_names: str | None) -> jax.Array:
    """x laid out by its axis names under the active rules; unchanged when none are set."""
    return nn.with_logical_constraint(x, axis_names)
