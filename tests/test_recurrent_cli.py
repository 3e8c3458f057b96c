"""translate and generate drive the recurrent families' workdirs: rnn_seq2seq and rnn_lm.

References: `families.recurrent.translate_batch` and `continue_prompts` called directly on
the same parameters and encoded inputs. The rnn_lm run is trained by the trainer. The
rnn_seq2seq workdir is written as train.py leaves one at step 0 (training it too would
double this file's time), its random parameters scaled up so that greedy and beam search
write different tokens for different sources.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags
from tiny_training import TINY_TRAINING

from configs.default import get_config
from flaxformer_lite import generate as generate_cli
from flaxformer_lite import translate as translate_cli
from flaxformer_lite.data import ByteTokenizer
from flaxformer_lite.families import make_family
from flaxformer_lite.families.recurrent import continue_prompts, translate_batch
from flaxformer_lite.generate import LanguageModel
from flaxformer_lite.special_tokens import EOS_ID
from flaxformer_lite.training.checkpoint import Checkpointer
from flaxformer_lite.training.trainer import train_and_evaluate
from flaxformer_lite.translate import Translator

TINY_RNN = dict(
    TINY_TRAINING,
    rnn_hidden_size=32,
    dropout_rate=0.0,
    max_target_length=12,  # the LM's rows hold source SEP target EOS
    max_decode_length=12,
)
SOURCES = ["12345", "908", "7", ""]
BATCH = 8  # Translator's batch: every call here decodes one compiled shape
# Longer than the LM's training rows: an RNN has no context window to refuse it.
PROMPT = "0123456789012345"


def tiny_config(**changes):
    config = get_config()
    config.update({**TINY_RNN, **changes})
    return config


@pytest.fixture(scope="module")
def seq2seq_workdir(tmp_path_factory):
    """config.json and a step-0 checkpoint of random parameters, as train.py leaves them."""
    workdir = tmp_path_factory.mktemp("rnn_seq2seq")
    config = tiny_config(model="rnn_seq2seq", cell="lstm", rnn_bidirectional=False)
    with open(workdir / "config.json", "w") as f:
        f.write(config.to_json_best_effort(indent=2))
    family = make_family(config, ByteTokenizer.vocab_size)
    params = jax.tree.map(lambda x: 3.0 * x, family.init_params(jax.random.key(0)))
    checkpointer = Checkpointer(str(workdir), save_every=1, async_save=False)
    checkpointer.save(0, {"params": params})
    checkpointer.close()
    return str(workdir)


@pytest.fixture(scope="module")
def lm_workdir(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("rnn_lm"))
    config = tiny_config(
        model="rnn_lm",
        cell="gru",
        num_train_steps=20,
        eval_every_steps=20,
        checkpoint_every_steps=20,
        log_every_steps=20,
        num_eval_examples=8,
        num_print_examples=0,
    )
    train_and_evaluate(config, workdir)
    return workdir


@pytest.fixture(scope="module")
def translator(seq2seq_workdir):
    return Translator(seq2seq_workdir)


@pytest.fixture(scope="module")
def language_model(lm_workdir):
    return LanguageModel(lm_workdir)


# ----------------------------------------------------------------------------
# translate on an rnn_seq2seq workdir.


@pytest.mark.parametrize("beam_size", [1, 2], ids=["greedy", "beam2"])
def test_translator_decodes_as_translate_batch(translator, beam_size):
    inputs = translator.encode(SOURCES + [""] * (BATCH - len(SOURCES)))
    tokens = translate_batch(
        translator.model,
        translator.params,
        inputs,
        max_decode_len=translator.max_decode_length,
        beam_size=beam_size,
        alpha=0.6,
    )
    expected = [translator.tokenizer.decode(row) for row in np.asarray(tokens)[: len(SOURCES)]]
    got = translator.translate(SOURCES, beam_size=beam_size, alpha=0.6, batch_size=BATCH)
    assert got == expected
    assert len(set(got)) > 1, got  # the sources lead to different outputs


def run_translate_main(*args) -> None:
    """translate's main() in this process (its flags parsed, then reset)."""
    flags.FLAGS(["translate", *args])
    try:
        translate_cli.main(["translate"])
    finally:
        flags.FLAGS.unparse_flags()


