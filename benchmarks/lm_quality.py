"""Held-out loss of ours and of the PyTorch GPT peer, same text, same windows, same steps.

nanoGPT's CPU-sized character-level setup (4 layers, 4 heads, d_model 128, context 64,
batch 12, no dropout; AdamW betas 0.9/0.99, weight decay 0.1, gradients clipped to norm
1, lr 1e-3 with 100 warm-up steps and cosine decay to 1e-4) on a text file:

    python benchmarks/lm_quality.py --text=my.txt [--steps=2000]

Ours is `python train.py --config=configs/shakespeare_char.py` with the CPU-size flags
and `dataset=text`. The peer is the network of `shared/bench/peer_torch_gpt.py`
(loaded from that file, not copied), trained by the loop below on the very batches
train.py reads: the same `create_datasets` call with the same config and seed. Both are
scored on the same held-out tiles (the last 10% of the file) as train.py scores them:
mean loss per character in nats, every window starting from BOS. Each then writes a
sample after the same prompt (temperature 0.8, top-k 50).

Each side keeps its own initialisation: the peer's is PyTorch's default (the tied
embedding N(0, 1), so its first losses are large), ours the library's.
"""

import argparse
import math
import os
import re
import runpy
import subprocess
import sys
import tempfile

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from configs import shakespeare_char  # noqa: E402
from flaxformer_lite.data import create_datasets  # noqa: E402
from flaxformer_lite.special_tokens import BOS_ID, PAD_ID  # noqa: E402

PEER = os.path.join(REPO, "..", "shared", "bench", "peer_torch_gpt.py")
CPU_SIZE = dict(
    num_decoder_layers=4,
    num_heads=4,
    d_model=128,
    d_ff=512,
    max_target_length=64,
    max_decode_length=64,
    per_device_batch_size=12,
    per_device_eval_batch_size=12,
    dropout_rate=0.0,
    attention_dropout_rate=0.0,
)
SAMPLE = dict(temperature=0.8, top_k=50, max_new_tokens=200)


def experiment_config(text: str, steps: int):
    config = shakespeare_char.get_config()
    config.update(CPU_SIZE)
    config.update(dict(dataset="text", train_file=text, num_train_steps=steps))
    config.update(dict(eval_every_steps=steps, checkpoint_every_steps=steps))
    return config


def train_ours(config, workdir: str, prompt: str) -> tuple[float, str]:
    """train.py on one CPU device (held-out loss of its final line), then generate's sample."""
    flags = [f"--config.{key}={config[key]}" for key in (*CPU_SIZE, "dataset", "train_file")]
    flags += [f"--config.{key}={config[key]}" for key in ("num_train_steps", "eval_every_steps")]
    env = {key: value for key, value in os.environ.items() if key != "XLA_FLAGS"}
    command = [sys.executable, "train.py", "--config=configs/shakespeare_char.py"]
    result = subprocess.run(
        [*command, f"--workdir={workdir}", *flags],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        sys.exit(result.stderr[-3000:])
    eval_loss = float(re.search(r"^final: .*\beval_loss=(\S+)", result.stdout, re.M).group(1))
    sample_flags = [f"--{key}={value}" for key, value in SAMPLE.items()]
    sample = subprocess.run(
        [sys.executable, "-m", "flaxformer_lite.generate", f"--workdir={workdir}"]
        + [f"--prompt={prompt}", "--seed=0", *sample_flags],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    return eval_loss, sample.stdout


def peer_gpt_class(vocab_size: int, context: int):
    """The peer's GPT module class, its sizes set through the peer's own flags."""
    sizes = dict(vocab=vocab_size, d=CPU_SIZE["d_model"], heads=CPU_SIZE["num_heads"])
    sizes.update(layers=CPU_SIZE["num_decoder_layers"], len=context, steps=1)
    saved_argv = sys.argv
    sys.argv = [PEER, *(f"--{key}={value}" for key, value in sizes.items())]
    try:  # the file also times a few steps of its own on random data when it runs
        return runpy.run_path(PEER)["GPT"]
    finally:
        sys.argv = saved_argv


def shift_right(targets):
    """BOS, then the targets but the last: (B, T) -> (B, T), what our model reads."""
    import torch

    bos = torch.full_like(targets[:, :1], BOS_ID)
    return torch.cat([bos, targets[:, :-1]], dim=1)


def train_peer(config, workdir: str, prompt: str, seed: int = 0) -> tuple[float, str]:
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    data = create_datasets(config, workdir, num_local_devices=1)
    context = config.max_target_length
    model = peer_gpt_class(data.tokenizer.vocab_size, context)()
    # As nanoGPT and our optimizer: no weight decay on biases and norm scales.
    decayed = [p for p in model.parameters() if p.dim() >= 2]
    others = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decayed, "weight_decay": config.weight_decay}, {"params": others}],
        lr=config.learning_rate,
        betas=(config.adam_b1, config.adam_b2),
        eps=config.adam_eps,
        weight_decay=0.0,
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, config) / config.learning_rate
    )
    model.train()
    for _ in range(config.num_train_steps):
        batch = next(data.train_iter)
        targets = torch.from_numpy(np.asarray(batch["targets"]).reshape(-1, context)).long()
        logits = model(shift_right(targets))  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip_norm)
        optimizer.step()
        schedule.step()
    model.eval()
    return held_out_loss(model, data, context), sample(model, data.tokenizer, prompt, context)


