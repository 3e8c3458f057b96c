"""Test set-up: four fake CPU devices, so pmap code runs as it would on a host."""

import os
import tempfile

# Must happen before jax is imported anywhere in the test session.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
).strip()
# Identical programs compiled by several tests (and by train.py subprocesses) compile once.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "flaxformer_lite_jax_cache")
)
os.environ.setdefault("MPLBACKEND", "Agg")
