"""The generate CLI and its library side on a tiny decoder-only workdir.

References: `decoding.generate`'s one-shot output (greedy and sampled), the
sliding-window rule replayed with `decoding.generate` on the window, and the
tokenizer's decoding of the whole sequence for what is streamed.
"""

import io
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_training import REPO

from configs.default import get_config
from flaxformer_lite import generate as generate_cli
from flaxformer_lite.data import ByteTokenizer
from flaxformer_lite.decoding import generate
from flaxformer_lite.families import make_family
from flaxformer_lite.generate import GenerationError, LanguageModel, TextStream
from flaxformer_lite.special_tokens import EOS_ID, SEP_ID
from flaxformer_lite.training.checkpoint import Checkpointer

CONTEXT = 16
PROMPT = "ROMEO:"
TINY_LM = dict(
    model="decoder_only",
    dataset="tiny_shakespeare",  # plain text: generation continues the prompt
    d_model=32,
    num_heads=2,
    d_ff=64,
    num_decoder_layers=1,
    dropout_rate=0.0,
    max_source_length=CONTEXT,
    max_target_length=CONTEXT,
    max_decode_length=CONTEXT,
)


def write_workdir(workdir, *, params_scale=1.0, with_checkpoint=True, **changes):
    """config.json and (optionally) a step-0 checkpoint of random parameters, as train.py
    leaves them. Scaled-up parameters make greedy output change from token to token."""
    os.makedirs(workdir, exist_ok=True)
    config = get_config()
    config.update({**TINY_LM, **changes})
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2))
    if with_checkpoint:
        family = make_family(config, ByteTokenizer.vocab_size)
        params = jax.tree.map(lambda x: x * params_scale, family.init_params(jax.random.key(0)))
        checkpointer = Checkpointer(str(workdir), save_every=1, async_save=False)
        checkpointer.save(0, {"params": params})
        checkpointer.close()
    return workdir


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return write_workdir(tmp_path_factory.mktemp("lm") / "run", params_scale=3.0)


@pytest.fixture(scope="module")
def language_model(workdir):
    return LanguageModel(str(workdir))


def one_shot(language_model, prompt_ids, max_new_tokens, **sampling):
    """decoding.generate's continuation of the prompt, up to and including EOS."""
    tokens = generate(
        language_model.model,
        language_model.params,
        jnp.asarray([prompt_ids], jnp.int32),
        max_decode_len=len(prompt_ids) + max_new_tokens,
        **sampling,
    )
    ids = np.asarray(tokens)[0, len(prompt_ids) :].tolist()
    return ids[: ids.index(EOS_ID) + 1] if EOS_ID in ids else ids


def run_cli(*flags):
    return subprocess.run(
        [sys.executable, "-m", "flaxformer_lite.generate", *flags],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    "sampling",
    [dict(temperature=0.0), dict(temperature=1.0, top_k=50, rng=jax.random.key(3))],
    ids=["greedy", "sampled"],
)
def test_streamed_generation_equals_one_shot_decoding_within_the_context(language_model, sampling):
    prompt_ids = language_model.encode_prompt(PROMPT)
    max_new_tokens = CONTEXT - len(prompt_ids)
    streamed = []
    new_ids = language_model.generate(
        prompt_ids, max_new_tokens=max_new_tokens, on_token=streamed.append, **sampling
    )
    reference = one_shot(language_model, prompt_ids, max_new_tokens, **sampling)
    assert len(set(reference)) > 3  # the output varies, so a shifted token would show
    assert new_ids == reference
    assert streamed == new_ids


def test_past_the_context_the_window_slides_by_a_quarter(language_model):
    prompt_ids = language_model.encode_prompt(PROMPT)
    first_window = CONTEXT - len(prompt_ids)
    slide = CONTEXT // 4
    streamed = []
    new_ids = language_model.generate(
        prompt_ids, max_new_tokens=first_window + 2 * slide + 1, on_token=streamed.append
    )
    assert EOS_ID not in new_ids  # else the run below would stop early; pick another prompt
    assert len(new_ids) == first_window + 2 * slide + 1
    assert streamed == new_ids
    text = prompt_ids + new_ids
    assert new_ids[:first_window] == one_shot(language_model, prompt_ids, first_window)
    for start in (len(prompt_ids) + first_window, len(prompt_ids) + first_window + slide):
        window = text[start - (CONTEXT - slide) : start]  # what the model re-reads
        expected = one_shot(language_model, window, slide)
        assert text[start : start + slide] == expected[: len(text[start : start + slide])]


