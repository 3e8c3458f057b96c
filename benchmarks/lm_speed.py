"""Decoder-only LM train step: ours vs the PyTorch GPT peer, tokens/s and MFU.

The peer is `shared/bench/peer_torch_gpt.py`: pre-LN blocks, causal
`scaled_dot_product_attention`, GELU MLP of width 4d, learned positions, an
output layer tied to the token embedding, AdamW(betas 0.9, 0.99), dropout 0,
float32, biases on every linear layer but the head and on the layer norms.
Ours is the same network from this library's layers (`DecoderOnlyTransformer`)
trained by the trainer's own pure `train_step` with its own optimizer.
Differences that remain, each on our side of the scale: our step also
clips the gradient by its global norm and computes the metrics the trainer
logs (accuracy, unsmoothed NLL); our GELU is the tanh approximation, torch's
the exact erf form (one elementwise pass either way).

Two workloads, both character-level (vocabulary 65, as nanoGPT's Shakespeare):

    small  nanoGPT's CPU size: 4 layers, 4 heads, d_model 128, context 64, batch 12
    large  6 layers, 6 heads, d_model 384, context 256, batch 8 (the headline)

As in train_speed.py, the two sides alternate round by round and are compared
by their medians; each round times back-to-back steps after compile and
warm-up, with one `block_until_ready` at the end.

    python benchmarks/run.py --only lm        # the suite part, with malloc settings
    python benchmarks/lm_speed.py --levers    # what each benchmark-only setting gives
"""

import argparse
import dataclasses
import functools
import os
import re
import statistics
import subprocess
import sys
import time

import jax
import ml_collections
import numpy as np
import train_speed
from flax.training.train_state import TrainState

from flaxformer_lite import TransformerConfig, flops
from flaxformer_lite.families.decoder_only import DecoderOnly
from flaxformer_lite.training.optimizer import make_optimizer
from flaxformer_lite.training.step import train_step

PEER = train_speed.PEER.replace("peer_torch.py", "peer_torch_gpt.py")
VOCAB_SIZE = 65


@dataclasses.dataclass(frozen=True)
class Workload:
    layers: int
    heads: int
    d_model: int
    length: int  # context: tokens per row
    batch: int
    steps: int  # timed steps per round (a round lasts a few seconds)

    @property
    def tokens_per_step(self) -> int:
        return self.batch * self.length

    def peer_arguments(self) -> list[str]:
        sizes = dict(vocab=VOCAB_SIZE, d=self.d_model, heads=self.heads, layers=self.layers)
        sizes |= dict(len=self.length, batch=self.batch, steps=self.steps)
        return [f"--{name}={value}" for name, value in sizes.items()]


WORKLOADS = {
    "small": Workload(layers=4, heads=4, d_model=128, length=64, batch=12, steps=30),
    "large": Workload(layers=6, heads=6, d_model=384, length=256, batch=8, steps=5),
}


def model_config(workload: Workload, **changes) -> TransformerConfig:
    """The peer's GPT in this library's terms; `changes` switch levers on and off."""
    config = TransformerConfig(
        vocab_size=VOCAB_SIZE,
        d_model=workload.d_model,
        num_heads=workload.heads,
        d_ff=4 * workload.d_model,
        num_decoder_layers=workload.layers,
        dropout_rate=0.0,  # the peer's default
        max_len=workload.length,
        norm_placement="pre",
        mlp="gelu_tanh",
        position_encoding="learned",
        tie_output_embedding=True,
        matmul_backward="cpu_row_major",  # benchmark-only: the CPU-tuned weight gradients
    )
    return config.replace(**changes)


def optimizer_config(config: TransformerConfig) -> ml_collections.ConfigDict:
    """The trainer's optimizer at the peer's AdamW settings (torch's defaults but the betas)."""
    return ml_collections.ConfigDict(
        {
            "schedule": "cosine",
            "learning_rate": 1e-3,
            "warmup_steps": 100,
            "num_train_steps": 5000,
            "d_model": config.d_model,
            "adam_b1": 0.9,
            "adam_b2": 0.99,
            "adam_eps": 1e-8,
            "weight_decay": 0.01,
            "grad_clip_norm": 1.0,
        }
    )


class OurStep:
    """Our compiled train step on one workload, with its state, ready to time."""

    def __init__(self, workload: Workload, **changes):
        config = model_config(workload, **changes)
        self.family = DecoderOnly(
            model_config=config, max_length=workload.length, max_decode_length=workload.length
        )
        ids = np.random.default_rng(0).integers(1, VOCAB_SIZE, (workload.batch, workload.length))
        self.batch = {"targets": jax.numpy.asarray(ids, jax.numpy.int32)}  # no PAD: all real
        params = self.family.init_params(jax.random.key(0))
        tx = make_optimizer(optimizer_config(config))
        self.state = TrainState.create(apply_fn=None, params=params, tx=tx)
        self.rng = jax.random.key(1)  # dropout is 0: the key goes unused
        self.step = jax.jit(functools.partial(train_step, family=self.family), donate_argnums=(0,))
        self.time(3)  # compile and warm up, as the peer warms up

    def time(self, steps: int) -> float:
        """Seconds per step over `steps` back-to-back steps."""
        start = time.perf_counter()
        for _ in range(steps):
            self.state, metrics = self.step(self.state, self.batch, self.rng)
        jax.block_until_ready((self.state, metrics))
        return (time.perf_counter() - start) / steps


