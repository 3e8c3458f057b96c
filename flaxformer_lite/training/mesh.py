"""Data, FSDP and tensor parallelism: the pure steps under `jax.jit` over a device mesh.

The devices form a `Mesh` with three named axes:

    data    each slice holds a full copy of the state and its share of the batch
    fsdp    the batch is split over it too, and so is every parameter and optimizer
            moment along its "embed" axis (fully sharded data parallel)
    tensor  attention heads, the MLP hidden width and the vocabulary are split over it

Parameters say what their axes mean with the logical names of `layers.sharding`;
`config.logical_axis_rules` maps those names onto mesh axes, and `config.mesh_shape`
says how many devices each mesh axis has. One set of rules serves every layout: an
axis of size 1 splits nothing, so `data=4` is data parallel, `fsdp=4` is FSDP and
`fsdp=2,tensor=2` is both. The GSPMD partitioner writes every collective.

The state is created directly in its shardings (`jax.jit(init, out_shardings=...)`),
and the train step is the same pure function as under pmap, with no `axis_name`: it
sees the global batch, and its sums are global sums.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import flax.linen as nn
import jax
import numpy as np
import optax
from flax.training.train_state import TrainState
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from flaxformer_lite.config import ConfigError
from flaxformer_lite.training.optimizer import make_optimizer
from flaxformer_lite.training.step import eval_step, train_step

if TYPE_CHECKING:
    from flaxformer_lite.families import ModelFamily

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # the mesh axes the examples of a batch are split over

# Logical name -> mesh axes, in priority order: a mesh axis serves one array axis at
# most, so an activation (batch, length, embed) gives fsdp to its batch, while a kernel
# (embed, mlp), which has no batch axis, is split over fsdp along embed.
DEFAULT_RULES = (
    ("batch", BATCH_AXES),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
)


def parse_mesh_shape(text: str, device_count: int) -> dict[str, int]:
    """`"data=2,fsdp=2,tensor=1"` -> {"data": 2, "fsdp": 2, "tensor": 1} over `device_count`.

    Axes left out have size 1; one axis may be -1, "the rest of the devices".
    Raises ConfigError naming the problem when the sizes cannot cover the devices.
    """
    sizes = dict.fromkeys(MESH_AXES, 1)
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, value = item.partition("=")
        name = name.strip()
        if name not in MESH_AXES:
            raise ConfigError(
                f"config.mesh_shape={text!r}: unknown axis {name!r}; the axes are "
                f"{', '.join(MESH_AXES)}, e.g. 'data=2,fsdp=2,tensor=1'."
            )
        try:
            sizes[name] = int(value)
        except ValueError:
            raise ConfigError(
                f"config.mesh_shape={text!r}: {name} needs an integer size (or -1 for the "
                "rest of the devices), e.g. 'data=-1,fsdp=2'."
            ) from None
    rest = [name for name, size in sizes.items() if size == -1]
    if len(rest) > 1 or any(size < 1 and size != -1 for size in sizes.values()):
        raise ConfigError(
            f"config.mesh_shape={text!r}: sizes must be positive, and at most one may be -1."
        )
    known = math.prod(size for size in sizes.values() if size != -1)
    if rest:
        if device_count % known:
            raise ConfigError(
                f"config.mesh_shape={text!r}: {device_count} devices do not divide into "
                f"groups of {known}; choose sizes whose product divides {device_count}."
            )
        sizes[rest[0]] = device_count // known
    if math.prod(sizes.values()) != device_count:
        raise ConfigError(
            f"config.mesh_shape={text!r} asks for {math.prod(sizes.values())} devices, the "
            f"job has {device_count}: make the product of the sizes {device_count}, or set "
            "one axis to -1."
        )
    return sizes


PARALLELISMS = ("pmap", "mesh")


def check_parallelism(config, device_count: int) -> None:
    """ConfigError, before any work, for a parallelism, mesh shape or rule that cannot work."""
    if config.parallelism not in PARALLELISMS:
        raise ConfigError(
            f"config.parallelism={config.parallelism!r} is unknown: use pmap (a full copy of "
            "the state per device) or mesh (sharded over config.mesh_shape)."
        )
    if config.parallelism == "mesh":
        parse_mesh_shape(config.mesh_shape, device_count)
        check_rules(config.logical_axis_rules)


def make_mesh(mesh_shape: str, devices=None) -> Mesh:
    """The device mesh `mesh_shape` describes, over `devices` (default: every device).

    `jax.make_mesh` orders the devices so that neighbours on the fastest links share
    the innermost axis (tensor), and each host's devices stay together.
    """
    devices = jax.devices() if devices is None else list(devices)
    sizes = parse_mesh_shape(mesh_shape, len(devices))
    return jax.make_mesh(
        tuple(sizes[name] for name in MESH_AXES),
        MESH_AXES,
        axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES),
        devices=devices,
    )


def check_rules(rules) -> tuple[tuple[str, str | tuple[str, ...] | None], ...]:
    """The configured rules as tuples; ConfigError for a mesh axis that does not exist."""
    checked = []
    for rule in rules:
        name, mesh_axes = rule
        named = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes or ())
        unknown = [axis for axis in named if axis not in MESH_AXES]
        if unknown:
            raise ConfigError(
                f"config.logical_axis_rules maps {name!r} to {unknown}; the mesh axes are "
                f"{', '.join(MESH_AXES)}."
            )
        checked.append((name, mesh_axes if isinstance(mesh_axes, str) else named or None))
    return tuple(checked)


@contextlib.contextmanager
def activated(mesh: Mesh, rules):
    """Inside: `sharding.constrain` lays activations out on `mesh` by `rules`."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield


