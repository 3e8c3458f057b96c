"""Data parallelism: the pure steps under `jax.pmap` over every local device.

Parameters and optimizer state are replicated (one copy per device); each
batch arrives with a leading (num_local_devices,) axis and each device takes
its slice. On several hosts, `jax.distributed.initialize()` joins them into one
runtime first, after which `psum` spans every device of every host.
"""

import contextlib
import functools
import os

import jax
import jax.numpy as jnp
from flax import jax_utils

from flaxformer_lite.training.step import eval_step, train_step

AXIS = "devices"


def initialize_distributed(enabled: bool) -> None:
    """Join a multi-host job (TPU pod, GPU cluster) when the config asks for it.

    `jax.distributed.initialize()` reads the coordinator address, process count
    and process id from the cluster environment (TPU metadata, SLURM, ...).
    """
    if enabled:
        jax.distributed.initialize()


def pmapped_train_step(label_smoothing: float):
    """state (replicated), batch (devices, B, L), rng (one key) -> (state, metric sums)."""
    step = functools.partial(train_step, label_smoothing=label_smoothing, axis_name=AXIS)
    return jax.pmap(step, axis_name=AXIS, in_axes=(0, 0, None), donate_argnums=(0,))


def pmapped_eval_step(label_smoothing: float):
    """state (replicated), batch (devices, B, L) -> metric sums (replicated)."""
    step = functools.partial(eval_step, label_smoothing=label_smoothing, axis_name=AXIS)
    return jax.pmap(step, axis_name=AXIS)


def dropout_prng_impl(name: str, devices: tuple[jax.Device, ...]) -> str:
    """The PRNG implementation for dropout keys under pmap over `devices`.

    Dropout masks are most of the random numbers a train step draws, and
    Philox makes them about 5x cheaper than JAX's default threefry on CPU
    (benchmarks/NOTES.md). "auto" picks philox2x32 where it compiles and
    threefry2x32 elsewhere: in jax 0.10 Philox's `mulhi` fails to compile
    under pmap over several devices (Shardy partitioner), so the choice is
    probed, not assumed. An explicit name that does not compile is an error.
    """
    if name == "auto":
        return "philox2x32" if _compiles_under_pmap("philox2x32", devices) else "threefry2x32"
    if not _compiles_under_pmap(name, devices):
        raise ValueError(
            f"prng_impl={name!r} does not compile under pmap over {len(devices)} devices with "
            f"jax {jax.__version__}; use --config.prng_impl=auto or threefry2x32."
        )
    return name


@functools.cache
def _compiles_under_pmap(name: str, devices: tuple[jax.Device, ...]) -> bool:
    key = jax.random.key(0, impl=name)  # An unknown name raises here, listing the known ones.

    def dropout(x, key):  # x (8,) on each device
        key = jax.random.fold_in(key, jax.lax.axis_index(AXIS))
        return jnp.where(jax.random.bernoulli(key, 0.5, x.shape), x, 0.0)

    apply = jax.pmap(dropout, axis_name=AXIS, in_axes=(0, None), devices=devices)
    try:
        with _stderr_silenced():  # MLIR prints its lowering error straight to fd 2.
            apply.lower(jnp.ones((len(devices), 8)), key).compile()
    except jax.errors.JaxRuntimeError:
        return False
    return True


@contextlib.contextmanager
def _stderr_silenced():
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


replicate = jax_utils.replicate


def unreplicate(tree):
    """The first device's copy, on the host."""
    return jax.device_get(jax_utils.unreplicate(tree))
