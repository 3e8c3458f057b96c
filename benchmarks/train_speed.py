"""Train-step speed on the bench workload: ours vs the PyTorch peer, FLOP/s and MFU.

The two are alternated round by round (ours, peer, matmul ceiling, ours, ...)
and compared by their medians, so both see the same machine load. Each round
times `steps` consecutive steps after the compile and warm-up, as the peer
does: the figure is wall time per step, dispatch included, one
`block_until_ready` at the end (no host sync inside the loop).
"""

import os
import re
import statistics
import subprocess
import sys
import time

import jax
import workload

from flaxformer_lite import flops

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEER = os.path.join(os.path.dirname(REPO), "shared", "bench", "peer_torch.py")


def time_steps(step, state, batch, rng, steps: int):
    """(seconds per step, state) over `steps` back-to-back steps."""
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = step(state, batch, rng)
    jax.block_until_ready((state, metrics))
    return (time.perf_counter() - start) / steps, state


def time_peer(peer: str, steps: int) -> float:
    """Seconds per step of the PyTorch peer, run in its own process (3 warm-up steps)."""
    result = subprocess.run(
        [sys.executable, peer, "--steps", str(steps)], capture_output=True, text=True, check=True
    )
    return float(re.search(r"step_s=([0-9.]+)", result.stdout).group(1))


def peer_available(peer: str) -> str | None:
    """None if the peer can run, else why not."""
    if not os.path.exists(peer):
        return f"no peer script at {peer}"
    try:
        import torch  # noqa: F401
    except ImportError:
        return "torch is not installed (pip install torch==2.13.0, the `bench` extra)"
    return None


def run(rounds: int = 7, steps: int = 10, peer: str = PEER) -> dict:
    config = workload.model_config()
    batch = workload.make_batch(config)
    state = workload.make_state(config, batch)
    rng = workload.dropout_key()
    step = workload.jitted_train_step()
    state = step(state, batch, rng)[0]  # compile
    _, state = time_steps(step, state, batch, rng, 3)  # warm up, as the peer does

    why_no_peer = peer_available(peer)
    if why_no_peer:
        print(f"train_speed: skipping the PyTorch peer: {why_no_peer}", flush=True)
    dtype = config.compute_dtype.name
    ours, theirs, ceilings = [], [], []
    for index in range(rounds):
        seconds, state = time_steps(step, state, batch, rng, steps)
        ours.append(seconds)
        if not why_no_peer:
            theirs.append(time_peer(peer, steps))
        ceilings.append(flops.measure_matmul_flops(dtype))
        peer_note = f", torch {theirs[-1]:.3f}" if theirs else ""
        print(f"  round {index + 1}/{rounds}: ours {ours[-1]:.3f} s/step{peer_note}", flush=True)

    tokens = workload.BATCH_SIZE * workload.LENGTH  # target tokens per step
    step_seconds = statistics.median(ours)
    flops_per_step = flops.train_step_flops(
        config, workload.BATCH_SIZE, workload.LENGTH, workload.LENGTH
    )
    achieved = flops_per_step / step_seconds
    device = jax.devices()[0]
    peak = flops.table_peak_flops(device.device_kind)
    ceiling = statistics.median(ceilings)
    results = {
        "step_s": step_seconds,
        "tgt_tokens_per_s": tokens / step_seconds,
        "model_gflop_per_step": flops_per_step / 1e9,
        "achieved_gflop_per_s": achieved / 1e9,
        f"matmul_ceiling_gflop_per_s_{dtype}": ceiling / 1e9,
        "mfu": achieved / ceiling,  # against the ceiling measured here, every device
    }
    if peak is not None:
        results["mfu_vs_datasheet_peak"] = achieved / peak
    if theirs:
        results["torch_step_s"] = statistics.median(theirs)
        results["torch_tgt_tokens_per_s"] = tokens / results["torch_step_s"]
        results["train_ratio_vs_torch"] = results["torch_step_s"] / step_seconds
    return results
