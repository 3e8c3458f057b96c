"""Mesh parallelism (training/mesh.py) on 4 fake CPU devices.

Every layout must compute the step one device computes, hold the shards its rules
say, and restore a checkpoint into any other mesh. The reference is the same pure
`train_step` jitted on one device, without any mesh or names.
"""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.default import get_config
from flaxformer_lite.config import ConfigError
from flaxformer_lite.families import FAMILIES, make_family
from flaxformer_lite.special_tokens import EOS_ID
from flaxformer_lite.training import mesh
from flaxformer_lite.training.checkpoint import Checkpointer
from flaxformer_lite.training.step import train_step
from flaxformer_lite.training.trainer import create_train_state

LAYOUTS = ("data=4", "fsdp=4", "data=2,tensor=2")
ROWS, LENGTH, VOCAB = 8, 8, 300


def tiny_config():
    config = get_config()
    config.update(
        model="decoder_only",
        d_model=32,
        num_heads=2,
        d_ff=64,
        num_decoder_layers=1,
        max_target_length=LENGTH,
        max_decode_length=LENGTH,
        dropout_rate=0.1,  # dropout masks must not depend on the layout either
        label_smoothing=0.1,
        warmup_steps=1,  # the first step has learning rate 0; the second moves the parameters
        learning_rate=0.01,
        # Some gradients are rounding noise (a key bias cannot change attention): a tiny
        # epsilon would make Adam turn that noise into full-size, layout-dependent updates.
        adam_eps=1e-3,
        num_train_steps=10,
    )
    return config


CONFIG = tiny_config()


@pytest.fixture(scope="module")
def family():
    return make_family(CONFIG, VOCAB)


@functools.cache
def batches():
    """Two global batches of (ROWS, LENGTH) token rows, real tokens then EOS."""
    rng = np.random.default_rng(0)
    made = []
    for _ in range(2):
        targets = rng.integers(4, VOCAB, (ROWS, LENGTH)).astype(np.int32)
        targets[:, -1] = EOS_ID
        made.append({"targets": targets, "loss_weights": np.ones_like(targets)})
    return made


def step_function(family):
    return functools.partial(train_step, family=family, label_smoothing=CONFIG.label_smoothing)


DROPOUT_RNG = jax.random.key(7)


@pytest.fixture(scope="module")
def reference(family):
    """Two steps on one device, no mesh: [(state after step, metrics), ...]."""
    state = create_train_state(family, CONFIG, jax.random.key(0))
    step = jax.jit(step_function(family))
    history = []
    for batch in batches():
        state, metrics = step(state, batch, DROPOUT_RNG)
        history.append((jax.device_get(state), jax.device_get(metrics)))
    return history


@functools.cache
def mesh_run(layout: str):
    """The two steps under `layout` on all four devices (compiled once per session)."""
    family = make_family(CONFIG, VOCAB)
    parallel = mesh.MeshParallel(family, CONFIG, mesh.make_mesh(layout))
    state = parallel.init_state(jax.random.key(0))
    history = []
    for batch in batches():
        global_batch = jax.device_put(batch, parallel.batch_sharding)
        # The step donates its input state: keep each state's own copy for the tests.
        state, metrics = parallel.train_step(
            jax.tree.map(jnp.copy, state), global_batch, DROPOUT_RNG
        )
        history.append((state, jax.device_get(metrics)))
    return parallel, history


def assert_same_step(got, want):
    (got_state, got_metrics), (want_state, want_metrics) = got, want
    for key in ("loss_sum", "token_count", "grad_norm"):
        np.testing.assert_allclose(got_metrics[key], want_metrics[key], rtol=1e-5, err_msg=key)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(np.asarray(a), b, rtol=1e-5, atol=1e-6),
        got_state.params,
        want_state.params,
    )


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_step_under_every_layout_equals_the_one_device_step(layout, reference):
    _, history = mesh_run(layout)
    for got, want in zip(history, reference, strict=True):
        assert_same_step(got, want)
    # The second step moved the parameters: the comparison above is not of two inits.
    before, after = reference[0][0].params, reference[1][0].params
    assert max(jax.tree.leaves(jax.tree.map(lambda a, b: np.abs(a - b).max(), before, after))) > 0


def logical_names(family):
    """Every parameter's logical axis names, from the boxes `sharding.partitioned` made."""
    inputs = family.model_inputs(jax.tree.map(np.asarray, family.example_batch()))
    boxed = jax.eval_shape(family.module.init, jax.random.key(0), **inputs)["params"]
    return nn.get_partition_spec(boxed)


def padded(axis_names, ndim: int) -> tuple:
    """A PartitionSpec's names, one per axis (an unnamed parameter has P())."""
    return tuple(axis_names) + (None,) * (ndim - len(axis_names))


# What each layout's rules must do to one named axis: split it over this many devices.
SPLITS = {
    "fsdp=4": {"embed": 4},
    "data=2,tensor=2": {"heads": 2, "mlp": 2, "vocab": 2},
}


@pytest.mark.parametrize("layout", list(SPLITS))
def test_parameters_and_adam_moments_are_split_as_the_rules_say(layout, family):
    parallel, history = mesh_run(layout)
    state = history[-1][0]
    names = jax.tree.leaves(logical_names(family), is_leaf=lambda x: isinstance(x, tuple))
    adam = state.opt_state[1][0]  # chain(clip, adamw): adamw's ScaleByAdamState
    for arrays in (state.params, adam.mu, adam.nu):
        for array, axis_names in zip(jax.tree.leaves(arrays), names, strict=True):
            expected = tuple(
                size // SPLITS[layout].get(name, 1)
                if size % SPLITS[layout].get(name, 1) == 0
                else size
                for size, name in zip(array.shape, padded(axis_names, array.ndim), strict=True)
            )
            for shard in array.addressable_shards:
                assert shard.data.shape == expected, (axis_names, array.sharding.spec)


