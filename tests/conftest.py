"""Test set-up: four fake CPU devices (pmap runs as on a real host), shared fixtures.

Nothing here imports jax: the XLA flags below must be set before it is.
"""

import os
import tempfile

import pytest
from tiny_training import LEARNING_RUN, run_train_py

# Must happen before jax is imported anywhere in the test session.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
).strip()
# Identical programs compiled by several tests (and by train.py subprocesses) compile once.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "flaxformer_lite_jax_cache")
)
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """`python train.py` of the tiny model learning to copy: (workdir, completed process).

    Trained once per session; the train-loop tests read its output and files, the
    translate tests decode with its parameters (a model whose outputs differ by input).
    """
    workdir = tmp_path_factory.mktemp("trained") / "run"
    flags = [f"--config.{key}={value}" for key, value in LEARNING_RUN.items()]
    result = run_train_py(f"--workdir={workdir}", *flags)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir, result
