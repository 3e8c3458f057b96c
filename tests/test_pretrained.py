"""Hugging Face checkpoints through `flaxformer_lite.pretrained`, against transformers.

The fixtures in tests/fixtures/pretrained/ are tiny random models that
scripts/make_pretrained_fixtures.py saved with transformers + torch, together with
what transformers computed for them. Nothing here imports torch or transformers.
"""

import functools
import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.flax import save_file as save_flax
from safetensors.numpy import load_file, save_file
from tokenizers import Tokenizer

from flaxformer_lite import decoding, generate, pretrained
from flaxformer_lite.generate import LanguageModel
from flaxformer_lite.pretrained.vocabulary import CheckpointVocabulary
from flaxformer_lite.pretrained.weights import CheckpointTensors
from flaxformer_lite.translate import Translator

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "pretrained"
LANGUAGE_MODELS = [name for name in ("gpt2", "llama") if name in pretrained.SUPPORTED]
ENCODERS = [name for name in ("bert", "roberta", "distilbert") if name in pretrained.SUPPORTED]
SEQ2SEQ = ["t5", "flan_t5"] if "t5" in pretrained.SUPPORTED else []  # v1.0 tied; v1.1 gated
TOLERANCE = 1e-5
NEW_TOKENS = 8  # as the fixture script generated


@functools.cache
def load(name: str) -> pretrained.Pretrained:
    return pretrained.load(str(FIXTURES / name))


def reference(name: str) -> tuple[dict, dict]:
    """reference.json and every reference/*.npy of fixture `name`."""
    directory = FIXTURES / name / "reference"
    meta = json.loads((directory / "reference.json").read_text())
    arrays = {path.stem: np.load(path) for path in directory.glob("*.npy")}
    return meta, arrays


def assert_close_on(mask, ours, theirs, atol=TOLERANCE):
    """ours == theirs (B, T, ...) at the real positions of mask (B, T)."""
    real = np.asarray(mask, bool)
    np.testing.assert_allclose(ours[real], theirs[real], atol=atol, rtol=0)


