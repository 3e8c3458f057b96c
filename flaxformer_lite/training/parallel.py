"""Data parallelism: the pure steps under `jax.pmap` over every local device.

Parameters and optimizer state are replicated (one copy per device); each
batch arrives with a leading (num_local_devices,) axis and each device takes
its slice. On several hosts, `jax.distributed.initialize()` joins them into one
runtime first, after which `psum` spans every device of every host. (Sharded
state, over a device mesh: training/mesh.py.)
"""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import jax_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from flaxformer_lite.training.step import eval_step, train_step

AXIS = "devices"


def initialize_distributed(config) -> None:
    """Join a multi-process job (TPU pod, GPU cluster, local CPU processes) when asked.

    Must run before anything else touches JAX's devices. The coordinator address,
    process count and process id come from the config, else from the environment
    (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID), else
    `jax.distributed.initialize()` detects them from the cluster (TPU metadata,
    SLURM, Open MPI). A process that stops sending heartbeats for
    `config.heartbeat_timeout_seconds` fails every other process with an error.
    """
    if not config.distributed:
        return
    # CPU processes exchange arrays through gloo over TCP (GPUs and TPUs use their own links).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=config.coordinator_address,
        num_processes=_setting(config.num_processes, "JAX_NUM_PROCESSES"),
        process_id=_setting(config.process_id, "JAX_PROCESS_ID"),
        initialization_timeout=config.initialization_timeout_seconds,
        heartbeat_timeout_seconds=config.heartbeat_timeout_seconds,
    )


def _setting(value: int | None, variable: str) -> int | None:
    """The config's value, else the environment variable's, else None (detect it)."""
    if value is not None:
        return value
    from_environment = os.environ.get(variable)
    return None if from_environment is None else int(from_environment)


def pmapped_train_step(family, label_smoothing: float):
    """state (replicated), batch (devices, B, L), rng (one key) -> (state, metric sums)."""
    step = functools.partial(
        train_step, family=family, label_smoothing=label_smoothing, axis_name=AXIS
    )
    return jax.pmap(step, axis_name=AXIS, in_axes=(0, 0, None), donate_argnums=(0,))


def pmapped_eval_step(family, label_smoothing: float):
    """state (replicated), batch (devices, B, L) -> metric sums (replicated)."""
    step = functools.partial(
        eval_step, family=family, label_smoothing=label_smoothing, axis_name=AXIS
    )
    return jax.pmap(step, axis_name=AXIS)


# Dropout-key generators JAX offers. The choice is made from the config alone,
# so every process of a job, and every resume, draws the same masks.
PRNG_IMPLS = ("threefry2x32", "philox2x32", "rbg", "unsafe_rbg")


def dropout_prng_impl(name: str, local_device_count: int) -> str:
    """Check the configured dropout-key generator and return its name.

    threefry2x32, JAX's default, is the default here too. philox2x32 makes
    dropout masks about 5x cheaper on CPU (benchmarks/NOTES.md), but in
    jax 0.10 it does not compile under pmap over several devices, so it is
    refused there before anything compiles.
    """
    if name not in PRNG_IMPLS:
        raise ValueError(f"prng_impl={name!r} is unknown: use one of {', '.join(PRNG_IMPLS)}.")
    if name == "philox2x32" and local_device_count > 1:
        raise ValueError(
            f"prng_impl='philox2x32' does not compile under pmap over {local_device_count} "
            f"devices with jax {jax.__version__}; use --config.prng_impl=threefry2x32."
        )
    return name


def replicate(tree):
    """One copy of `tree` per local device, laid out as `jax.pmap` lays out what it returns.

    flax's `jax_utils.replicate` puts the copies on a device mesh of its own; the state a
    pmapped step returned then differed from its first input in layout alone, and the step
    compiled a second time at step 1.
    """
    devices = jax.local_devices()
    stacked = NamedSharding(Mesh(np.array(devices), (AXIS,)), PartitionSpec(AXIS))

    def copies(leaf):  # (devices, *leaf.shape)
        return jax.device_put(jnp.broadcast_to(leaf, (len(devices), *jnp.shape(leaf))), stacked)

    return jax.tree.map(copies, tree)


def unreplicate(tree):
    """The first device's copy, on the host."""
    return jax.device_get(jax_utils.unreplicate(tree))
