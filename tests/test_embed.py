"""Sentence embeddings: `flaxformer_lite.embed` against sentence-transformers' own output."""

import json
import pathlib
import shutil
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from flaxformer_lite import embed

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "pretrained"
SENTENCE_MODEL = FIXTURES / "sentence_bert"


@pytest.fixture(scope="module")
def encoder():
    return embed.SentenceEncoder(str(SENTENCE_MODEL))


def reference():
    texts = json.loads((SENTENCE_MODEL / "reference" / "reference.json").read_text())["texts"]
    return texts, np.load(SENTENCE_MODEL / "reference" / "embeddings.npy")


def test_embeddings_match_sentence_transformers(encoder):
    """modules.json asks for mean pooling then Normalize; a batch of 2 pads the third row."""
    texts, expected = reference()
    ours = encoder.embed(texts, batch_size=2)
    cosine = (
        (ours * expected).sum(-1)
        / np.linalg.norm(ours, axis=-1)
        / np.linalg.norm(expected, axis=-1)
    )
    assert cosine.min() >= 0.99999
    np.testing.assert_allclose(ours, expected, atol=1e-5, rtol=0)


def test_cli_writes_one_embedding_per_line(tmp_path):
    texts, expected = reference()
    (tmp_path / "lines.txt").write_text("\n".join(texts) + "\n")
    command = [
        sys.executable,
        "-m",
        "flaxformer_lite.embed",
        f"--model_dir={SENTENCE_MODEL}",
        f"--input={tmp_path / 'lines.txt'}",
        f"--output={tmp_path / 'out.npy'}",
    ]
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=600)
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expected, atol=1e-5, rtol=0)


def test_cli_missing_model_dir_is_one_line(tmp_path):
    embed.FLAGS(["embed", f"--model_dir={tmp_path / 'x'}"])
    try:
        with pytest.raises(SystemExit) as exit_info:
            embed.main(["embed"])
    finally:
        embed.FLAGS.unparse_flags()
    assert str(exit_info.value) == (
        f"error: {tmp_path / 'x'} is not a directory: point it at a model directory holding "
        "config.json and model.safetensors (as save_pretrained writes them)."
    )


def test_without_sentence_transformers_files_mean_pooling_and_l2(tmp_path):
    """The same checkpoint without modules.json: mean pooling + L2 norm, the same vectors."""
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        shutil.copy(SENTENCE_MODEL / name, bare / name)
    assert embed.read_pooling(str(bare)) == embed.SentencePooling()
    texts, expected = reference()
    ours = embed.SentenceEncoder(str(bare)).embed(texts)
    np.testing.assert_allclose(ours, expected, atol=1e-5, rtol=0)


def numpy_pool(hidden, lengths, mode):
    """One row's pooling in float64 NumPy, from its definition."""
    real = hidden[:lengths]
    return {
        "cls": real[0],
        "max": real.max(axis=0),
        "mean": real.mean(axis=0),
        "mean_sqrt_len_tokens": real.sum(axis=0) / np.sqrt(lengths),
        "lasttoken": real[-1],
    }[mode]


@pytest.mark.parametrize("mode", list(embed.POOLING_MODES))
def test_pooling_modes_against_numpy(mode):
    hidden = np.random.default_rng(0).normal(size=(3, 5, 4))
    lengths = [5, 2, 1]
    real = np.arange(5)[None, :] < np.array(lengths)[:, None]
    pooled = embed.pool(
        jnp.asarray(hidden, jnp.float32),
        jnp.asarray(real),
        embed.SentencePooling(modes=(mode,), normalize=False),
    )
    expected = [numpy_pool(hidden[row], lengths[row], mode) for row in range(3)]
    np.testing.assert_allclose(pooled, expected, atol=1e-6)


def write_pooling(directory, pooling_config, extra_modules=()):
    directory.mkdir()
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
        *extra_modules,
    ]
    (directory / "modules.json").write_text(json.dumps(modules))
    (directory / "1_Pooling").mkdir()
    (directory / "1_Pooling" / "config.json").write_text(json.dumps(pooling_config))
    (directory / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": 128, "do_lower_case": False})
    )


def test_legacy_pooling_config(tmp_path):
    """The sentence-transformers 2.x files (all-MiniLM-L6-v2's): boolean pooling_mode_* keys."""
    write_pooling(
        tmp_path / "model",
        {
            "word_embedding_dimension": 32,
            "pooling_mode_cls_token": True,
            "pooling_mode_max_tokens": True,
            "pooling_mode_mean_tokens": False,
        },
    )
    pooling = embed.read_pooling(str(tmp_path / "model"))
    assert pooling == embed.SentencePooling(modes=("cls", "max"), normalize=False, max_length=128)


def test_unsupported_module_is_refused(tmp_path):
    dense = {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}
    write_pooling(tmp_path / "model", {"pooling_mode": "mean"}, extra_modules=[dense])
    with pytest.raises(embed.EmbedError, match="'sentence_transformers.models.Dense' is not"):
        embed.read_pooling(str(tmp_path / "model"))
