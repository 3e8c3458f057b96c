"""The experiment config: checked whole before any work; BLEU over every raw reference."""

import importlib
import math
import pathlib

import pytest
import sacrebleu
from tiny_training import TINY_TRAINING

from configs import default
from flaxformer_lite.data import ByteTokenizer, create_datasets
from flaxformer_lite.experiment import ConfigError, check_config
from flaxformer_lite.families import make_family
from flaxformer_lite.families import transformer_config_from as model_config_from
from flaxformer_lite.special_tokens import EOS_ID
from flaxformer_lite.training.trainer import (
    decode_split,
    generation_metrics,
    print_examples,
    train_and_evaluate,
)
from flaxformer_lite.translate import Translator

CONFIG_FILES = sorted(p.stem for p in pathlib.Path(default.__file__).parent.glob("[!_]*.py"))


def config_with(**changes):
    config = default.get_config()
    config.update(changes)
    return config


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_every_shipped_config_passes(name):
    check_config(importlib.import_module(f"configs.{name}").get_config())


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(learning_rate=math.inf), r"config\.learning_rate=inf cannot work: use a finite"),
        (dict(learning_rate=0.0), r"config\.learning_rate=0\.0 .* > 0"),
        (dict(num_train_steps=0), r"config\.num_train_steps=0 .* integer >= 1"),
        (dict(schedule="rsqrt", warmup_steps=0), r"config\.warmup_steps=0 .* integer >= 1"),
        (dict(schedule="linear"), r"config\.schedule='linear' .* \('rsqrt', 'cosine'\)"),
        (dict(eval_every_steps=0), r"config\.eval_every_steps=0"),
        (dict(log_every_steps=-1), r"config\.log_every_steps=-1"),
        (dict(checkpoint_every_steps=0), r"config\.checkpoint_every_steps=0"),
        (dict(beam_size=0), r"config\.beam_size=0"),
        (dict(max_decode_length=0), r"config\.max_decode_length=0"),
        (dict(label_smoothing=1.0), r"config\.label_smoothing=1\.0 .* in \[0, 1\)"),
        (dict(adam_b2=1.5), r"config\.adam_b2=1\.5"),
        (dict(d_model=65), r"config\.d_model=65 is invalid: .* num_heads=4"),
        (dict(dropout_rate=1.0), r"config\.dropout_rate=1\.0 is invalid"),
        (dict(overlong="cut"), r"config\.overlong='cut' must be one of"),
        (dict(max_source_length=1), r"config\.max_source_length=1 is too small"),
        (
            dict(model="gpt"),
            r"config\.model='gpt' is unknown: choose one of \('encoder_decoder', 'decoder_only'",
        ),
    ],
)
def test_a_bad_value_is_one_line_naming_the_field(changes, message):
    with pytest.raises(ConfigError, match=message) as raised:
        check_config(config_with(**changes))
    assert "\n" not in str(raised.value)


def test_a_missing_field_is_named():
    config = default.get_config()
    del config["grad_clip_norm"]
    with pytest.raises(ConfigError, match=r"no field 'grad_clip_norm': .*configs/default\.py"):
        check_config(config)
    config = default.get_config()
    del config["strict_data"]
    with pytest.raises(ConfigError, match=r"no field 'strict_data'"):
        check_config(config)


def test_the_model_covers_the_decode_length():
    config = config_with(max_source_length=8, max_target_length=10, max_decode_length=24)
    assert model_config_from(config, vocab_size=260).max_len == 24
    config = config_with(max_source_length=30, max_target_length=10, max_decode_length=4)
    assert model_config_from(config, vocab_size=260).max_len == 30


def test_bleu_is_sacrebleu_on_every_raw_reference(tmp_path):
    """Decoding past the training lengths, over-long lines kept: BLEU equals sacrebleu's.

    Two validation lines are longer than the limits. The old path dropped them from BLEU
    (overlong="filter") and scored references rebuilt from token ids; it also crashed at the
    first evaluation because max_decode_length exceeded the model's max_len.
    """
    pairs = [(f"w{i % 7} x{i % 5}", f"x{i % 5} w{i % 7}") for i in range(60)]
    long_pairs = [("a b c d e f g h", "h g f e d c b a"), ("q r s t u v", "v u t s r q p o n")]
    train = tmp_path / "train.tsv"
    train.write_text("".join(f"{s}\t{t}\n" for s, t in pairs))
    valid = tmp_path / "valid.tsv"
    valid_pairs = pairs[:10] + long_pairs
    valid.write_text("".join(f"{s}\t{t}\n" for s, t in valid_pairs))
    config = config_with(**TINY_TRAINING)
    config.update(
        dataset="tsv",
        train_file=str(train),
        eval_file=str(valid),
        eval_bleu=True,
        num_train_steps=8,
        max_decode_length=12,  # Above max_source_length = max_target_length = 8.
    )
    final = train_and_evaluate(config, str(tmp_path / "run"))

    translator = Translator(str(tmp_path / "run"))
    hypotheses = translator.translate(
        [source for source, _ in valid_pairs], beam_size=1, max_length=12
    )
    references = [target for _, target in valid_pairs]
    assert final["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hypotheses, [references]).score)
    matches = sum(h == r for h, r in zip(hypotheses, references, strict=True))
    assert final["exact_match"] == pytest.approx(matches / len(references))


def test_bleu_scores_every_example_against_its_whole_reference(tmp_path):
    """A model that copies its (cut) source, on a copy task: BLEU falls short of 100 by
    exactly the over-long lines, as sacrebleu on the raw file says."""
    lines = ["a b", "c d e", "f g", "one two three four five six", "h i", "x y z w v u t s"]
    data_file = tmp_path / "copy.tsv"
    data_file.write_text("".join(f"{line}\t{line}\n" for line in lines))
    config = config_with(dataset="tsv", train_file=str(data_file), eval_file=str(data_file))
    config.update(max_source_length=8, max_target_length=8, eval_bleu=True, overlong="filter")
    datasets = create_datasets(config, str(tmp_path), num_local_devices=1)

    def copy_source(params, batch):  # (devices, B, S) -> the same ids, as a "model" would
        del params
        return batch["inputs"]

    family = make_family(config, datasets.tokenizer.vocab_size)
    _, predictions = decode_split(family, copy_source, None, datasets)
    metrics = generation_metrics(
        config, datasets.tokenizer, predictions, datasets.reference_texts()
    )
    read_by_the_model = [line[: config.max_source_length - 1] for line in lines]  # EOS last
    expected = sacrebleu.corpus_bleu(read_by_the_model, [lines]).score
    assert metrics["bleu"] == pytest.approx(expected) and expected < 100
    assert metrics["exact_match"] == pytest.approx(4 / 6)


def test_printed_examples_are_marked_against_the_reference_text(capsys):
    """An LM's target row holds its prompt too: the mark must compare with the reference text."""
    tokenizer = ByteTokenizer()
    prompt, completion = tokenizer.encode("123"), tokenizer.encode("321")
    print_examples(tokenizer, [prompt], [completion + [EOS_ID]], ["321"], count=1)
    print_examples(tokenizer, [prompt], [completion + [EOS_ID]], ["322"], count=1)
    ok, bad = capsys.readouterr().out.splitlines()
    assert ok == "ok  '123' -> '321'  (reference '321')"
    assert bad.startswith("BAD ")
