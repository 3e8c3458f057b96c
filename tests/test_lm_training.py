"""The decoder-only LM learns, end to end through train.py and the generate CLI.

Two tiny runs, each trained once for the module: a GPT learning to copy strings as
prompt -> completion (exact match of generated completions, then the CLI on its workdir),
and a GPT on a plain-text file of low entropy (held-out bits per byte). Each reference is
what an untrained or broken model cannot reach: exact match about 0, and bits per byte
about log2(vocabulary) = 8 from a uniform guess, above the 3 bits of the text's alphabet.
"""

import math
import subprocess
import sys

import numpy as np
import pytest
from tiny_training import REPO, run_train_py

from configs.default import get_config
from flaxformer_lite.experiment import ConfigError, check_config
from flaxformer_lite.training.schedules import make_schedule

# A 2-layer GPT copying strings of 2 to 5 digits: `source SEP source EOS` in rows of 16.
# Copying needs an induction head (attend to the token after the one just written), hence
# two layers. 200 steps of 64 rows take exact match from 0 to about 0.94 (0.66 at step
# 100); with --config.learning_rate=1e-7 it ends at 0.
COPY_STEPS = 200
COPY_RUN = dict(
    model="decoder_only",
    dataset="copy",
    d_model=64,
    num_heads=4,
    d_ff=128,
    num_decoder_layers=2,
    synthetic_min_length=2,
    synthetic_max_length=5,
    max_target_length=16,
    max_decode_length=16,
    num_train_examples=2_000,
    num_eval_examples=64,
    per_device_batch_size=16,
    per_device_eval_batch_size=16,
    label_smoothing=0.0,
    learning_rate=0.005,
    warmup_steps=20,
    num_train_steps=COPY_STEPS,
    log_every_steps=50,
    eval_every_steps=COPY_STEPS,
    checkpoint_every_steps=COPY_STEPS,
    num_print_examples=2,
)

# Text over 8 letters where each letter is followed by the next one (h by a) 9 times in
# 10, else by a uniformly random letter: every letter is equally frequent, so a model that
# ignores the context pays log2(8) = 3 bits per byte, and the text's own entropy is 0.67.
ALPHABET = "abcdefgh"
TEXT_STEPS = 60
TEXT_RUN = dict(
    model="decoder_only",
    dataset="text",
    d_model=32,
    num_heads=2,
    d_ff=64,
    num_decoder_layers=1,
    max_target_length=32,
    max_decode_length=32,
    per_device_batch_size=8,
    per_device_eval_batch_size=16,
    label_smoothing=0.0,
    learning_rate=0.01,
    warmup_steps=10,
    num_train_steps=TEXT_STEPS,
    log_every_steps=20,
    eval_every_steps=TEXT_STEPS,
    checkpoint_every_steps=TEXT_STEPS,
)


def final_metrics(stdout: str) -> dict[str, float]:
    """The numbers of a run's last line, `final: step=200 exact_match=1 ...`."""
    final_line = stdout.strip().splitlines()[-1]
    assert final_line.startswith("final: "), final_line
    pairs = (item.split("=") for item in final_line.split()[1:])
    return {key: float(value) for key, value in pairs}


def train(workdir, run: dict, **changes) -> dict[str, float]:
    """`python train.py` with `run` (+ `changes`) as --config flags: its final metrics."""
    flags = [f"--config.{key}={value}" for key, value in {**run, **changes}.items()]
    result = run_train_py(f"--workdir={workdir}", *flags)
    assert result.returncode == 0, result.stderr[-3000:]
    return final_metrics(result.stdout)


@pytest.fixture(scope="module")
def copy_run(tmp_path_factory):
    """(workdir, final metrics) of the GPT trained to copy."""
    workdir = tmp_path_factory.mktemp("lm_copy") / "run"
    return workdir, train(workdir, COPY_RUN)


def low_entropy_text(num_chars: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    follows = rng.random(num_chars) < 0.9
    random_letters = rng.integers(len(ALPHABET), size=num_chars)
    indices = [0]
    for index in range(1, num_chars):
        successor = (indices[-1] + 1) % len(ALPHABET)
        indices.append(successor if follows[index] else int(random_letters[index]))
    return "".join(ALPHABET[index] for index in indices)


def test_a_short_run_learns_to_complete_prompts(copy_run):
    """Exact match of completions generated after `source SEP`, on held-out strings."""
    _, final = copy_run
    assert final["step"] == COPY_STEPS
    assert final["exact_match"] >= 0.8


def test_the_generate_cli_completes_a_prompt_on_the_trained_run(copy_run):
    """The CLI appends SEP to the prompt (the run learned `source SEP target`) and prints
    the completion alone: the prompt copied. Without SEP the model continues the prompt."""
    workdir, _ = copy_run
    result = subprocess.run(
        [sys.executable, "-m", "flaxformer_lite.generate", f"--workdir={workdir}"]
        + ["--prompt=4096", "--temperature=0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout == "4096\n"


def test_a_text_file_run_reports_bits_per_byte_below_its_alphabets(tmp_path):
    """Held-out bits per byte after 60 steps: below what ignoring the context costs."""
    train_file = tmp_path / "letters.txt"
    train_file.write_text(low_entropy_text(20_000))
    final = train(tmp_path / "run", TEXT_RUN, train_file=train_file)
    assert final["eval_bits_per_byte"] < math.log2(len(ALPHABET))
    assert "exact_match" not in final  # plain text has no completions to score


def test_cosine_decays_to_the_configured_floor():
    """nanoGPT's schedule (configs/shakespeare_char.py): warm-up to 1e-3, cosine to 1e-4."""
    config = get_config()
    config.update(
        dict(learning_rate=1e-3, min_learning_rate=1e-4, warmup_steps=100, num_train_steps=5000)
    )
    schedule = make_schedule(config)
    halfway = 1e-4 + (1e-3 - 1e-4) * 0.5 * (1 + math.cos(math.pi * 0.5))
    assert float(schedule(100)) == pytest.approx(1e-3)
    assert float(schedule(2550)) == pytest.approx(halfway, rel=1e-5)
    assert float(schedule(5000)) == pytest.approx(1e-4)


def test_a_floor_above_the_peak_is_named_in_one_line():
    config = get_config()
    config.min_learning_rate = 2 * config.learning_rate
    with pytest.raises(ConfigError, match=r"^config\.min_learning_rate=0\.01 cannot work: use at"):
        check_config(config)
