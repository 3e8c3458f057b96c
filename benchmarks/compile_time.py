"""Compile time of the train step at depth 2 and 12, with and without `nn.scan`.

"Depth N" is N encoder + N decoder layers of the bench width. The time is
what a user waits for before the first step: trace, lower and compile
`train_step` from shapes alone (no parameters are allocated). Each
measurement builds a fresh model and a fresh `jax.jit`, so nothing is reused
from the one before; the persistent compilation cache is off unless the
environment turns it on (JAX_COMPILATION_CACHE_DIR).
"""

import statistics
import time

import workload

DEPTHS = (2, 12)


def compile_seconds(depth: int, scan_layers: bool) -> float:
    config = workload.model_config(
        num_encoder_layers=depth, num_decoder_layers=depth, scan_layers=scan_layers
    )
    batch = workload.make_batch(config)
    start = time.perf_counter()
    state = workload.state_shapes(config, batch)
    workload.jitted_train_step().lower(state, batch, workload.dropout_key()).compile()
    return time.perf_counter() - start


def run(rounds: int = 3, loop_rounds: int = 1) -> dict:
    """Alternates the depths; scanned stacks `rounds` times, Python-loop stacks `loop_rounds`."""
    results = {}
    for scan_layers, repeats in ((True, rounds), (False, loop_rounds)):
        stack = "scan" if scan_layers else "loop"
        seconds = {depth: [] for depth in DEPTHS}
        for _ in range(repeats):
            for depth in DEPTHS:
                seconds[depth].append(compile_seconds(depth, scan_layers))
        for depth in DEPTHS:
            results[f"compile_s_{stack}_{depth}_layers"] = statistics.median(seconds[depth])
            print(f"  {stack} {depth} layers: {seconds[depth]}", flush=True)
        results[f"compile_ratio_12_vs_2_{stack}"] = (
            results[f"compile_s_{stack}_12_layers"] / results[f"compile_s_{stack}_2_layers"]
        )
    results["compile_ratio_12_vs_2"] = results["compile_ratio_12_vs_2_scan"]
    return results
