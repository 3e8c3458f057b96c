"""Shared settings of the tiny training runs that several test files make."""

import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]

# The default task, shrunk until a run takes seconds.
TINY_TRAINING = dict(
    d_model=32,
    num_heads=2,
    d_ff=64,
    num_encoder_layers=1,
    num_decoder_layers=1,
    num_train_examples=512,
    num_eval_examples=64,
    per_device_batch_size=4,
    per_device_eval_batch_size=8,
    synthetic_max_length=6,
    max_source_length=8,
    max_target_length=8,
    max_decode_length=8,
    log_every_steps=4,
    eval_every_steps=8,
    checkpoint_every_steps=4,
    num_print_examples=2,
)


def run_train_py(*flags: str) -> subprocess.CompletedProcess:
    """`python train.py FLAGS...` from the repository root, output captured."""
    return subprocess.run(
        [sys.executable, "train.py", *flags], cwd=REPO, capture_output=True, text=True, timeout=600
    )
