"""The encoder-only model and masked-LM pre-training: masks, loss, bidirectionality, pipeline."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from flaxformer_lite.config import TransformerConfig
from flaxformer_lite.data import create_datasets
from flaxformer_lite.data.masking import mask_tokens
from flaxformer_lite.families.encoder_only import EncoderOnly
from flaxformer_lite.models.encoder_only import EncoderOnlyTransformer, mean_pool
from flaxformer_lite.special_tokens import CLS_ID, MASK_ID, NUM_SPECIAL_TOKENS, SEP_ID

VOCAB = 300
BERT_LAYOUT = dict(
    norm_placement="post",
    norm_epsilon=1e-12,
    mlp="gelu",
    position_encoding="learned",
    scale_embeddings=False,
)


def tiny_config(**changes) -> TransformerConfig:
    fields = dict(vocab_size=VOCAB, d_model=32, num_heads=4, d_ff=64, num_encoder_layers=2)
    fields |= dict(max_len=24, dropout_rate=0.0, **BERT_LAYOUT)
    return TransformerConfig(**fields | changes)


def text_rows(rng, rows: int, length: int) -> np.ndarray:
    """CLS, random text tokens, SEP, then PAD after a random length. (rows, length)"""
    tokens = rng.integers(NUM_SPECIAL_TOKENS, VOCAB, (rows, length)).astype(np.int32)
    lengths = rng.integers(length // 2, length + 1, rows)
    tokens[:, 0] = CLS_ID
    tokens[np.arange(rows), lengths - 1] = SEP_ID
    tokens[np.arange(length)[None, :] >= lengths[:, None]] = 0
    return tokens


def test_masking_chooses_15_percent_and_replaces_80_10_10():
    rng = np.random.default_rng(0)
    rows = text_rows(rng, 3000, 40)
    chosen = masked = randomised = kept = candidates = 0
    for row in rows:
        out = mask_tokens(row, rng, probability=0.15, max_predictions=8, vocab_size=VOCAB)
        positions = out["mlm_positions"][out["mlm_weights"] > 0]
        assert (row[positions] >= NUM_SPECIAL_TOKENS).all()  # never CLS, SEP or PAD
        np.testing.assert_array_equal(out["mlm_ids"][out["mlm_weights"] > 0], row[positions])
        unchosen = np.setdiff1d(np.arange(len(row)), positions)
        np.testing.assert_array_equal(out["inputs"][unchosen], row[unchosen])
        new = out["inputs"][positions]
        candidates += (row >= NUM_SPECIAL_TOKENS).sum()
        chosen += len(positions)
        masked += (new == MASK_ID).sum()
        kept += (new == row[positions]).sum()
        randomised += ((new != MASK_ID) & (new != row[positions])).sum()
    assert chosen / candidates == pytest.approx(0.15, abs=0.01)
    assert masked / chosen == pytest.approx(0.8, abs=0.015)
    # A random replacement equals the original 1 time in 293: it then counts as kept.
    assert randomised / chosen == pytest.approx(0.1 * (1 - 1 / 293), abs=0.01)
    assert kept / chosen == pytest.approx(0.1 + 0.1 / 293, abs=0.01)


def test_masking_is_deterministic_under_a_seed():
    row = text_rows(np.random.default_rng(1), 1, 40)[0]
    draw = [
        mask_tokens(row, np.random.default_rng(seed), probability=0.15, max_predictions=8,
                    vocab_size=VOCAB)
        for seed in (7, 7, 8)
    ]  # fmt: skip
    for key in draw[0]:
        np.testing.assert_array_equal(draw[0][key], draw[1][key])
    assert not np.array_equal(draw[0]["mlm_positions"], draw[2]["mlm_positions"])


@pytest.fixture(scope="module")
def mlm_data(tmp_path_factory):
    """Masked-LM batches of 8 lines of text, one line per row, 4 rows a batch: 2 per epoch."""
    workdir = tmp_path_factory.mktemp("mlm")
    text = workdir / "lines.txt"
    text.write_text("".join(f"line {i} of some text to mask, long enough\n" for i in range(8)))
    config = default.get_config()
    config.update(model="encoder_only", dataset="text", train_file=str(text), eval_file=str(text))
    config.update(max_source_length=48, per_device_batch_size=4, pack_examples=False)
    return create_datasets(config, str(workdir), 1)


def unmasked(batch) -> np.ndarray:
    """The rows as they were before masking. (B, S)"""
    tokens = batch["inputs"][0].copy()
    for row, positions, ids, weights in zip(
        tokens, batch["mlm_positions"][0], batch["mlm_ids"][0], batch["mlm_weights"][0], strict=True
    ):
        row[positions[weights > 0]] = ids[weights > 0]
    return tokens


def test_pipeline_masks_afresh_each_epoch_and_the_same_on_resume(mlm_data):
    train = mlm_data.train_iter
    state = train.get_state()
    first_epoch = [next(train) for _ in range(2)]
    second_epoch = [next(train) for _ in range(2)]
    train.set_state(state)  # a resumed run
    resumed = next(train)
    for key in first_epoch[0]:
        np.testing.assert_array_equal(resumed[key], first_epoch[0][key])

    def masks_by_line(batches):
        return {
            tuple(line): tuple(positions)
            for batch in batches
            for line, positions in zip(unmasked(batch), batch["mlm_positions"][0], strict=True)
        }

    first, second = masks_by_line(first_epoch), masks_by_line(second_epoch)
    assert first.keys() == second.keys() and len(first) == 8  # every line once an epoch
    assert sum(first[line] != second[line] for line in first) >= 6  # new masks, not new lines


def test_evaluation_masks_are_fixed(mlm_data):
    once, again = next(mlm_data.eval_batches()), next(mlm_data.eval_batches())
    for key in once:
        np.testing.assert_array_equal(once[key], again[key])
    assert once["mlm_weights"].sum() > 0


def test_the_loss_counts_only_the_chosen_positions(mlm_data):
    family = EncoderOnly(model_config=tiny_config(max_len=48), max_length=48, max_predictions=8)
    batch = jax.tree.map(lambda x: x[0], next(mlm_data.eval_batches()))
    params = family.init_params(jax.random.key(0))
    sums = family.metric_sums(family.apply(params, batch), batch, label_smoothing=0.0)
    # The reference: the output layer at every position (B, S, V), then the chosen ones.
    inputs = {**family.model_inputs(batch), "masked_positions": None}
    everywhere = family.module.apply({"params": params}, **inputs)["mlm_logits"]
    logits = np.take_along_axis(
        np.asarray(everywhere, np.float64), batch["mlm_positions"][..., None], axis=1
    )  # (B, P, V)

    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(log_probs, batch["mlm_ids"][..., None], -1)[..., 0]  # (B, P)
    weights = batch["mlm_weights"]
    assert sums["token_count"] == weights.sum()
    np.testing.assert_allclose(sums["loss_sum"], (nll * weights).sum(), rtol=1e-5)
    correct = (logits.argmax(-1) == batch["mlm_ids"]) * weights
    assert sums["correct_sum"] == correct.sum()


def test_the_encoder_sees_the_future():
    """The output at the first position depends on every later real token, not on padding."""
    model = EncoderOnlyTransformer(tiny_config(), has_mlm_head=False)
    tokens = jnp.array([[CLS_ID, 40, 41, 42, 43, SEP_ID, 0, 0]])
    variables = model.init(jax.random.key(0), tokens)
    perturbations = jax.tree.map(jnp.zeros_like, variables["perturbations"])

    def first_output(perturbations):
        outputs = model.apply({**variables, "perturbations": perturbations}, tokens)
        return outputs["hidden"][0, 0].sum()

    grads = jax.grad(first_output)(perturbations)["embeddings"]["embedded"]  # (1, S, D)
    per_position = np.abs(np.asarray(grads[0])).sum(-1)
    assert (per_position[1:6] > 1e-6).all()  # later real tokens
    np.testing.assert_array_equal(per_position[6:], 0.0)  # padding


def test_mean_pooling_averages_the_real_tokens():
    hidden = jnp.arange(2 * 3 * 2, dtype=jnp.float32).reshape(2, 3, 2)
    real = jnp.array([[True, True, False], [True, False, False]])
    np.testing.assert_allclose(mean_pool(hidden, real), [[1.0, 2.0], [6.0, 7.0]])
