"""What FSDP saves: per-device bytes of parameters + optimizer state, data parallel vs FSDP.

A 12+12-layer encoder-decoder (d_model 256) is trained for a few steps on 4 fake CPU
devices under `parallelism="mesh"`, once as `data=4` (every device holds a full copy)
and once as `fsdp=4` (every large array split four ways along its "embed" axis).
Bytes are counted from the shards each device really holds; the step time is the
median of a few steps after the compiled one. On CPU the four "devices" share the
host's cores, so the times compare the two layouts' extra work, not a speed-up.

    python benchmarks/sharding.py         # one JSON line (needs 4 devices: run() sets them)
"""

import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DEVICES = 4
LAYOUTS = {"data_parallel": "data=4", "fsdp": "fsdp=4"}
MB = 2**20


def model_config():
    from configs.default import get_config

    config = get_config()
    config.update(
        d_model=256,
        num_heads=4,
        d_ff=1024,
        num_encoder_layers=12,
        num_decoder_layers=12,
        scan_layers=True,  # one compiled layer per stack: compiles in seconds, not minutes
        max_source_length=32,
        max_target_length=32,
        max_decode_length=32,
        per_device_batch_size=4,
        parallelism="mesh",
    )
    return config


def per_device_bytes(tree) -> int:
    """Bytes of the shards that the first device holds."""
    import jax

    first = jax.devices()[0]
    total = 0
    for leaf in jax.tree.leaves(tree):
        total += sum(
            shard.data.nbytes for shard in leaf.addressable_shards if shard.device == first
        )
    return total


def measure(layout: str, steps: int = 3) -> dict:
    import jax
    import numpy as np

    from flaxformer_lite.families import make_family
    from flaxformer_lite.training import mesh

    config = model_config()
    vocab_size = 512
    family = make_family(config, vocab_size)
    parallel = mesh.MeshParallel(family, config, mesh.make_mesh(layout))
    state = parallel.init_state(jax.random.key(0))
    rows = config.per_device_batch_size * DEVICES
    tokens = np.random.default_rng(0).integers(4, vocab_size, (rows, config.max_target_length))
    batch = jax.device_put(
        {"inputs": tokens.astype(np.int32), "targets": tokens[:, ::-1].astype(np.int32)},
        parallel.batch_sharding,
    )
    rng = jax.random.key(1)
    state, metrics = parallel.train_step(state, batch, rng)  # compiles
    jax.block_until_ready(metrics)
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        state, metrics = parallel.train_step(state, batch, rng)
        jax.block_until_ready(metrics)
        seconds.append(time.perf_counter() - start)
    return {
        "state_mb_per_device": per_device_bytes((state.params, state.opt_state)) / MB,
        "step_s": statistics.median(seconds),
    }


def run() -> dict:
    """Both layouts in one 4-device process (the suite's own process may have one device)."""
    environment = dict(os.environ)
    flags = [
        flag
        for flag in environment.get("XLA_FLAGS", "").split()
        if not flag.startswith("--xla_force_host_platform_device_count")
    ]
    environment["XLA_FLAGS"] = " ".join(
        [*flags, f"--xla_force_host_platform_device_count={DEVICES}"]
    )
    command = [sys.executable, __file__]
    probe = subprocess.run(
        command,
        capture_output=True,
        text=True,
        check=True,
        env=environment,
        cwd=os.path.dirname(HERE),
    )
    results = json.loads(probe.stdout.strip().splitlines()[-1])
    results["fsdp_state_bytes_ratio"] = (
        results["fsdp"]["state_mb_per_device"] / results["data_parallel"]["state_mb_per_device"]
    )
    print(f"fsdp_state_bytes_ratio={results['fsdp_state_bytes_ratio']:.3f}", flush=True)
    return results


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(HERE))  # configs/ and flaxformer_lite/
    print(json.dumps({name: measure(layout) for name, layout in LAYOUTS.items()}))