@pytest.mark.parametrize("name", ENCODERS)
def test_encoder_outputs_match_transformers(name):
    meta, expected = reference(name)
    types = meta.get("token_types")
    outputs = load(name).forward(
        np.array(meta["ids"]),
        np.array(meta["mask"]),
        token_type_ids=None if types is None else np.array(types),
    )
    assert_close_on(meta["mask"], outputs["hidden"], expected["hidden_states"])
    assert_close_on(meta["mask"], outputs["mlm_logits"], expected["mlm_logits"])
    if "pooled" in expected:
        np.testing.assert_allclose(outputs["pooled"], expected["pooled"], atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("name", LANGUAGE_MODELS)
def test_language_model_logits_match_transformers(name):
    meta, expected = reference(name)
    outputs = load(name).forward(np.array(meta["ids"]), np.array(meta["mask"]))
    assert_close_on(meta["mask"], outputs["logits"], expected["logits"])


@pytest.mark.parametrize("name", LANGUAGE_MODELS)
def test_greedy_generation_matches_transformers(name):
    """Greedy search from every prompt at once (right-padded, of different lengths) writes
    transformers' tokens exactly; so does the generate CLI's LanguageModel on one prompt."""
    meta, _ = reference(name)
    loaded = load(name)
    vocabulary = loaded.tokenizer.vocabulary
    prompts = [loaded.tokenizer.encode_with_special_tokens(text) for text in meta["prompts"]]
    width = max(map(len, prompts))
    batch = np.zeros((len(prompts), width), np.int32)
    for row, ids in enumerate(prompts):
        batch[row, : len(ids)] = ids

    @jax.jit
    def greedy(params, prompts):
        start = decoding.prefill_lm(
            loaded.model, params, prompts, max_decode_len=width + NEW_TOKENS, prepend_bos=False
        )
        return decoding.greedy_search(
            decoding.make_lm_tokens_to_logits(loaded.model, params), start
        )

    tokens = np.asarray(greedy(loaded.params, batch))
    for row, (ids, expected) in enumerate(zip(prompts, meta["generations"], strict=True)):
        new = tokens[row, len(ids) : len(ids) + len(expected)]
        assert vocabulary.to_checkpoint_ids(new).tolist() == expected, meta["prompts"][row]

    language_model = LanguageModel(model_dir=str(FIXTURES / name))
    ids = language_model.generate(
        language_model.encode_prompt(meta["prompts"][0]), max_new_tokens=NEW_TOKENS
    )
    assert vocabulary.to_checkpoint_ids(ids).tolist() == meta["generations"][0]


@pytest.mark.parametrize("name", SEQ2SEQ)
def test_seq2seq_logits_match_transformers(name):
    """Teacher-forced logits: transformers' decoder inputs are the targets shifted right
    behind the decoder start token (T5's PAD)."""
    meta, expected = reference(name)
    targets, target_mask = np.array(meta["targets"]), np.array(meta["target_mask"])
    decoder_inputs = np.pad(targets, ((0, 0), (1, 0)))[:, :-1]  # start token 0 first
    decoder_mask = np.pad(target_mask, ((0, 0), (1, 0)), constant_values=1)[:, :-1]
    outputs = load(name).forward(
        np.array(meta["ids"]),
        np.array(meta["mask"]),
        decoder_input_ids=decoder_inputs,
        decoder_attention_mask=decoder_mask,
    )
    assert_close_on(target_mask, outputs["logits"], expected["logits"])


@pytest.mark.parametrize("name", SEQ2SEQ)
def test_seq2seq_greedy_matches_transformers(name):
    """translate's Translator encodes as the checkpoint's tokenizer does; greedy search
    writes transformers' tokens, rows that stopped early padded alike."""
    meta, _ = reference(name)
    translator = Translator(model_dir=str(FIXTURES / name))
    tokens = decoding.decode_batch(
        translator.model,
        translator.params,
        translator.encode(meta["sources"]),
        max_decode_len=NEW_TOKENS,
        beam_size=1,
    )
    vocabulary = translator.tokenizer.vocabulary
    assert vocabulary.to_checkpoint_ids(tokens).tolist() == meta["generations"]


@pytest.mark.parametrize("name", [*ENCODERS, *LANGUAGE_MODELS])
def test_tokenizer_gives_the_checkpoints_ids(name):
    meta, _ = reference(name)
    tokenizer = load(name).tokenizer
    for text, row, mask in zip(meta["texts"], meta["ids"], meta["mask"], strict=True):
        ours = tokenizer.encode_with_special_tokens(text)
        expected = [token for token, real in zip(row, mask, strict=True) if real]
        assert tokenizer.vocabulary.to_checkpoint_ids(ours).tolist() == expected


def test_vocabulary_moves_ids_past_pad_eos_bos():
    vocabulary = CheckpointVocabulary(size=10, pad_id=1, eos_id=2, start_id=0)
    ours = vocabulary.to_model_ids([0, 1, 2, 3, 9])
    assert ours.tolist() == [3, 0, 1, 6, 12]
    assert vocabulary.to_checkpoint_ids([0, 1, 2, 3, 6, 12]).tolist() == [1, 2, 0, 0, 3, 9]
    table = np.arange(10, dtype=np.float32)[:, None]
    assert vocabulary.rows(table)[:, 0].tolist() == [1, 2, 0, *range(10)]


def test_sharded_checkpoint_loads_like_a_single_file(tmp_path):
    """model.safetensors.index.json and its shards give the same parameters."""
    directory = copy_fixture("gpt2", tmp_path)
    tensors = load_file(directory / "model.safetensors")
    names = sorted(tensors)
    halves = {
        "model-00001-of-00002.safetensors": names[::2],
        "model-00002-of-00002.safetensors": names[1::2],
    }
    weight_map = {}
    for shard, shard_names in halves.items():
        save_file({name: tensors[name] for name in shard_names}, directory / shard)
        weight_map.update(dict.fromkeys(shard_names, shard))
    (directory / "model.safetensors").unlink()
    (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    sharded = pretrained.load(str(directory))
    single = load("gpt2")
    flat_sharded = dict(flatten(sharded.params))
    for path, value in flatten(single.params):
        np.testing.assert_array_equal(flat_sharded[path], value)


# Bad directories: one PretrainedError each, naming the file or tensor -------------------


def copy_fixture(name: str, tmp_path: pathlib.Path) -> pathlib.Path:
    directory = tmp_path / name
    shutil.copytree(FIXTURES / name, directory, ignore=shutil.ignore_patterns("reference"))
    return directory


def edit_tensors(directory: pathlib.Path, edit) -> None:
    tensors = load_file(directory / "model.safetensors")
    edit(tensors)
    save_file(tensors, directory / "model.safetensors")


def test_missing_directory(tmp_path):
    with pytest.raises(pretrained.PretrainedError, match="is not a directory"):
        pretrained.load(str(tmp_path / "nowhere"))


def test_missing_config(tmp_path):
    directory = copy_fixture("gpt2", tmp_path)
    (directory / "config.json").unlink()
    with pytest.raises(pretrained.PretrainedError, match=r"config\.json is missing"):
        pretrained.load(str(directory))


def test_missing_weights(tmp_path):
    directory = copy_fixture("gpt2", tmp_path)
    (directory / "model.safetensors").unlink()
    with pytest.raises(pretrained.PretrainedError, match=r"neither model\.safetensors"):
        pretrained.load(str(directory))


def test_gpt2_reads_vocab_json_and_merges_txt_without_tokenizer_json(tmp_path):
    # GPT-2 repositories from before tokenizer.json hold its two tables only. Written from
    # the fixture's tokenizer.json, they must tokenize exactly as it does.
    directory = copy_fixture("gpt2", tmp_path)
    table = json.loads((directory / "tokenizer.json").read_text())["model"]
    (directory / "vocab.json").write_text(json.dumps(table["vocab"]))
    merges = ["#version: 0.2", *(" ".join(pair) for pair in table["merges"])]
    (directory / "merges.txt").write_text("\n".join(merges) + "\n")
    reference = load("gpt2").tokenizer
    (directory / "tokenizer.json").unlink()
    tokenizer = pretrained.load(str(directory)).tokenizer
    texts = ["The quick brown fox.", " Tiny models attend,  or not!\n", "Hello<|endoftext|>world"]
    for text in texts:
        ids = tokenizer.encode_with_special_tokens(text)
        assert ids == reference.encode_with_special_tokens(text), text
        assert tokenizer.decode(ids) == reference.decode(ids)


def test_missing_tokenizer(tmp_path):
    directory = copy_fixture("gpt2", tmp_path)
    (directory / "tokenizer.json").unlink()
    with pytest.raises(pretrained.PretrainedError, match=r"has no tokenizer, and neither"):
        pretrained.load(str(directory))
    (directory / "spiece.model").write_bytes(b"")  # a slow tokenizer alone: say how to convert
    with pytest.raises(pretrained.PretrainedError, match=r"only spiece\.model.*save_pretrained"):
        pretrained.load(str(directory))


def test_unsupported_model_type(tmp_path):
    directory = copy_fixture("gpt2", tmp_path)
    config = json.loads((directory / "config.json").read_text())
    config["model_type"] = "mamba"
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(pretrained.PretrainedError, match="model_type='mamba' is not supported"):
        pretrained.load(str(directory))


def test_a_special_token_id_outside_the_vocabulary(tmp_path):
    directory = copy_fixture("gpt2", tmp_path)
    config = json.loads((directory / "config.json").read_text())
    config["eos_token_id"] = config["vocab_size"]
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(pretrained.PretrainedError, match=r"eos_token_id=\d+ is not an id of"):
        pretrained.load(str(directory))


def test_unknown_tensor(tmp_path):
    directory = copy_fixture("gpt2", tmp_path)
    edit_tensors(directory, lambda t: t.update({"h.0.attn.rotary": np.zeros(3, np.float32)}))
    with pytest.raises(pretrained.PretrainedError, match="'h.0.attn.rotary'"):
        pretrained.load(str(directory))


def test_missing_tensor(tmp_path):
    directory = copy_fixture("gpt2", tmp_path)
    edit_tensors(directory, lambda t: t.pop("transformer.h.1.mlp.c_fc.bias"))
    with pytest.raises(pretrained.PretrainedError, match="no tensor 'h.1.mlp.c_fc.bias'"):
        pretrained.load(str(directory))


def test_shape_mismatch_is_found_before_any_tensor_is_read(tmp_path, monkeypatch):
    directory = copy_fixture("gpt2", tmp_path)
    config = json.loads((directory / "config.json").read_text())
    config["n_inner"] = 2 * config["n_embd"]  # the weights have 4 * n_embd
    (directory / "config.json").write_text(json.dumps(config))

    def fail(self, name):
        raise AssertionError(f"read {name} before checking shapes")

    monkeypatch.setattr(CheckpointTensors, "read", fail)
    with pytest.raises(pretrained.PretrainedError, match=r"'h.0.mlp.c_fc.weight' has shape"):
        pretrained.load(str(directory))


def flatten(tree, prefix=()):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from flatten(value, (*prefix, key))
        else:
            yield "/".join((*prefix, key)), np.asarray(value)


def test_layernorm_gamma_beta_names_read_as_weight_bias(tmp_path):
    """bert-base-uncased's safetensors still say LayerNorm.gamma/beta; transformers reads
    them as weight/bias, and so do we."""
    directory = tmp_path / "bert"
    shutil.copytree(FIXTURES / "bert", directory, ignore=shutil.ignore_patterns("reference"))

    def rename(tensors):
        for name in [name for name in tensors if name.endswith("LayerNorm.weight")]:
            tensors[name.replace(".weight", ".gamma")] = tensors.pop(name)
        for name in [name for name in tensors if name.endswith("LayerNorm.bias")]:
            tensors[name.replace(".bias", ".beta")] = tensors.pop(name)

    edit_tensors(directory, rename)
    renamed = dict(flatten(pretrained.load(str(directory)).params))
    for path, value in flatten(load("bert").params):
        np.testing.assert_array_equal(renamed[path], value)


@pytest.mark.skipif("llama" not in pretrained.SUPPORTED, reason="needs RoPE")
@pytest.mark.parametrize(
    "settings",
    [
        {"rope_scaling": {"rope_type": "llama3", "factor": 8.0}},  # transformers 4 configs
        {"rope_parameters": {"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0}},
    ],
)
def test_rope_scaling_is_refused(tmp_path, settings):
    directory = copy_fixture("llama", tmp_path)
    config = json.loads((directory / "config.json").read_text())
    config.pop("rope_parameters", None)
    config.update(settings)
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(pretrained.PretrainedError, match="RoPE scaling '(llama3|linear)'"):
        pretrained.load(str(directory))


@pytest.mark.skipif("llama" not in pretrained.SUPPORTED, reason="needs RoPE")
def test_rope_theta_of_a_transformers4_config(tmp_path):
    """Configs saved by transformers 4 (TinyLlama's, say) keep rope_theta at the top level."""
    directory = copy_fixture("llama", tmp_path)
    config = json.loads((directory / "config.json").read_text())
    theta = config.pop("rope_parameters")["rope_theta"]
    config.update(rope_theta=theta, rope_scaling=None)
    (directory / "config.json").write_text(json.dumps(config))
    assert pretrained.load(str(directory)).config.rope_theta == theta != 10000.0


def test_pad_equal_to_eos_is_no_pad():
    """An EOS in the input stays a token (id 1), not padding, when config.json pads with it."""
    config = {"pad_token_id": 5, "eos_token_id": [5, 6], "bos_token_id": 4}
    vocabulary = CheckpointVocabulary.from_config(config, size=10)
    assert (vocabulary.pad_id, vocabulary.eos_id, vocabulary.start_id) == (None, 5, 4)
    assert vocabulary.to_model_ids([4, 5, 6]).tolist() == [7, 1, 9]


def test_bfloat16_checkpoint_is_read_as_float32(tmp_path):
    """Llama-style checkpoints ship bfloat16, which NumPy cannot hold; they load upcast."""
    directory = copy_fixture("gpt2", tmp_path)
    tensors = load_file(directory / "model.safetensors")
    save_flax(
        {name: jnp.asarray(value, jnp.bfloat16) for name, value in tensors.items()},
        str(directory / "model.safetensors"),
    )
    upcast = dict(flatten(pretrained.load(str(directory)).params))
    for path, value in flatten(load("gpt2").params):
        rounded = np.asarray(jnp.asarray(value, jnp.bfloat16), np.float32)
        assert upcast[path].dtype == np.float32
        np.testing.assert_array_equal(upcast[path], rounded)


def test_generate_cli_prints_the_greedy_text(capsys):
    """python -m flaxformer_lite.generate --model_dir=DIR --temperature=0: the prompt and
    transformers' greedy continuation, decoded by the checkpoint's own tokenizer. (Llama
    goes through the same LanguageModel in test_greedy_generation_matches_transformers.)"""
    name = "gpt2"
    meta, _ = reference(name)
    prompt, expected = meta["prompts"][0], meta["generations"][0]
    flags = [f"--model_dir={FIXTURES / name}", f"--prompt={prompt}", "--temperature=0"]
    generate.FLAGS(["generate", *flags, f"--max_new_tokens={len(expected)}"])
    try:
        generate.main(["generate"])
    finally:
        generate.FLAGS.unparse_flags()
    tokenizer = Tokenizer.from_file(str(FIXTURES / name / "tokenizer.json"))
    prompt_ids = tokenizer.encode(prompt).ids
    text = tokenizer.decode(prompt_ids + expected, skip_special_tokens=True)
    assert capsys.readouterr().out == text + "\n"
