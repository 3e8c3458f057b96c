"""A real multi-process job: 2 local processes x 2 CPU devices, joined by jax.distributed.

The processes run train.py through scripts/launch_local.py and must end where one
process with 4 devices ends on the same global batches (each step's batch is the two
hosts' batches together). A process that dies must make the other fail, not hang.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from tiny_training import REPO, TINY_TRAINING

from configs.default import get_config
from flaxformer_lite.data import create_datasets
from flaxformer_lite.families import make_family
from flaxformer_lite.training import mesh
from flaxformer_lite.training.checkpoint import Checkpointer, restore_params
from flaxformer_lite.training.metrics import summarize

STEPS = 4
LAYOUT = "data=2,fsdp=2"
RUN = dict(
    TINY_TRAINING,
    num_train_steps=STEPS,
    log_every_steps=STEPS,
    eval_every_steps=STEPS,
    checkpoint_every_steps=STEPS,
    num_eval_examples=16,
    num_print_examples=0,
    parallelism="mesh",
    mesh_shape=LAYOUT,
    # A key bias's gradient is rounding noise (it cannot change attention); Adam's default
    # epsilon 1e-9 would turn that noise into full-size updates that differ by layout.
    adam_eps=1e-3,
)


def train_flags(workdir, **changes) -> list[str]:
    settings = dict(RUN, **changes)
    return [f"--workdir={workdir}", *(f"--config.{key}={value}" for key, value in settings.items())]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """scripts/launch_local.py: 2 processes x 2 devices, STEPS steps. (workdir, output)."""
    workdir = tmp_path_factory.mktemp("two_processes") / "run"
    command = [
        sys.executable,
        "scripts/launch_local.py",
        "--num_processes=2",
        "--devices_per_process=2",
        "--",
        *train_flags(workdir),
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir, result.stdout


def final_value(output: str, key: str) -> float:
    final = [line for line in output.splitlines() if line.startswith("final:")]
    assert len(final) == 1, output[-2000:]  # process 0 alone prints it
    return float(re.search(rf"\b{key}=(\S+)", final[0]).group(1))


def one_process_reference(workdir):
    """The same STEPS steps in this process on 4 devices, fed both hosts' batches each step."""
    config = get_config()
    config.update(RUN)
    hosts = [
        create_datasets(config, str(workdir), 2, process_index=index, process_count=2)
        for index in range(2)
    ]
    family = make_family(config, hosts[0].tokenizer.vocab_size)
    parallel = mesh.MeshParallel(family, config, mesh.make_mesh(LAYOUT))
    state = parallel.init_state(jax.random.key(config.seed))
    rng = jax.random.key(config.seed)
    metrics = []
    for _ in range(STEPS):
        host_batches = [next(host.train_iter) for host in hosts]  # (2 devices, B, L) each
        batch = jax.tree.map(
            lambda *rows: np.concatenate([r.reshape(-1, r.shape[-1]) for r in rows]),
            *host_batches,
        )
        state, step_metrics = parallel.train_step(
            state, jax.device_put(batch, parallel.batch_sharding), rng
        )
        metrics.append(jax.device_get(step_metrics))
    return parallel, jax.device_get(state.params), summarize(metrics)["loss"]


def test_two_processes_end_where_one_process_with_four_devices_ends(two_process_run, tmp_path):
    workdir, output = two_process_run
    parallel, params, train_loss = one_process_reference(tmp_path)
    np.testing.assert_allclose(final_value(output, "train_loss"), train_loss, rtol=1e-5)
    # Written by both processes together, read into this process's 4-device layout.
    saved = Checkpointer(str(workdir), save_every=STEPS).restore(parallel.state_template()).params
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), saved, params)
    # ... and read by the inference tools (generate, translate, caption) onto one device.
    for_inference = restore_params(str(workdir))
    jax.tree.map(np.testing.assert_array_equal, for_inference, jax.device_get(saved))


def test_only_process_zero_logs(two_process_run):
    _, output = two_process_run
    assert output.count("Training steps") == 1
    assert output.count("final:") == 1


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


HEARTBEAT_SECONDS = 10


def test_a_dead_process_makes_the_other_fail_instead_of_hanging(tmp_path):
    environment = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
        JAX_COORDINATOR_ADDRESS=f"localhost:{free_port()}",
        JAX_NUM_PROCESSES="2",
    )
    flags = train_flags(
        tmp_path / "run",
        num_train_steps=100_000,  # far more than the test waits for
        distributed=True,
        heartbeat_timeout_seconds=HEARTBEAT_SECONDS,
    )
    logs = [tmp_path / f"process_{index}.log" for index in range(2)]
    processes = [
        subprocess.Popen(
            [sys.executable, "train.py", *flags],
            cwd=REPO,
            env=dict(environment, JAX_PROCESS_ID=str(index)),
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
        )
        for index, log in enumerate(logs)
    ]
    survivor, victim = processes
    try:
        # Process 0 says when training has begun; then both exchange gradients every step.
        while "Training steps" not in logs[0].read_text():
            assert survivor.poll() is None, logs[0].read_text()[-3000:]
            time.sleep(0.5)
        time.sleep(2)
        victim.send_signal(signal.SIGKILL)
        started = time.monotonic()
        survivor.wait(timeout=HEARTBEAT_SECONDS * 6)
        waited = time.monotonic() - started
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    output = logs[0].read_text()
    assert survivor.returncode != 0
    assert waited < HEARTBEAT_SECONDS * 6
    assert re.search(r"(?i)heartbeat|unavailable|connection|peer|task.*(fail|died)", output), (
        output[-3000:]
    )