def test_translate_main_writes_one_line_per_input_line(translator, seq2seq_workdir, tmp_path):
    source, target = tmp_path / "in.txt", tmp_path / "out.txt"
    source.write_text("".join(line + "\n" for line in SOURCES))
    run_translate_main(
        f"--workdir={seq2seq_workdir}", f"--input={source}", f"--output={target}", "--beam_size=1"
    )
    expected = translator.translate(SOURCES, beam_size=1, batch_size=BATCH)
    with open(target, newline="") as f:  # as written: random bytes may hold a "\r"
        assert f.read() == "".join(translation + "\n" for translation in expected)


# ----------------------------------------------------------------------------
# generate on an rnn_lm workdir.


def continuation(language_model, prompt_ids, max_new_tokens, **sampling):
    """continue_prompts' new tokens after the prompt, up to and including EOS."""
    tokens = continue_prompts(
        language_model.model,
        language_model.params,
        jnp.asarray([prompt_ids], jnp.int32),
        max_decode_len=len(prompt_ids) + max_new_tokens,
        **sampling,
    )
    ids = np.asarray(tokens)[0, len(prompt_ids) :].tolist()
    return ids[: ids.index(EOS_ID) + 1] if EOS_ID in ids else ids


SAMPLING = dict(temperature=1.0, top_k=20, top_p=0.9)


@pytest.mark.parametrize("sampling", [dict(temperature=0.0), SAMPLING], ids=["greedy", "sampled"])
def test_language_model_continues_as_continue_prompts_and_streams_each_token(
    language_model, sampling
):
    """Past the training rows' length too: one call, no window, so the same tokens."""
    prompt_ids = language_model.encode_prompt(PROMPT)
    max_new_tokens = 24
    rng = jax.random.key(3)
    streamed = []
    got = language_model.generate(
        prompt_ids, max_new_tokens=max_new_tokens, rng=rng, on_token=streamed.append, **sampling
    )
    assert got == continuation(language_model, prompt_ids, max_new_tokens, rng=rng, **sampling)
    assert streamed == got


def test_sampling_with_the_same_rng_is_reproducible(language_model):
    prompt_ids = language_model.encode_prompt(PROMPT)

    def sample(seed):
        streamed = []  # a listener, so that the program above is reused
        got = language_model.generate(
            prompt_ids,
            max_new_tokens=24,
            rng=jax.random.key(seed),
            on_token=streamed.append,
            **SAMPLING,
        )
        assert streamed == got
        return got

    first = sample(5)
    assert sample(5) == first
    assert sample(6) != first


# ----------------------------------------------------------------------------
# A workdir of the other recurrent family: one line naming the families the tool reads.


def run_generate_main(*args) -> None:
    generate_cli.FLAGS(["generate", *args])
    try:
        generate_cli.main(["generate"])
    finally:
        generate_cli.FLAGS.unparse_flags()


@pytest.mark.parametrize(
    ("run_main", "workdir", "message"),
    [
        (run_translate_main, "lm_workdir", "reads encoder_decoder or rnn_seq2seq runs"),
        (run_generate_main, "seq2seq_workdir", "reads decoder_only or rnn_lm runs"),
    ],
    ids=["translate_an_rnn_lm", "generate_an_rnn_seq2seq"],
)
def test_a_run_of_another_family_stops_with_one_line(run_main, workdir, message, request):
    workdir = request.getfixturevalue(workdir)
    with pytest.raises(SystemExit) as stopped:
        run_main(f"--workdir={workdir}")
    error = str(stopped.value)
    assert error.startswith(f"error: {workdir} holds a config.model=")
    assert message in error
    assert "\n" not in error
