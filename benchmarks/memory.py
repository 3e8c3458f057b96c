"""Peak memory of training a 12-layer model with each rematerialisation policy.

A high-water mark only rises, so every policy runs in a fresh process
(`python benchmarks/memory.py --remat full` prints one JSON line), with
glibc's default malloc settings: the suite's heap-reuse settings
(host_malloc.py) never hand memory back, so compilation's high-water mark
would hide the step's. Two figures per policy:

- peak: on CPU the process's peak resident set (VmHWM) while it compiles and
  then runs 3 train steps; on GPU/TPU the device allocator's peak_bytes_in_use;
- xla_temp: the scratch memory XLA's buffer assignment gives the compiled step
  (activations kept for the backward pass and temporaries), from
  `compiled.memory_analysis()`: exact and free of allocator noise.
"""

import argparse
import json
import os
import resource
import subprocess
import sys

import host_malloc
import jax
import workload

DEPTH = 12
POLICIES = ("none", "full", "dots_saveable")
MB = 2**20


def peak_bytes() -> int:
    """This process's peak: the device allocator's when it reports one, else the host RSS."""
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"]
    return host_peak_bytes()


def host_peak_bytes() -> int:
    """Peak resident set of this process image: VmHWM where /proc has it.

    Not getrusage's ru_maxrss: that survives exec, so a probe started from a
    big parent (the suite, after the train part) reports the parent's size.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def measure(remat_policy: str, depth: int = DEPTH, steps: int = 3) -> dict:
    config = workload.model_config(
        num_encoder_layers=depth,
        num_decoder_layers=depth,
        scan_layers=True,
        remat_policy=remat_policy,
    )
    batch = workload.make_batch(config)
    state = workload.make_state(config, batch)
    rng = workload.dropout_key()
    step = workload.jitted_train_step().lower(state, batch, rng).compile()
    for _ in range(steps):
        state, metrics = step(state, batch, rng)
    jax.block_until_ready((state, metrics))
    return {
        "peak_mb": peak_bytes() / MB,
        "xla_temp_mb": step.memory_analysis().temp_size_in_bytes / MB,
    }


def run() -> dict:
    """Each policy in its own process; sizes in MiB."""
    results = {}
    env = {name: value for name, value in os.environ.items() if name not in host_malloc.SETTINGS}
    for policy in POLICIES:
        command = [sys.executable, __file__, "--remat", policy]
        probe = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
        measured = json.loads(probe.stdout.strip().splitlines()[-1])
        for name, value in measured.items():
            results[f"{name}_{DEPTH}_layers_remat_{policy}"] = value
    results["remat_full_peak_ratio"] = (
        results[f"peak_mb_{DEPTH}_layers_remat_full"]
        / results[f"peak_mb_{DEPTH}_layers_remat_none"]
    )
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--remat", choices=POLICIES, default="none")
    parser.add_argument("--depth", type=int, default=DEPTH)
    args = parser.parse_args()
    print(json.dumps(measure(args.remat, args.depth)))