def time_peer(workload: Workload, peer: str = PEER) -> float:
    """Seconds per step of the PyTorch peer, run in its own process (3 warm-up steps)."""
    command = [sys.executable, peer, *workload.peer_arguments()]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return float(re.search(r"step_s=([0-9.]+)", output).group(1))


def compare(name: str, workload: Workload, rounds: int, peer: str) -> dict:
    """Alternate ours, the peer and the matmul ceiling for `rounds` rounds; medians."""
    ours_step = OurStep(workload)
    why_no_peer = train_speed.peer_available(peer)
    if why_no_peer:
        print(f"lm_speed: skipping the PyTorch peer: {why_no_peer}", flush=True)
    ours, theirs, ceilings, loads = [], [], [], []
    for index in range(rounds):
        loads.append(os.getloadavg()[0])  # other jobs share the cores: say how busy they were
        ours.append(ours_step.time(workload.steps))
        if not why_no_peer:
            theirs.append(time_peer(workload, peer))
        ceilings.append(flops.measure_matmul_flops("float32"))
        peer_note = f", torch {theirs[-1]:.4f}" if theirs else ""
        print(f"  {name} round {index + 1}/{rounds}: ours {ours[-1]:.4f} s/step{peer_note}")

    step_seconds = statistics.median(ours)
    flops_per_step = ours_step.family.train_step_flops(workload.batch)
    achieved = flops_per_step / step_seconds
    results = {
        "step_s": step_seconds,
        "step_s_range": [min(ours), max(ours)],
        "tokens_per_s": workload.tokens_per_step / step_seconds,
        "model_gflop_per_step": flops_per_step / 1e9,
        "achieved_gflop_per_s": achieved / 1e9,
        "matmul_ceiling_gflop_per_s_float32": statistics.median(ceilings) / 1e9,
        "mfu": achieved / statistics.median(ceilings),
        "load_average_per_round": loads,
    }
    if theirs:
        peer_seconds = statistics.median(theirs)
        results["torch_step_s"] = peer_seconds
        results["torch_step_s_range"] = [min(theirs), max(theirs)]
        results["torch_tokens_per_s"] = workload.tokens_per_step / peer_seconds
        results["ratio_vs_torch"] = peer_seconds / step_seconds
        results["ratio_per_round"] = [p / o for o, p in zip(ours, theirs, strict=True)]
    return results


def run(rounds: int = 5, peer: str = PEER) -> dict:
    """Both workloads; the headline `lm_ratio_vs_torch` and `lm_mfu` are the large one's."""
    results = {name: compare(name, workload, rounds, peer) for name, workload in WORKLOADS.items()}
    headline = results["large"]
    results["lm_mfu"] = headline["mfu"]
    if "ratio_vs_torch" in headline:
        results["lm_ratio_vs_torch"] = headline["ratio_vs_torch"]
        results["lm_small_ratio_vs_torch"] = results["small"]["ratio_vs_torch"]
    return results


LEVERS = {
    "matmul_backward=autodiff": dict(matmul_backward="autodiff"),
    "attention_implementation=explicit": dict(attention_implementation="explicit"),
}


def measure_levers(rounds: int, workload_names=tuple(WORKLOADS)) -> None:
    """Each benchmark-only setting switched off alone, compiled in this process, alternated.

    Prints wall and CPU seconds per step (this process's CPU time, which ranks
    candidates more stably than wall time when other jobs load the cores).
    """
    for name in workload_names:
        workload = WORKLOADS[name]
        candidates = {"as benchmarked": OurStep(workload)}
        candidates |= {lever: OurStep(workload, **change) for lever, change in LEVERS.items()}
        wall = {candidate: [] for candidate in candidates}
        cpu = {candidate: [] for candidate in candidates}
        for _ in range(rounds):
            for candidate, step in candidates.items():
                cpu_start = time.process_time()
                wall[candidate].append(step.time(workload.steps))
                cpu[candidate].append((time.process_time() - cpu_start) / workload.steps)
        for candidate in candidates:
            spread = f"{min(wall[candidate]):.4f}-{max(wall[candidate]):.4f}"
            print(
                f"{name} {candidate}: wall median {statistics.median(wall[candidate]):.4f} s "
                f"({spread}), CPU {statistics.median(cpu[candidate]):.4f} s per step",
                flush=True,
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--levers", action="store_true", help="time each lever off, alternated")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workload", choices=list(WORKLOADS), help="levers on one workload")
    args = parser.parse_args()
    if args.levers:
        measure_levers(args.rounds, [args.workload] if args.workload else list(WORKLOADS))
    else:
        print(run(args.rounds))
    sys.stdout.flush()
