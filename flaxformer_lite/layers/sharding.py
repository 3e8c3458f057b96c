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


class LogicalNames(nn.LogicallyPartitioned):
    """A parameter boxed with its logical axis names, which unboxes to the bare value.

    Flax's own box also constrains the value to its layout when unboxed under a mesh.
    Here the layout of every parameter is already fixed by the shardings `jax.jit` is
    given (training/mesh.py), and that constraint breaks DenseGeneral (flax 0.12): its
    initializer makes a flattened 2-D kernel, constrains it by the 3-D names, and only
    then reshapes it.
    """

    def unbox(self, apply_constraint: bool = True):
        del apply_constraint  # the layout comes from jit's shardings
        return self.value


def partitioned(initializer: Callable, *axis_names: str | None) -> Callable:
    """`initializer` whose parameters carry one logical name per axis."""

    def initialize(*args, **kwargs):
        return LogicalNames(initializer(*args, **kwargs), axis_names)

    return initialize


def constrain(x: jax.Array, *axis_names: str | None) -> jax.Array:
    """x laid out by its axis names under the active rules; unchanged when none are set."""
    return nn.with_logical_constraint(x, axis_names)
