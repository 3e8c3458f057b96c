"""BERT masked-LM train step: ours vs Hugging Face `transformers.BertForMaskedLM` (torch, CPU).

Both models are built from configs (no download) at BERT-mini sizes: 4 layers, d_model 256,
4 heads, d_ff 1024, vocabulary 30522, 512 positions, post-LN with epsilon 1e-12, exact GELU,
dropout 0.1 on the hidden states and on the attention weights. Rows are 128 tokens, 32 per
batch, with BERT's masking (data/masking.py): 15% of the tokens chosen, at most 20 per row.
Both sides train on the same batch with AdamW (lr 1e-4, betas 0.9/0.999, eps 1e-6, weight
decay 0.01 off biases and LayerNorms) after clipping the gradient norm to 1.0, as
`transformers.Trainer` does by default.

The one difference in what is computed is each library's own way to the MLM loss:
`BertForMaskedLM` computes logits at all 128 positions and ignores the unchosen ones
(labels -100); ours gathers the chosen positions first and runs the 30522-way output layer
on those alone, as the original BERT code does. That is the point of the comparison: the
output layer is the largest matmul of the step.

The torch side runs in a child process that stays up (torch and JAX each keep their own
threads); the two alternate round by round and are compared by their medians. Each round
times back-to-back steps after compile and warm-up, with one wait at the end.

    python benchmarks/run.py --only bert      # with the malloc settings of the suite
"""

from __future__ import annotations

import functools
import os
import statistics
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import workload
from flax.training.train_state import TrainState

from flaxformer_lite import TransformerConfig
from flaxformer_lite.data.masking import mask_tokens
from flaxformer_lite.families.encoder_only import EncoderOnly
from flaxformer_lite.special_tokens import NUM_SPECIAL_TOKENS
from flaxformer_lite.training.optimizer import make_optimizer
from flaxformer_lite.training.step import train_step

VOCAB_SIZE = 30522
LAYERS, D_MODEL, HEADS, D_FF = 4, 256, 4, 1024
LENGTH, BATCH, MAX_PREDICTIONS = 128, 32, 20
DROPOUT = 0.1
LEARNING_RATE, WEIGHT_DECAY, ADAM_EPS = 1e-4, 0.01, 1e-6
STEPS_PER_ROUND = 2


def model_config() -> TransformerConfig:
    return TransformerConfig(
        vocab_size=VOCAB_SIZE,
        d_model=D_MODEL,
        num_heads=HEADS,
        d_ff=D_FF,
        num_encoder_layers=LAYERS,
        max_len=512,
        dropout_rate=DROPOUT,
        attention_dropout_rate=DROPOUT,
        norm_placement="post",
        norm_epsilon=1e-12,
        mlp="gelu",
        position_encoding="learned",
        scale_embeddings=False,
        matmul_backward="cpu_row_major",  # benchmark-only: the CPU-tuned weight gradients
    )


def optimizer_config() -> ml_collections.ConfigDict:
    """The trainer's optimizer at BERT's AdamW settings, constant rate (no schedule cost)."""
    return ml_collections.ConfigDict(
        {
            "schedule": "cosine",
            "learning_rate": LEARNING_RATE,
            "min_learning_rate": LEARNING_RATE,
            "warmup_steps": 0,
            "num_train_steps": 1000,
            "d_model": D_MODEL,
            "adam_b1": 0.9,
            "adam_b2": 0.999,
            "adam_eps": ADAM_EPS,
            "weight_decay": WEIGHT_DECAY,
            "grad_clip_norm": 1.0,
        }
    )