def test_a_prompt_that_fills_the_context_is_refused(language_model):
    assert len(language_model.encode_prompt("x" * (CONTEXT - 1))) == CONTEXT - 1
    with pytest.raises(GenerationError, match=f"at most {CONTEXT - 1} tokens"):
        language_model.encode_prompt("x" * CONTEXT)


def test_text_stream_holds_back_a_split_character_and_writes_the_whole_text():
    tokenizer = ByteTokenizer()
    text = "né 😀!"
    out = io.StringIO()
    stream = TextStream(tokenizer, tokenizer.encode("n"), out=out)
    writes = []
    for token in tokenizer.encode(text)[1:]:
        stream.add(token)
        writes.append(out.getvalue())
    stream.close()
    assert out.getvalue() == text + "\n"
    assert all("\ufffd" not in written for written in writes)


def test_cli_greedy_prints_the_prompt_and_the_one_shot_continuation(workdir, language_model):
    result = run_cli(
        f"--workdir={workdir}", f"--prompt={PROMPT}", "--max_new_tokens=8", "--temperature=0"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    prompt_ids = language_model.encode_prompt(PROMPT)
    reference = one_shot(language_model, prompt_ids, 8, temperature=0.0)
    assert result.stdout == language_model.tokenizer.decode(prompt_ids + reference) + "\n"


def run_main(*flags) -> None:
    """generate's main() in this process (its flags parsed, then reset)."""
    generate_cli.FLAGS(["generate", *flags])
    try:
        generate_cli.main(["generate"])
    finally:
        generate_cli.FLAGS.unparse_flags()


def test_samples_differ_from_each_other_and_a_seed_reproduces_them(workdir, capsys):
    def samples(seed):
        run_main(
            f"--workdir={workdir}",
            f"--prompt={PROMPT}",
            "--max_new_tokens=8",
            "--temperature=1",
            "--num_samples=2",
            f"--seed={seed}",
        )
        return capsys.readouterr().out.split(generate_cli.SAMPLE_SEPARATOR + "\n")

    first, again, other = samples(1), samples(1), samples(2)
    assert len(first) == 2 and first[0] != first[1]
    assert first == again
    assert other != first


@pytest.mark.parametrize(
    "case, flags, message",
    [
        ("missing_workdir", [], "config.json is missing"),
        ("no_checkpoint", [], "No checkpoints in"),
        ("wrong_family", [], "holds a config.model='encoder_decoder' run"),
        ("long_prompt", [f"--prompt={'x' * CONTEXT}"], "shorten the prompt"),
        ("bad_flag", ["--temperature=-1"], "--temperature=-1.0: use 0"),
        ("bad_flag", ["--top_p=0"], "--top_p=0.0: use a value in (0, 1]"),
        ("bad_flag", ["--num_samples=0"], "--num_samples=0: draw at least 1"),
    ],
)
def test_bad_input_stops_with_one_line(workdir, tmp_path, case, flags, message):
    target = {
        "missing_workdir": tmp_path / "nowhere",
        "no_checkpoint": write_workdir(tmp_path / "fresh", with_checkpoint=False),
        "wrong_family": write_workdir(tmp_path / "ed", model="encoder_decoder"),
    }.get(case, workdir)
    with pytest.raises(SystemExit) as stopped:
        run_main(f"--workdir={target}", *flags)
    assert str(stopped.value).startswith("error: ")
    assert message in str(stopped.value)
    assert "\n" not in str(stopped.value)


def test_the_process_prints_one_error_line_and_exits_1(tmp_path):
    workdir = write_workdir(tmp_path / "ed", model="encoder_decoder")
    for flags in ([f"--workdir={workdir}"], ["--temperature=warm"]):
        result = run_cli(*flags)
        assert result.returncode == 1
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr


def test_a_prompt_completion_model_gets_sep_after_the_prompt_and_prints_the_completion(
    tmp_path,
):
    workdir = write_workdir(tmp_path / "reverse", params_scale=3.0, dataset="reverse")
    language_model = LanguageModel(str(workdir))
    prompt_ids = language_model.encode_prompt("0123")
    assert prompt_ids == [*ByteTokenizer().encode("0123"), SEP_ID]  # the rows it learned
    completion = one_shot(language_model, prompt_ids, 6)
    out = io.StringIO()
    stream = TextStream(language_model.tokenizer, [], out=out)
    language_model.generate(prompt_ids, max_new_tokens=6, on_token=stream.add)
    stream.close()
    assert out.getvalue() == language_model.tokenizer.decode(completion) + "\n"
