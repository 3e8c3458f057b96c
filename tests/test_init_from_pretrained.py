"""Fine-tuning a Hugging Face checkpoint: train.py with --config.init_from=MODEL_DIR.

The checkpoints are the tiny random BERT, RoBERTa and DistilBERT of tests/fixtures/pretrained,
with the outputs transformers computed for them (scripts/make_pretrained_fixtures.py).
"""

import dataclasses
import json
import pathlib
import random
import shutil

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

from configs import classify_default
from flaxformer_lite.data.formats import data_format
from flaxformer_lite.data.options import DataOptions
from flaxformer_lite.experiment import ConfigError, check_config, resolve_config
from flaxformer_lite.families import make_family
from flaxformer_lite.pretrained import finetune
from flaxformer_lite.special_tokens import CLS_ID, NUM_SPECIAL_TOKENS, PAD_ID, SEP_ID
from flaxformer_lite.training.trainer import train_and_evaluate

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "pretrained"
TOLERANCE = 1e-5


def classifier_config(checkpoint: str, **changes):
    """classify_default (pre-LN, d_model 64: not the checkpoint's) starting from `checkpoint`."""
    config = classify_default.get_config()
    config.update(init_from=str(FIXTURES / checkpoint), class_labels="neg,pos")
    config.update(dataset="classification", max_source_length=32)
    config.update(changes)
    return config


def reference(name: str) -> tuple[dict, dict]:
    directory = FIXTURES / name / "reference"
    meta = json.loads((directory / "reference.json").read_text())
    return meta, {path.stem: np.load(path) for path in directory.glob("*.npy")}


def pipeline_inputs(name: str, config) -> np.ndarray:
    """The reference texts of fixture `name` as the classification pipeline writes them.

    Asserts they are CLS text SEP with exactly the ids transformers' tokenizer gave the
    reference ([CLS] text [SEP], or <s> text </s>), in our id space. (B, T) right-padded.
    """
    meta, _ = reference(name)
    tokenizer = finetune.pipeline_tokenizer(config.init_from)
    encode = data_format(DataOptions.from_config(config)).encode
    inputs = np.full((len(meta["texts"]), len(meta["ids"][0])), PAD_ID, np.int32)
    for row, (text, ids, mask) in enumerate(
        zip(meta["texts"], meta["ids"], meta["mask"], strict=True)
    ):
        checkpoint_ids = np.array(ids[: sum(mask)])
        encoded = encode(tokenizer, (text, "pos"))["inputs"]
        wanted = [CLS_ID, *(checkpoint_ids[1:-1] + NUM_SPECIAL_TOKENS), SEP_ID]
        assert encoded.tolist() == wanted
        inputs[row, : len(encoded)] = encoded
    return inputs


@pytest.mark.parametrize("name", ["bert", "roberta", "distilbert"])
def test_the_pipeline_writes_what_the_checkpoints_tokenizer_writes(name):
    pipeline_inputs(name, classifier_config(name))


@pytest.mark.parametrize("name", ["bert", "roberta", "distilbert"])
def test_our_special_ids_read_the_checkpoints_rows(name):
    """The token embedding over pipeline ids, against the table in model.safetensors."""
    (table,) = [
        value
        for key, value in load_file(FIXTURES / name / "model.safetensors").items()
        if key.endswith("embeddings.word_embeddings.weight")
    ]
    meta, _ = reference(name)
    cls_id, sep_id = meta["ids"][0][0], meta["ids"][0][sum(meta["mask"][0]) - 1]
    ours = np.asarray(
        finetune.params(str(FIXTURES / name))["token_embedding"]["embedding"]["embedding"]
    )
    np.testing.assert_array_equal(ours[NUM_SPECIAL_TOKENS:], table)
    np.testing.assert_array_equal(ours[CLS_ID], table[cls_id])
    np.testing.assert_array_equal(ours[SEP_ID], table[sep_id])


def test_the_encoder_is_the_checkpoint_and_the_classifier_is_fresh(capsys):
    """BERT's encoder and pooler through the classifier family, against transformers."""
    config = classifier_config("bert")
    resolved = resolve_config(config)
    assert (config.d_model, config.norm_placement) == (64, "pre")  # the user's, untouched
    family = make_family(resolved, finetune.pipeline_tokenizer(config.init_from).vocab_size)
    params = family.init_params(jax.random.key(0))
    log = capsys.readouterr().out

    # The encoder computes what transformers computed (token types as the reference set them).
    meta, expected = reference("bert")
    outputs = jax.jit(family.module.apply)(
        {"params": params},
        pipeline_inputs("bert", resolved),
        token_types=np.array(meta["token_types"]),
    )
    real = np.array(meta["mask"], bool)
    np.testing.assert_allclose(
        np.asarray(outputs["hidden"])[real], expected["hidden_states"][real], atol=TOLERANCE
    )
    np.testing.assert_allclose(outputs["pooled"], expected["pooled"], atol=TOLERANCE)

    # The classifier is the fresh initialisation, the encoder is not.
    fresh = dataclasses.replace(family, init_from=None).init_params(jax.random.key(0))
    for leaf, fresh_leaf in zip(
        jax.tree.leaves(params["classifier"]), jax.tree.leaves(fresh["classifier"]), strict=True
    ):
        np.testing.assert_array_equal(leaf, fresh_leaf)
    assert not np.allclose(
        params["stack"]["layer_0"]["mlp"]["wi"]["kernel"],
        fresh["stack"]["layer_0"]["mlp"]["wi"]["kernel"],
    )
    assert (
        f"init_from {config.init_from} (a bert checkpoint): loaded embeddings, pooler, stack, "
        "token_embedding; freshly initialised classifier; not used: mlm_head"
    ) in log


