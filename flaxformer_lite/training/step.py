"""The pure train and eval steps.

Both run as plain jitted functions on one device, or under `jax.pmap` with
`axis_name` set, in which case gradients and metrics are summed across
devices. Both are generic over the model family (`flaxformer_lite.families`),
which maps a batch to its module and the module's outputs to metric sums.
Metrics leave the step as token-weighted sums (`losses.token_metrics`):
dividing sums gathered from every device gives the true global mean, where a
mean of per-device means would not whenever devices hold different numbers of
real tokens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import optax
from flax.training.train_state import TrainState
from jax import lax

if TYPE_CHECKING:  # the families import the losses, which live beside this module
    from flaxformer_lite.families import ModelFamily


def _psum(tree, axis_name):
    return tree if axis_name is None else lax.psum(tree, axis_name)


def train_step(
    state: TrainState,
    batch: dict,
    rng: jax.Array,
    *,
    family: ModelFamily,
    label_smoothing: float = 0.0,
    axis_name: str | None = None,
) -> tuple[TrainState, dict]:
    """One optimizer update on a batch of named (B, L) arrays; returns (new state, metric sums).

    The family maps the batch to its module and its outputs to metric sums; the
    loss is `loss_sum` over the global batch's `token_count` (the tokens, or
    examples, the loss counts on every device). Dropout keys are derived from
    `rng`, the step and the device index, so a resumed run draws the same masks.

    A non-finite loss, gradient norm or update is not applied: parameters and
    optimizer state stay as they were, the step counter still advances, and
    metrics["nonfinite"] is 1. Every device sees the same summed values, so
    all of them (on every host) make the same decision.
    """
    dropout_key = jax.random.fold_in(rng, state.step)
    if axis_name is not None:
        dropout_key = jax.random.fold_in(dropout_key, lax.axis_index(axis_name))

    def loss_fn(params):
        outputs = family.apply(params, batch, deterministic=False, rngs={"dropout": dropout_key})
        metrics = family.metric_sums(outputs, batch, label_smoothing=label_smoothing)
        # The count depends on the batch alone; summed over devices it makes the global mean.
        global_count = _psum(lax.stop_gradient(metrics["token_count"]), axis_name)
        return metrics["loss_sum"] / jnp.maximum(global_count, 1.0), metrics

    grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params)
    # Each device differentiated its share of the global mean: the sum is the gradient.
    grads = _psum(grads, axis_name)
    metrics = _psum(metrics, axis_name)
    metrics["grad_norm"] = optax.tree.norm(grads)  # before clipping
    updates, new_opt_state = state.tx.update(grads, state.opt_state, state.params)
    is_finite = (
        jnp.isfinite(metrics["loss_sum"])
        & jnp.isfinite(metrics["grad_norm"])
        & jnp.isfinite(optax.tree.norm(updates))  # catches an infinite learning rate
    )
    metrics["nonfinite"] = (~is_finite).astype(jnp.float32)
    params, opt_state = _select(
        is_finite,
        (optax.apply_updates(state.params, updates), new_opt_state),
        (state.params, state.opt_state),
    )
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def _select(condition: jax.Array, if_true, if_false):
    """Pick one of two pytrees of the same structure, leaf by leaf, on a scalar condition."""
    return jax.tree_util.tree_map(lambda a, b: jnp.where(condition, a, b), if_true, if_false)


def eval_step(
    state: TrainState,
    batch: dict,
    *,
    family: ModelFamily,
    label_smoothing: float = 0.0,
    axis_name: str | None = None,
) -> dict:
    """Teacher-forced metric sums on one batch, without dropout."""
    outputs = family.apply(state.params, batch, deterministic=True)
    return _psum(family.metric_sums(outputs, batch, label_smoothing=label_smoothing), axis_name)
