"""Run the benchmark suite on this machine: one table, then one key=value line per headline.

    python benchmarks/run.py                   # everything (~10 minutes on a 2-core CPU)
    python benchmarks/run.py --only train      # one part: train, lm, compile, memory, sharding, ...
    python benchmarks/run.py --only default_seeds   # on request only (~10 minutes)
    python benchmarks/run.py --only recurrence      # on request only (10-17 minutes, estimated)
    python benchmarks/run.py --only variants        # on request only (~5 minutes)

Parts:
  train    train step on the bench workload vs the PyTorch peer (alternated,
           medians), model FLOPs per step, achieved FLOP/s, MFU against a
           matmul ceiling measured in the same run
  lm       decoder-only LM train step vs the PyTorch GPT peer on two workloads
           (benchmarks/lm_speed.py): tokens/s ratio and MFU
  compile  compile time of the train step at 2 and 12 layers, scanned and not
  memory   peak memory of a 12-layer model with each remat policy
  bert     BERT-mini masked-LM train step vs transformers' BertForMaskedLM (torch)
           (benchmarks/bert_speed.py): bert_ratio_vs_torch
  sharding per-device bytes of parameters + optimizer state of a 12+12-layer model,
           data parallel vs FSDP on 4 fake devices, and the step time of both
  decode   benchmarks/decode_speed.py, when present
  data     benchmarks/data_pipeline.py, when present
  default_seeds  `python train.py` (the default run) for seeds 0, 1 and 2: min, median
           and max exact match and wall time (benchmarks/default_seeds.py); it measures
           the default run's quality, not the speed, so it runs only with --only
  recurrence  the Transformer vs RNN, LSTM and GRU networks: step time against length,
           reversal exact match against length, gradient norm against distance
           (benchmarks/recurrence.py); a teaching comparison that trains 19 small
           models, so it runs only with --only
  variants the decoder-only LM with the 2017 blocks, RoPE, RoPE + RMSNorm + SwiGLU, and
           that with 2 KV heads: held-out loss, train and decode tokens/s, cache bytes
           (benchmarks/variants.py); it trains 4 models, so it runs only with --only

The peer needs torch (`pip install torch==2.13.0`, the `bench` extra); without
it the train part reports our side alone. The suite restarts itself with
glibc malloc settings that let both sides reuse their big per-step buffers
(benchmarks/host_malloc.py; `--system-malloc` keeps the defaults). Every run
writes its results, with the machine, versions and settings, to
benchmarks/results/<time>.json so runs can be compared.
"""

import argparse
import datetime
import functools
import importlib
import json
import os
import platform
import subprocess
import sys
import time

import bert_speed
import compile_time
import default_seeds
import host_malloc
import jax
import lm_speed
import memory
import recurrence
import sharding
import train_speed
import variants
import workload

HERE = os.path.dirname(os.path.abspath(__file__))
PARTS = {
    "train": train_speed.run,
    "lm": lm_speed.run,
    "compile": compile_time.run,
    "memory": memory.run,
    "bert": bert_speed.run,
    "sharding": sharding.run,
}
OPTIONAL_PARTS = {"decode": "decode_speed", "data": "data_pipeline"}  # other people's modules
# Run with --only, never by default: each trains models for minutes.
ON_REQUEST_PARTS = {
    "default_seeds": default_seeds.run,
    "recurrence": recurrence.run,
    "variants": variants.run,
}
HEADLINES = (
    "train_ratio_vs_torch",
    "mfu",
    "lm_ratio_vs_torch",
    "lm_mfu",
    "bert_ratio_vs_torch",
    "compile_ratio_12_vs_2",
    "remat_full_peak_ratio",
    "fsdp_state_bytes_ratio",
    "decode_cache_speedup",
    "default_seeds_exact_match_min",
    "default_seeds_exact_match_median",
    "default_seeds_exact_match_max",
    "default_seeds_wall_s_max",
    "transformer_vs_lstm_speed_at_256",
    "reverse_exact_match_len64_transformer",
    "reverse_exact_match_len64_lstm_attention",
    "reverse_exact_match_len64_lstm_plain",
)


def optional_part(module_name: str):
    """benchmarks/<module_name>.py's `run`, a runner of the script if it has none, or None."""
    path = os.path.join(HERE, f"{module_name}.py")
    if not os.path.exists(path):
        return None
    module = importlib.import_module(module_name)
    return getattr(module, "run", None) or functools.partial(run_script, path)


def run_script(path: str) -> dict:
    """A part without `run() -> dict`: run it as a script, echo and keep what it prints."""
    command = [sys.executable, path]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    print(output, end="", flush=True)
    return {"output": output.splitlines()}


def flatten(values: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}: nested results become table rows."""
    flat = {}
    for name, value in values.items():
        if isinstance(value, dict):
            flat |= flatten(value, f"{prefix}{name}.")
        else:
            flat[prefix + name] = value
    return flat


def environment() -> dict:
    device = jax.devices()[0]
    return {
        "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device.device_kind,
        "platform": device.platform,
        "device_count": jax.device_count(),
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jax.lib.__version__,
        "prng_impl": workload.prng_impl(),
        "malloc": {name: os.environ.get(name) for name in host_malloc.SETTINGS},
    }


def print_table(results: dict) -> None:
    """One row per number or label; printed outputs (lists of lines) were echoed already."""
    rows = [
        (part, name, value)
        for part, values in results.items()
        for name, value in flatten(values).items()
        if not isinstance(value, list)
    ]
    width = max(len(name) for _, name, _ in rows)
    print(f"\n{'part':8s} {'metric':{width}s} value")
    for part, name, value in rows:
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        print(f"{part:8s} {name:{width}s} {shown}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--only", choices=[*PARTS, *OPTIONAL_PARTS, *ON_REQUEST_PARTS], help="run one part"
    )
    parser.add_argument("--out", default=os.path.join(HERE, "results"), help="JSON directory")
    parser.add_argument("--peer", default=train_speed.PEER, help="the PyTorch peer script")
    parser.add_argument(
        "--system-malloc", action="store_true", help="keep glibc's default malloc settings"
    )
    args = parser.parse_args()
    if not args.system_malloc:
        host_malloc.restart_with_reused_heap()

    parts = dict(PARTS, train=functools.partial(train_speed.run, peer=args.peer))
    for name, module_name in OPTIONAL_PARTS.items():
        part = optional_part(module_name)
        if part is not None:
            parts[name] = part
        elif args.only == name:
            sys.exit(f"benchmarks/{module_name}.py does not exist yet")
    if args.only:
        parts = {args.only: {**parts, **ON_REQUEST_PARTS}[args.only]}

    results, seconds = {}, {}
    for name, part in parts.items():
        print(f"== {name}", flush=True)
        start = time.perf_counter()
        results[name] = part()
        seconds[name] = time.perf_counter() - start

    print_table(results)
    os.makedirs(args.out, exist_ok=True)
    record = {"environment": environment(), "seconds": seconds, "results": results}
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = os.path.join(args.out, f"{stamp}.json")
    with open(path, "w") as f:
        json.dump(record, f, indent=2)
    print(f"\nresults: {path}")
    flat = {name: value for values in results.values() for name, value in flatten(values).items()}
    for name in HEADLINES:
        if name in flat:
            print(f"{name}={flat[name]:.3f}")


if __name__ == "__main__":
    main()
