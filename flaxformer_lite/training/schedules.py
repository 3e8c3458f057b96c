"""Learning-rate schedules: the paper's inverse-square-root warm-up, or cosine."""

import jax.numpy as jnp
import optax


def transformer_schedule(d_model: int, warmup_steps: int, scale: float = 1.0) -> optax.Schedule:
    """lr = scale * d_model^-0.5 * min(step^-0.5, step * warmup^-1.5) (section 5.3).

    Linear warm-up for `warmup_steps`, then decay with the inverse square root
    of the step. optax counts updates from 0; the paper's step is that + 1.
    """

    def schedule(count):
        step = jnp.asarray(count, jnp.float32) + 1.0
        return scale * d_model**-0.5 * jnp.minimum(step**-0.5, step * warmup_steps**-1.5)

    return schedule


def make_schedule(config) -> optax.Schedule:
    """The schedule a flat training config names: "rsqrt" (the paper's) or "cosine".

    Cosine warms up linearly to `learning_rate`, then decays to `min_learning_rate`
    (0 by default; nanoGPT's is a tenth of the peak) at the last step.
    """
    if config.schedule == "rsqrt":
        return transformer_schedule(config.d_model, config.warmup_steps, config.learning_rate)
    if config.schedule == "cosine":
        # Hand-built configs (tests) may leave the floor out; configs/default.py sets it.
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=config.learning_rate,
            warmup_steps=config.warmup_steps,
            decay_steps=max(config.num_train_steps, config.warmup_steps + 1),
            end_value=config.get("min_learning_rate", 0.0),
        )
    raise ValueError(f"config.schedule={config.schedule!r} is unknown: use 'rsqrt' or 'cosine'.")
