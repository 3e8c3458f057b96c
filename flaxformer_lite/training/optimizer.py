"""The optimizer: global-norm clipping, then Adam(W) with the paper's betas."""

import jax
import optax

from flaxformer_lite.training.schedules import make_schedule


def decay_mask(params):
    """Weight decay applies to weight matrices and embeddings, never to biases or norm scales."""

    def decays(path, _):
        return path[-1].key not in ("bias", "scale")

    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(config) -> optax.GradientTransformation:
    """clip_by_global_norm -> adamw(b1, b2=0.98, eps=1e-9) driven by the configured schedule."""
    return optax.chain(
        optax.clip_by_global_norm(config.grad_clip_norm),
        optax.adamw(
            learning_rate=make_schedule(config),
            b1=config.adam_b1,
            b2=config.adam_b2,
            eps=config.adam_eps,
            weight_decay=config.weight_decay,
            mask=decay_mask,
        ),
    )