def write_tsv(path: pathlib.Path, examples: int, seed: int) -> str:
    """label<TAB>text lines; the words of "pos" and of "neg" texts are disjoint (but "the"),
    so whichever tokens the [CLS] position attends to carry the label."""
    rng = random.Random(seed)
    words = {"pos": ["quick", "brown", "fox", "jumps"], "neg": ["lazy", "dog", "sea", "shells"]}
    lines = []
    for _ in range(examples):
        label = rng.choice(["neg", "pos"])
        text = ["the", *rng.sample(words[label], 3)]
        rng.shuffle(text)
        lines.append(f"{label}\t{' '.join(text)}\n")
    path.write_text("".join(lines))
    return str(path)


def test_fine_tuning_runs_end_to_end_and_its_loss_falls(tmp_path, capsys):
    config = classifier_config(
        "bert",
        train_file=write_tsv(tmp_path / "train.tsv", 256, seed=0),
        eval_file=write_tsv(tmp_path / "dev.tsv", 64, seed=1),
        per_device_batch_size=8,
        per_device_eval_batch_size=16,
        num_train_steps=40,
        warmup_steps=5,
        learning_rate=0.002,
        log_every_steps=10,
        eval_every_steps=10,
        checkpoint_every_steps=40,
    )
    workdir = tmp_path / "run"
    final = train_and_evaluate(config, str(workdir))
    log = capsys.readouterr().out
    assert "tokenizer: " + config.init_from + " (the checkpoint's), vocab_size 207" in log
    assert "its architecture replaces the config's: d_model=32 (config: 64)" in log

    history = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in history] == [10, 20, 30, 40]
    assert history[-1]["train_loss"] < 0.6 * history[0]["train_loss"]
    assert history[-1]["eval_loss"] < history[0]["eval_loss"]
    assert final["eval_accuracy"] >= 0.9
    saved = json.loads((workdir / "config.json").read_text())  # the model it trained
    assert (saved["d_model"], saved["norm_placement"]) == (32, "post")


def bad_checkpoint(tmp_path, problem: str) -> str:
    """A copy of the BERT fixture with one thing wrong."""
    directory = tmp_path / problem
    shutil.copytree(FIXTURES / "bert", directory)
    if problem == "unknown_model_type":
        hf_config = json.loads((directory / "config.json").read_text())
        (directory / "config.json").write_text(json.dumps({**hf_config, "model_type": "bart"}))
    elif problem == "no_weights":
        (directory / "model.safetensors").unlink()
    return str(directory)


@pytest.mark.parametrize(
    "problem, says",
    [
        ("unknown_model_type", "model_type='bart'; an encoder-only model starts from one of bert"),
        ("no_weights", "has neither model.safetensors nor model.safetensors.index.json"),
        ("a_language_model", "model_type='gpt2'; an encoder-only model starts from one of bert"),
        ("too_long", "config.max_source_length=100 is longer than the 64 positions"),
    ],
)
def test_a_bad_checkpoint_is_one_clear_line_before_training(tmp_path, problem, says):
    if problem == "a_language_model":
        config = classifier_config("gpt2")
    elif problem == "too_long":
        config = classifier_config("bert", max_source_length=100)
    else:
        config = classifier_config("bert", init_from=bad_checkpoint(tmp_path, problem))
    workdir = tmp_path / "run"
    with pytest.raises(ConfigError) as raised:
        train_and_evaluate(config, str(workdir))
    message = str(raised.value)
    assert says in message and f"config.init_from={config.init_from!r}" in message
    assert "\n" not in message
    assert not workdir.exists()  # nothing prepared, nothing trained


def test_a_config_that_disagrees_with_the_checkpoint_is_refused():
    """A family built from an unresolved config names the field and the value to set."""
    with pytest.raises(ConfigError, match=r"config.d_model=64 .* set --config.d_model=32\.$"):
        check_config(classifier_config("bert"))