def _within_mesh(function: Callable, mesh: Mesh, rules) -> Callable:
    """`function`, traced and run with the mesh and the rules active."""

    @functools.wraps(function)
    def run(*args, **kwargs):
        with activated(mesh, rules):
            return function(*args, **kwargs)

    return run


def _divisible_spec(spec: PartitionSpec, shape: tuple[int, ...], mesh: Mesh) -> PartitionSpec:
    """`spec` without the mesh axes that do not divide their dimension (those stay whole).

    A byte vocabulary of 259 tokens cannot be split over 2 devices; it is replicated
    rather than padded.
    """
    padded = tuple(spec) + (None,) * (len(shape) - len(spec))
    kept = []
    for dimension, axes in zip(shape, padded, strict=True):
        named = (axes,) if isinstance(axes, str) else tuple(axes or ())
        ways = math.prod(mesh.shape[axis] for axis in named)
        kept.append(axes if named and dimension % ways == 0 else None)
    return PartitionSpec(*kept)


class MeshParallel:
    """One model family trained on a mesh: sharded state, and the steps that run on it.

    `state_shardings` is a TrainState of NamedShardings, the layout of every array of
    the state; checkpoints restore into it, whatever layout they were saved from.
    """

    def __init__(self, family: ModelFamily, config, mesh: Mesh, rules=DEFAULT_RULES):
        self.family = family
        self.mesh = mesh
        self.rules = check_rules(rules)
        self.label_smoothing = config.label_smoothing
        # One module and one optimizer: every state of this run carries these same static
        # fields, so it matches `state_shardings` as a pytree.
        self.apply_fn = family.module.apply
        self.tx = family.optimizer(make_optimizer(config))
        self.replicated = NamedSharding(mesh, PartitionSpec())
        self.batch_sharding = NamedSharding(mesh, PartitionSpec(BATCH_AXES))
        example = jax.tree.map(np.asarray, family.example_batch())  # on the host: traceable init
        self._example_inputs = family.model_inputs(example)
        self.state_shardings = self._state_shardings()

    def _abstract_state(self, params) -> TrainState:
        return TrainState.create(apply_fn=self.apply_fn, params=params, tx=self.tx)

    def _boxed_params(self, rng: jax.Array):
        """`module.init` on the example inputs: parameters boxed with their logical names."""
        return self.family.module.init(rng, **self._example_inputs)["params"]

    def _state_shardings(self) -> TrainState:
        boxed = jax.eval_shape(self._boxed_params, jax.random.key(0))
        params = nn.meta.unbox(boxed)  # ShapeDtypeStructs
        logical_specs = nn.get_partition_spec(boxed)  # names per axis; P() where none
        param_shardings = jax.tree.map(
            lambda logical, param: NamedSharding(
                self.mesh,
                _divisible_spec(
                    nn.logical_to_mesh_axes(logical, self.rules), param.shape, self.mesh
                ),
            ),
            logical_specs,
            params,
        )
        abstract = jax.eval_shape(self._abstract_state, params)
        # Adam's moments mirror the parameters and take their layout; counts are replicated.
        opt_shardings = optax.tree_map_params(
            self.tx,
            lambda _, sharding: sharding,
            abstract.opt_state,
            param_shardings,
            transform_non_params=lambda _: self.replicated,
        )
        return abstract.replace(
            step=self.replicated, params=param_shardings, opt_state=opt_shardings
        )

    def init_state(self, rng: jax.Array) -> TrainState:
        """A fresh state, each array created on the devices that hold it (no full copy first)."""

        def init(rng):
            return self._abstract_state(nn.meta.unbox(self._boxed_params(rng)))

        # Outside the mesh: the out_shardings alone place the new arrays. (Inside it, flax
        # 0.12's DenseGeneral constrains its flattened (2-D) kernel by the 3-D names.)
        return jax.jit(init, out_shardings=self.state_shardings)(rng)

    def state_template(self) -> TrainState:
        """Shapes, dtypes and shardings of the state: what a checkpoint restores into."""
        params = nn.meta.unbox(jax.eval_shape(self._boxed_params, jax.random.key(0)))
        abstract = jax.eval_shape(self._abstract_state, params)
        return jax.tree.map(
            lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
            abstract,
            self.state_shardings,
        )

    def place_state(self, state: TrainState) -> TrainState:
        """Any state of this model (e.g. on the host, or another run's) in `state_shardings`."""
        ours = state.replace(apply_fn=self.apply_fn, tx=self.tx)
        return jax.device_put(ours, self.state_shardings)

    @functools.cached_property
    def train_step(self) -> Callable:
        """state, global batch (B, L), rng -> (state, metric sums); the state is donated."""
        step = functools.partial(
            train_step, family=self.family, label_smoothing=self.label_smoothing
        )
        jitted = jax.jit(
            step,
            in_shardings=(self.state_shardings, self.batch_sharding, self.replicated),
            out_shardings=(self.state_shardings, self.replicated),
            donate_argnums=(0,),
        )
        return _within_mesh(jitted, self.mesh, self.rules)

    @functools.cached_property
    def eval_step(self) -> Callable:
        """state, global batch -> metric sums over the whole batch."""
        step = functools.partial(
            eval_step, family=self.family, label_smoothing=self.label_smoothing
        )
        jitted = jax.jit(
            step,
            in_shardings=(self.state_shardings, self.batch_sharding),
            out_shardings=self.replicated,
        )
        return _within_mesh(jitted, self.mesh, self.rules)

    @functools.cached_property
    def predict(self) -> Callable:
        """params, global batch -> the family's predictions, split over the batch like it."""
        jitted = jax.jit(
            self.family.predict,
            in_shardings=(self.state_shardings.params, self.batch_sharding),
            out_shardings=self.batch_sharding,
        )
        return _within_mesh(jitted, self.mesh, self.rules)

    def global_batch(self, local_batch: dict) -> dict:
        """This host's batch (local devices, B, L) -> its rows of one global batch (B_global, L).

        Every host passes its own rows; the global array is their concatenation in process
        order, split over the batch axes of the mesh.
        """

        def assemble(local):
            rows = np.reshape(local, (-1, *np.shape(local)[2:]))
            global_shape = (rows.shape[0] * jax.process_count(), *rows.shape[1:])
            return jax.make_array_from_process_local_data(self.batch_sharding, rows, global_shape)

        return jax.tree.map(assemble, local_batch)

    def host_rows(self, array: jax.Array) -> np.ndarray:
        """This host's rows of a batch-split global array, in the order it passed them in."""
        local = multihost_utils.global_array_to_host_local_array(
            array, self.mesh, PartitionSpec(BATCH_AXES)
        )
        return np.asarray(jax.device_get(local))

    # The steps as the trainer calls them: on this host's batches, as the data give them.

    def train_on_host_batch(self, state: TrainState, local_batch: dict, rng: jax.Array):
        return self.train_step(state, self.global_batch(local_batch), rng)

    def eval_on_host_batch(self, state: TrainState, local_batch: dict) -> dict:
        return self.eval_step(state, self.global_batch(local_batch))

    def predict_on_host_batch(self, params, local_batch: dict) -> np.ndarray:
        """This host's rows of the predictions, in the order of its batch."""
        return self.host_rows(self.predict(params, self.global_batch(local_batch)))
