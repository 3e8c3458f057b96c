"""Sequence classification with the encoder: learning is_sorted, macro-F1, init_from, bad input."""

import jax
import numpy as np
import pytest

from configs import classify_default
from flaxformer_lite.data import DataError, create_datasets
from flaxformer_lite.families import make_family
from flaxformer_lite.special_tokens import NUM_SPECIAL_TOKENS
from flaxformer_lite.training.checkpoint import restore_params
from flaxformer_lite.training.trainer import train_and_evaluate


def tiny_config(**changes):
    """classify_default at test size: short strings of 6 symbols, a small encoder."""
    config = classify_default.get_config()
    config.update(synthetic_num_symbols=6, synthetic_min_length=3, synthetic_max_length=8)
    config.update(num_train_examples=3000, num_eval_examples=300, max_source_length=10)
    config.update(d_model=32, d_ff=64, num_encoder_layers=2, per_device_batch_size=32)
    config.update(num_train_steps=300, warmup_steps=30, learning_rate=0.003)
    config.update(eval_every_steps=300, checkpoint_every_steps=300, log_every_steps=100)
    config.update(changes)
    return config


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A classifier trained on is_sorted, its workdir and its final metrics (shared with
    tests/test_distillation.py, where it is the teacher)."""
    workdir = str(tmp_path_factory.mktemp("classifier"))
    config = tiny_config()
    return config, workdir, train_and_evaluate(config, workdir)


def test_the_encoder_learns_is_sorted_where_a_bag_of_tokens_cannot(trained):
    config, workdir, final = trained
    assert final["eval_accuracy"] >= 0.9

    # The best linear model of token counts (least squares on the training strings).
    data = create_datasets(config, workdir, 1)
    vocab = data.tokenizer.vocab_size

    def counts_and_labels(batches):
        """Token counts of every real row (plus a constant), and the labels."""
        features, labels = [], []
        for batch in batches:
            for row, label in zip(batch["inputs"][0], batch["targets"][0, :, 0], strict=True):
                if row[0]:  # not an all-PAD row
                    features.append(np.bincount(row[row >= NUM_SPECIAL_TOKENS], minlength=vocab))
                    labels.append(label)
        return np.c_[np.stack(features), np.ones(len(labels))], np.array(labels)

    train_x, train_y = counts_and_labels(next(data.train_iter) for _ in range(60))
    eval_x, eval_y = counts_and_labels(data.eval_batches())
    weights = np.linalg.lstsq(train_x, 2.0 * train_y - 1.0, rcond=None)[0]
    bag_accuracy = np.mean((eval_x @ weights > 0) == eval_y)
    assert bag_accuracy < 0.62  # chance is 0.5: both classes hold the same symbols


def test_macro_f1_matches_the_predictions(trained):
    config, workdir, final = trained
    data = create_datasets(config, workdir, 1)
    family = make_family(config, data.tokenizer.vocab_size)
    params = restore_params(workdir)
    predicted, labels = [], []
    for batch in data.eval_batches():
        batch = jax.tree.map(lambda x: x[0], batch)
        real = batch["inputs"][:, 0] != 0
        predicted.extend(np.asarray(family.predict(params, batch))[real])
        labels.extend(batch["targets"][real, 0])
    predicted, labels = np.array(predicted), np.array(labels)
    f1 = [
        2
        * np.sum((predicted == c) & (labels == c))
        / (np.sum(predicted == c) + np.sum(labels == c))
        for c in (0, 1)
    ]
    assert len(labels) == config.num_eval_examples
    assert final["eval_accuracy"] == pytest.approx(np.mean(predicted == labels))
    assert final["eval_macro_f1"] == pytest.approx(np.mean(f1))


def test_init_from_loads_the_encoder_and_initialises_the_new_heads_afresh(tmp_path, capsys):
    pretraining = str(tmp_path / "mlm")
    mlm = tiny_config(model="encoder_only", overlong="truncate", num_train_steps=2)
    train_and_evaluate(mlm, pretraining)
    pretrained = restore_params(pretraining)

    fine_tuning = make_family(tiny_config(init_from=pretraining), vocab_size=263)
    params = fine_tuning.init_params(jax.random.key(5))
    fresh = make_family(tiny_config(), vocab_size=263).init_params(jax.random.key(5))
    log = capsys.readouterr().out
    assert "loaded embeddings, final, stack, token_embedding; freshly initialised" in log
    assert "freshly initialised classifier, pooler" in log
    for part in ("token_embedding", "embeddings", "stack", "final"):  # final: pre-LN's norm
        jax.tree.map(np.testing.assert_array_equal, params[part], pretrained[part])
    for part in ("pooler", "classifier"):  # masked-LM pre-training has neither
        jax.tree.map(np.testing.assert_array_equal, params[part], fresh[part])
    assert not np.array_equal(params["stack"]["layer_0"]["mlp"]["wi"]["kernel"],
                              fresh["stack"]["layer_0"]["mlp"]["wi"]["kernel"])  # fmt: skip


def one_line_error(config, workdir) -> str:
    with pytest.raises(DataError) as error:
        train_and_evaluate(config, str(workdir))
    assert "\n" not in str(error.value)
    return str(error.value)


def test_a_label_outside_the_label_set_is_named_in_one_line(tmp_path):
    tsv = tmp_path / "reviews.tsv"
    tsv.write_text("pos\tgreat film\nmaybe\tnot sure\nneg\tawful\n")
    config = tiny_config(dataset="classification", train_file=str(tsv), eval_file=str(tsv))
    config.class_labels = "neg,pos"
    message = one_line_error(config, tmp_path / "run")
    assert "'maybe'" in message and "config.class_labels='neg,pos'" in message


def test_an_empty_tsv_is_named_in_one_line(tmp_path):
    tsv = tmp_path / "empty.tsv"
    tsv.write_text("")
    config = tiny_config(dataset="classification", train_file=str(tsv), class_labels="neg,pos")
    message = one_line_error(config, tmp_path / "run")
    assert "config.train_file=" in message and "the file is empty" in message