def warmup_cosine(step: int, config) -> float:
    """Our cosine schedule (optax.warmup_cosine_decay_schedule) at an update count."""
    if step < config.warmup_steps:
        return config.learning_rate * step / config.warmup_steps
    progress = min(
        1.0, (step - config.warmup_steps) / (config.num_train_steps - config.warmup_steps)
    )
    floor = config.min_learning_rate
    return floor + (config.learning_rate - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def held_out_loss(model, data, context: int) -> float:
    """Mean NLL per held-out token in nats over the validation tiles, as train.py's."""
    import torch
    import torch.nn.functional as F

    nll_sum, count = 0.0, 0
    with torch.no_grad():
        for example in data.eval_examples["validation"]:
            tokens = np.full(context, PAD_ID, np.int64)
            tokens[: len(example["targets"])] = example["targets"]
            targets = torch.from_numpy(tokens)[None]
            logits = model(shift_right(targets))
            nll = F.cross_entropy(logits[0], targets[0], reduction="none")
            weights = targets[0] != PAD_ID
            nll_sum += float(nll[weights].sum())
            count += int(weights.sum())
    return nll_sum / count


def sample(model, tokenizer, prompt: str, context: int) -> str:
    """The prompt continued: temperature 0.8, top-k 50, the last `context` tokens read."""
    import torch

    generator = torch.Generator().manual_seed(0)
    tokens = [BOS_ID, *tokenizer.encode(prompt)]
    new = []
    with torch.no_grad():
        for _ in range(SAMPLE["max_new_tokens"]):
            window = torch.tensor(tokens[-context:])[None]
            logits = model(window)[0, -1] / SAMPLE["temperature"]
            cutoff = torch.topk(logits, SAMPLE["top_k"]).values[-1]
            probabilities = torch.softmax(logits.masked_fill(logits < cutoff, -math.inf), -1)
            token = int(torch.multinomial(probabilities, 1, generator=generator))
            tokens.append(token)
            new.append(token)
    return tokenizer.decode(new)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--text", required=True, help="a UTF-8 text file; its last 10%% is held out"
    )
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--prompt", default="The ")
    args = parser.parse_args()
    config = experiment_config(os.path.abspath(args.text), args.steps)
    with tempfile.TemporaryDirectory() as workdir:
        ours_loss, ours_sample = train_ours(config, os.path.join(workdir, "ours"), args.prompt)
        peer_loss, peer_sample = train_peer(config, os.path.join(workdir, "peer"), args.prompt)
    print(f"--- ours, sample after {args.prompt!r}:\n{ours_sample}")
    print(f"--- torch GPT peer, sample after {args.prompt!r}:\n{args.prompt}{peer_sample}")
    losses = f"ours_eval_loss={ours_loss:.4f} peer_eval_loss={peer_loss:.4f}"
    print(f"lm_quality steps={args.steps} {losses}")


if __name__ == "__main__":
    main()