def make_batch(seed: int = 0) -> dict[str, np.ndarray]:
    """Random text rows (no padding) with BERT's masks: the four arrays of data/masking.py."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(NUM_SPECIAL_TOKENS, VOCAB_SIZE, (BATCH, LENGTH)).astype(np.int32)
    rows = [
        mask_tokens(row, rng, probability=0.15, max_predictions=MAX_PREDICTIONS,
                    vocab_size=VOCAB_SIZE)
        for row in tokens
    ]  # fmt: skip
    return {key: np.stack([row[key] for row in rows]) for key in rows[0]}


class OurStep:
    """Our compiled MLM train step (the trainer's `train_step`), with its state."""

    def __init__(self, batch: dict[str, np.ndarray]):
        self.family = EncoderOnly(
            model_config=model_config(), max_length=LENGTH, max_predictions=MAX_PREDICTIONS
        )
        self.batch = {key: jnp.asarray(value) for key, value in batch.items()}
        params = self.family.init_params(jax.random.key(0))
        tx = make_optimizer(optimizer_config())
        self.state = TrainState.create(apply_fn=None, params=params, tx=tx)
        self.rng = workload.dropout_key()  # philox: one device, cheap masks
        self.step = jax.jit(functools.partial(train_step, family=self.family), donate_argnums=(0,))
        self.time(2)  # compile and warm up

    def time(self, steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            self.state, metrics = self.step(self.state, self.batch, self.rng)
        jax.block_until_ready((self.state, metrics))
        return (time.perf_counter() - start) / steps


def peer_main(batch_path: str) -> None:
    """The torch side: builds BertForMaskedLM, then times `steps` steps per line read."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=D_MODEL,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=D_FF,
        hidden_dropout_prob=DROPOUT,
        attention_probs_dropout_prob=DROPOUT,
        max_position_embeddings=512,
    )
    model = BertForMaskedLM(config).train()
    batch = np.load(batch_path)
    input_ids = torch.from_numpy(batch["inputs"]).long()
    labels = torch.full_like(input_ids, -100)  # only the chosen positions count
    chosen = batch["mlm_weights"] > 0  # (B, P)
    rows = np.broadcast_to(np.arange(BATCH)[:, None], chosen.shape)[chosen]
    labels[rows, batch["mlm_positions"][chosen]] = torch.from_numpy(batch["mlm_ids"][chosen]).long()
    no_decay = [p for n, p in model.named_parameters() if "bias" in n or "LayerNorm" in n]
    decay = [p for n, p in model.named_parameters() if not ("bias" in n or "LayerNorm" in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0}],
        lr=LEARNING_RATE,
        eps=ADAM_EPS,
    )

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = model(input_ids=input_ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    for _ in range(2):  # warm up
        step()
    print("ready", flush=True)
    for line in sys.stdin:
        steps = int(line)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        print(f"step_s={(time.perf_counter() - start) / steps}", flush=True)


class Peer:
    """The torch child process: one line in (steps to time), one line out (seconds a step)."""

    def __init__(self, batch_path: str):
        self.process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--peer", batch_path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        if self.process.stdout.readline().strip() != "ready":
            raise RuntimeError("the torch peer did not start")

    def time(self, steps: int) -> float:
        self.process.stdin.write(f"{steps}\n")
        self.process.stdin.flush()
        return float(self.process.stdout.readline().strip().split("=")[1])

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def peer_missing() -> str | None:
    """None if the torch peer can run, else why not."""
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as error:
        return f"{error.name} is not installed (the `bench` and `fixtures` extras)"
    return None


def run(rounds: int = 5) -> dict:
    """Alternate ours and torch for `rounds` rounds; the headline is `bert_ratio_vs_torch`."""
    batch = make_batch()
    ours_step = OurStep(batch)
    why_no_peer = peer_missing()
    peer = None
    with tempfile.TemporaryDirectory() as directory:
        if why_no_peer:
            print(f"bert_speed: skipping the torch peer: {why_no_peer}", flush=True)
        else:
            batch_path = os.path.join(directory, "batch.npz")
            np.savez(batch_path, **batch)
            peer = Peer(batch_path)
        ours, theirs, loads = [], [], []
        try:
            for index in range(rounds):
                loads.append(os.getloadavg()[0])
                ours.append(ours_step.time(STEPS_PER_ROUND))
                if peer is not None:
                    theirs.append(peer.time(STEPS_PER_ROUND))
                note = f", torch {theirs[-1]:.3f}" if theirs else ""
                print(f"  bert round {index + 1}/{rounds}: ours {ours[-1]:.3f} s/step{note}")
        finally:
            if peer is not None:
                peer.close()
    results = {
        "step_s": statistics.median(ours),
        "step_s_range": [min(ours), max(ours)],
        "tokens_per_s": BATCH * LENGTH / statistics.median(ours),
        "load_average_per_round": loads,
    }
    if theirs:
        results["torch_step_s"] = statistics.median(theirs)
        results["torch_step_s_range"] = [min(theirs), max(theirs)]
        results["ratio_per_round"] = [p / o for o, p in zip(ours, theirs, strict=True)]
        results["bert_ratio_vs_torch"] = results["torch_step_s"] / results["step_s"]
    return results


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--peer":
        peer_main(sys.argv[2])
    else:
        print(run())