def per_device_bytes(tree) -> int:
    return sum(leaf.addressable_shards[0].data.nbytes for leaf in jax.tree.leaves(tree))


def test_fsdp_holds_a_quarter_of_every_large_kernel():
    parallel, history = mesh_run("fsdp=4")
    state = history[-1][0]
    for path, kernel in jax.tree_util.tree_leaves_with_path(state.params):
        if path[-1].key in ("kernel", "embedding"):
            assert "fsdp" in jax.tree.leaves(tuple(kernel.sharding.spec)), path
            assert kernel.addressable_shards[0].data.size * 4 == kernel.size, path
    data_state = mesh_run("data=4")[1][-1][0]  # every device holds everything
    assert per_device_bytes(data_state.params) == sum(
        leaf.nbytes for leaf in jax.tree.leaves(data_state.params)
    )
    ratio = per_device_bytes((state.params, state.opt_state)) / per_device_bytes(
        (data_state.params, data_state.opt_state)
    )
    assert ratio <= 0.3


@pytest.mark.parametrize("target", ["1 device", "2 devices"])
def test_a_checkpoint_from_4_devices_resumes_on_fewer(target, tmp_path, reference):
    source, history = mesh_run("fsdp=4")
    checkpointer = Checkpointer(str(tmp_path), save_every=1, async_save=False)
    checkpointer.save(1, history[0][0])  # sharded arrays, as they lie
    devices = jax.devices()[: 1 if target == "1 device" else 2]
    layout = "data=1" if target == "1 device" else "fsdp=2"
    family = make_family(CONFIG, VOCAB)
    parallel = mesh.MeshParallel(family, CONFIG, mesh.make_mesh(layout, devices))
    state = parallel.place_state(checkpointer.restore(parallel.state_template()))
    assert {d for leaf in jax.tree.leaves(state) for d in leaf.devices()} == set(devices)
    batch = jax.device_put(batches()[1], parallel.batch_sharding)
    resumed = parallel.train_step(state, batch, DROPOUT_RNG)
    assert_same_step(jax.device_get(resumed), reference[1])
    checkpointer.close()


def state_arrays(state):
    """The arrays of a TrainState on the host (its static fields differ between runs)."""
    return jax.device_get((state.step, state.params, state.opt_state))


def assert_same_arrays(state, expected_state):
    jax.tree.map(np.testing.assert_array_equal, state_arrays(state), state_arrays(expected_state))


def test_pmap_and_mesh_checkpoints_restore_into_each_other(tmp_path, reference, family):
    host_state = reference[0][0]  # what the pmap path saves: one copy, on the host
    pmap_dir, mesh_dir = tmp_path / "pmap", tmp_path / "mesh"
    saver = Checkpointer(str(pmap_dir), save_every=1, async_save=False)
    saver.save(1, host_state)
    saver.close()
    parallel, history = mesh_run("fsdp=4")
    on_mesh = Checkpointer(str(pmap_dir), save_every=1).restore(parallel.state_template())
    assert_same_arrays(on_mesh, host_state)
    for leaf, sharding in zip(
        jax.tree.leaves(on_mesh), jax.tree.leaves(parallel.state_shardings), strict=True
    ):
        assert leaf.sharding == sharding

    saver = Checkpointer(str(mesh_dir), save_every=1, async_save=False)
    saver.save(1, history[0][0])
    saver.close()
    template = jax.device_get(create_train_state(family, CONFIG, jax.random.key(1)))
    on_host = Checkpointer(str(mesh_dir), save_every=1).restore(template)
    assert_same_arrays(on_host, history[0][0])


@pytest.mark.parametrize(
    ("shape", "problem"),
    [
        ("data=3", "asks for 3 devices"),
        ("data=-1,fsdp=-1", "at most one may be -1"),
        ("data=-1,fsdp=3", "do not divide"),
        ("pipeline=4", "unknown axis 'pipeline'"),
        ("data=two", "integer size"),
    ],
)
def test_a_mesh_shape_that_cannot_work_is_a_config_error(shape, problem):
    with pytest.raises(ConfigError, match=problem):
        mesh.parse_mesh_shape(shape, device_count=4)


def test_mesh_shape_fills_the_rest():
    assert mesh.parse_mesh_shape("data=-1,tensor=2", 4) == {"data": 2, "fsdp": 1, "tensor": 2}
    assert math.prod(mesh.make_mesh("fsdp=-1").shape.values()) == 4


def unnamed_weights(family) -> list[str]:
    """Paths of the kernels and embedding tables (2-D or more) without logical axis names."""
    inputs = family.model_inputs(jax.tree.map(np.asarray, family.example_batch()))
    boxed = jax.eval_shape(family.module.init, jax.random.key(0), **inputs)["params"]
    leaves = jax.tree_util.tree_leaves_with_path(
        boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned)
    )
    return [
        jax.tree_util.keystr(path)
        for path, leaf in leaves
        if not isinstance(leaf, nn.Partitioned) and len(leaf.shape) >= 2
    ]


# What some families need beyond the default config to be built at all.
FAMILY_SETTINGS = {
    "encoder_classifier": {"class_labels": "neg,pos"},
    "vit": {"dataset": "shapes"},
    "image_captioning": {"dataset": "shapes"},
}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_family_names_the_axes_of_its_weights(name):
    config = get_config()
    config.update(model=name, d_model=32, num_heads=2, d_ff=64, **FAMILY_SETTINGS.get(name, {}))
    assert unnamed_weights(make_family(config, VOCAB)) == []
