"""The pure train and eval steps.

Both run as plain jitted functions on one device, or under `jax.pmap` with
`axis_name` set, in which case gradients and metrics are summed across
devices. Metrics leave the step as token-weighted sums (`losses.token_metrics`):
dividing sums gathered from every device gives the true global mean, where a
mean of per-device means would not whenever devices hold different numbers of
real tokens.
"""

import jax
import optax
from flax.training.train_state import TrainState
from jax import lax

from flaxformer_lite.training.losses import token_metrics

MODEL_INPUTS = (
    "inputs",
    "targets",
    "inputs_segmentation",
    "targets_segmentation",
    "inputs_position",
    "targets_position",
)


def _model_inputs(batch):
    return tuple(batch.get(name) for name in MODEL_INPUTS)


def _psum(tree, axis_name):
    return tree if axis_name is None else lax.psum(tree, axis_name)


def train_step(
    state: TrainState,
    batch: dict,
    rng: jax.Array,
    *,
    label_smoothing: float = 0.0,
    axis_name: str | None = None,
) -> tuple[TrainState, dict]:
    """One optimizer update on a batch of (B, L) arrays; returns (new state, metric sums).

    The loss is the label-smoothed cross-entropy averaged over every real
    target token of the global batch. Dropout keys are derived from `rng`,
    the step and the device index, so a resumed run draws the same masks.
    """
    dropout_key = jax.random.fold_in(rng, state.step)
    if axis_name is not None:
        dropout_key = jax.random.fold_in(dropout_key, lax.axis_index(axis_name))
    global_token_count = _psum((batch["targets"] != 0).sum().astype("float32"), axis_name).clip(
        min=1.0
    )

    def loss_fn(params):
        logits = state.apply_fn(
            {"params": params},
            *_model_inputs(batch),
            deterministic=False,
            rngs={"dropout": dropout_key},
        )
        metrics = token_metrics(logits, batch["targets"], label_smoothing)
        return metrics["loss_sum"] / global_token_count, metrics

    grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params)
    # Each device differentiated its share of the global mean: the sum is the gradient.
    grads = _psum(grads, axis_name)
    metrics = _psum(metrics, axis_name)
    metrics["grad_norm"] = optax.tree.norm(grads)  # before clipping
    return state.apply_gradients(grads=grads), metrics


def eval_step(
    state: TrainState,
    batch: dict,
    *,
    label_smoothing: float = 0.0,
    axis_name: str | None = None,
) -> dict:
    """Teacher-forced metric sums on one batch, without dropout."""
    logits = state.apply_fn({"params": state.params}, *_model_inputs(batch), deterministic=True)
    return _psum(token_metrics(logits, batch["targets"], label_smoothing), axis_name)
