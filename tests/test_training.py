"""Losses, schedules, the optimizer and the pure steps, on one device and under pmap."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax.training.train_state import TrainState

from configs.default import get_config
from flaxformer_lite import Transformer, TransformerConfig
from flaxformer_lite.families import EncoderDecoder
from flaxformer_lite.special_tokens import EOS_ID
from flaxformer_lite.training import losses as losses_module
from flaxformer_lite.training import parallel
from flaxformer_lite.training.losses import smoothed_cross_entropy, token_metrics
from flaxformer_lite.training.optimizer import decay_mask, make_optimizer
from flaxformer_lite.training.schedules import make_schedule, transformer_schedule
from flaxformer_lite.training.step import eval_step, train_step


def one_hot_reference(logits, labels, smoothing):
    """float64, the textbook way: build the smoothed distribution, take -sum q log p."""
    logits = np.asarray(logits, np.float64)
    vocab = logits.shape[-1]
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    target = np.full(logits.shape, smoothing / (vocab - 1))
    np.put_along_axis(target, np.asarray(labels)[..., None], 1.0 - smoothing, axis=-1)
    cross_entropy = -(target * log_probs).sum(-1)
    entropy = -(target * np.log(np.where(target > 0, target, 1.0))).sum(-1)
    return cross_entropy - entropy


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_smoothed_loss_matches_one_hot_reference(smoothing):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5, 11)).astype(np.float32) * 3
    labels = rng.integers(0, 11, size=(3, 5))
    loss = smoothed_cross_entropy(logits, labels, smoothing)
    np.testing.assert_allclose(loss, one_hot_reference(logits, labels, smoothing), atol=1e-5)


def test_a_model_predicting_the_smoothed_target_scores_zero():
    vocab, smoothing = 7, 0.1
    labels = np.array([[3, 5]])
    target = np.full((1, 2, vocab), smoothing / (vocab - 1))
    np.put_along_axis(target, labels[..., None], 1 - smoothing, axis=-1)
    loss = smoothed_cross_entropy(jnp.log(target), labels, smoothing)
    np.testing.assert_allclose(loss, 0.0, atol=1e-6)


def test_token_metrics_exclude_padding():
    logits = jnp.zeros((1, 4, 5)).at[0, 0, 3].set(10.0)
    labels = jnp.array([[3, 4, 0, 0]])
    metrics = token_metrics(logits, labels)
    assert metrics["token_count"] == 2 and metrics["correct_sum"] == 1
    np.testing.assert_allclose(
        metrics["loss_sum"], smoothed_cross_entropy(logits, labels)[0, :2].sum(), rtol=1e-6
    )


def test_accuracy_counts_the_argmax_with_ties_to_the_first_index():
    rng = np.random.default_rng(0)
    logits = rng.integers(0, 3, size=(4, 6, 5)).astype(np.float32)  # many ties
    labels = rng.integers(1, 5, size=(4, 6))
    metrics = token_metrics(jnp.asarray(logits), jnp.asarray(labels))
    assert metrics["correct_sum"] == (logits.argmax(-1) == labels).sum()


def test_transformer_schedule_at_known_steps():
    schedule = transformer_schedule(d_model=512, warmup_steps=4000)
    for step in (1, 100, 4000, 10_000, 100_000):
        expected = 512**-0.5 * min(step**-0.5, step * 4000**-1.5)
        assert float(schedule(step - 1)) == pytest.approx(expected, rel=1e-5)
    peak = 512**-0.5 * 4000**-0.5
    assert float(schedule(3999)) == pytest.approx(peak, rel=1e-5)


def test_cosine_schedule_warms_up_then_decays():
    config = ml_collections.ConfigDict(
        dict(schedule="cosine", learning_rate=1e-3, warmup_steps=10, num_train_steps=100)
    )
    schedule = make_schedule(config)
    assert float(schedule(0)) == 0.0
    assert float(schedule(10)) == pytest.approx(1e-3)
    assert float(schedule(100)) == pytest.approx(0.0, abs=1e-9)


def optimizer_config(**changes):
    values = dict(
        schedule="rsqrt",
        learning_rate=1.0,
        warmup_steps=10,
        num_train_steps=100,
        d_model=16,
        adam_b1=0.9,
        adam_b2=0.98,
        adam_eps=1e-9,
        weight_decay=0.0,
        grad_clip_norm=1.0,
    )
    return ml_collections.ConfigDict({**values, **changes})


def test_clipping_bounds_the_global_norm():
    clip = optax.clip_by_global_norm(optimizer_config().grad_clip_norm)
    grads = {"a": jnp.full((3,), 10.0), "b": jnp.full((2, 2), -7.0)}
    clipped, _ = clip.update(grads, clip.init(grads))
    assert float(optax.tree.norm(clipped)) == pytest.approx(1.0, rel=1e-5)


def test_weight_decay_skips_biases_and_norm_scales():
    params = {
        "dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)},
        "norm": {"scale": jnp.ones(2)},
    }
    assert decay_mask(params) == {
        "dense": {"kernel": True, "bias": False},
        "norm": {"scale": False},
    }
    optimizer = make_optimizer(optimizer_config(weight_decay=0.5))
    zero_grads = jax.tree_util.tree_map(jnp.zeros_like, params)
    updates, _ = optimizer.update(zero_grads, optimizer.init(params), params)
    assert float(jnp.abs(updates["dense"]["kernel"]).sum()) > 0
    assert float(jnp.abs(updates["dense"]["bias"]).sum()) == 0
    assert float(jnp.abs(updates["norm"]["scale"]).sum()) == 0


TINY = TransformerConfig(
    vocab_size=16,
    d_model=16,
    num_heads=2,
    d_ff=32,
    num_encoder_layers=1,
    num_decoder_layers=1,
    dropout_rate=0.0,
    max_len=8,
)


def family_of(model_config, length=6):
    """The encoder-decoder family of `model_config`, as the trainer builds it."""
    return EncoderDecoder(
        model_config=model_config,
        max_source_length=length,
        max_target_length=length,
        max_decode_length=length,
    )


FAMILY = family_of(TINY)


def random_batch(seed, rows=8, length=6):
    rng = np.random.default_rng(seed)
    inputs = rng.integers(4, 16, size=(rows, length)).astype(np.int32)
    targets = inputs[:, ::-1].copy()
    for row, keep in enumerate(rng.integers(2, length, size=rows)):  # uneven real tokens
        inputs[row, keep:] = 0
        targets[row, keep:] = 0
        inputs[row, keep - 1] = targets[row, keep - 1] = EOS_ID
    return {"inputs": inputs, "targets": targets}


@pytest.fixture(scope="module")
def tiny_state():
    model = Transformer(TINY)
    batch = random_batch(0)
    params = model.init(jax.random.key(0), batch["inputs"], batch["targets"])["params"]
    # Plain SGD: Adam's first update is ~lr * sign(grad), which turns float32 noise
    # in near-zero gradients into full-size differences and would hide real ones.
    return TrainState.create(apply_fn=model.apply, params=params, tx=optax.sgd(0.5))


def test_pmap_on_four_devices_equals_one_device(tiny_state):
    assert jax.local_device_count() == 4, "conftest sets four fake CPU devices"
    batch, rng = random_batch(1), jax.random.key(0)
    single_step = jax.jit(functools.partial(train_step, family=FAMILY, label_smoothing=0.1))
    single_state, single_metrics = single_step(tiny_state, batch, rng)

    sharded = jax.tree_util.tree_map(lambda x: x.reshape(4, 2, *x.shape[1:]), batch)
    p_step = parallel.pmapped_train_step(FAMILY, label_smoothing=0.1)
    multi_state, multi_metrics = p_step(parallel.replicate(tiny_state), sharded, rng)

    for key in ("loss_sum", "token_count", "correct_sum", "grad_norm"):
        np.testing.assert_allclose(multi_metrics[key][0], single_metrics[key], rtol=2e-5)
    np.testing.assert_allclose(multi_metrics["loss_sum"][0], multi_metrics["loss_sum"][3])
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, atol=2e-6),
        parallel.unreplicate(multi_state.params),
        single_state.params,
    )
    # The state comes back laid out as `replicate` laid it out: the next step compiles nothing.
    compiles = []

    def count_compiles(event, duration_secs, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(duration_secs)

    jax.monitoring.register_event_duration_secs_listener(count_compiles)
    try:
        p_step(multi_state, sharded, rng)
    finally:
        jax.monitoring.unregister_event_duration_listener(count_compiles)
    assert compiles == [], "the pmapped step compiled again for its own output state"

    p_eval = parallel.pmapped_eval_step(FAMILY, label_smoothing=0.1)
    single_eval = jax.jit(functools.partial(eval_step, family=FAMILY, label_smoothing=0.1))(
        tiny_state, batch
    )
    multi_eval = p_eval(parallel.replicate(tiny_state), sharded)
    np.testing.assert_allclose(multi_eval["nll_sum"][0], single_eval["nll_sum"], rtol=2e-5)


def test_dropout_prng_is_threefry_by_default_and_names_are_checked_before_compiling():
    assert get_config().prng_impl == "threefry2x32"
    assert parallel.dropout_prng_impl("philox2x32", local_device_count=1) == "philox2x32"
    with pytest.raises(ValueError, match="prng_impl='philox2x32'.*threefry2x32"):
        parallel.dropout_prng_impl("philox2x32", local_device_count=4)
    with pytest.raises(ValueError, match="prng_impl='mersenne' is unknown"):
        parallel.dropout_prng_impl("mersenne", local_device_count=1)


def record_dropout_masks(monkeypatch) -> list[bytes]:
    """Every mask jax.random.bernoulli draws from now on, as bytes, reported from the device."""
    masks = []
    draw = jax.random.bernoulli

    def recording_draw(key, p=0.5, shape=None, **kwargs):
        mask = draw(key, p, shape, **kwargs)
        jax.debug.callback(lambda m: masks.append(np.asarray(m).tobytes()), mask)
        return mask

    monkeypatch.setattr(jax.random, "bernoulli", recording_draw)
    return masks


def test_dropout_masks_differ_across_steps_devices_and_scanned_layers(tiny_state, monkeypatch):
    masks = record_dropout_masks(monkeypatch)
    scanned_config = TINY.replace(
        dropout_rate=0.5, scan_layers=True, num_encoder_layers=2, num_decoder_layers=2
    )
    scanned = Transformer(scanned_config)
    batch = random_batch(4)
    # Jitted: run op by op, the scanned model's init and forward take several times longer.
    init = jax.jit(scanned.init)
    params = init(jax.random.key(0), batch["inputs"], batch["targets"])["params"]
    state = TrainState.create(apply_fn=scanned.apply, params=params, tx=optax.sgd(0.0))
    identical_shards = jax.tree_util.tree_map(lambda x: np.stack([x[:2]] * 4), batch)
    p_step = parallel.pmapped_train_step(family_of(scanned_config), label_smoothing=0.0)
    state = parallel.replicate(state)
    for _ in range(2):  # steps 0 and 1, same batch, same parameters (lr 0)
        state, _ = p_step(state, identical_shards, jax.random.key(0))
    jax.effects_barrier()
    # Per device and step: 2 scanned layers x (3 encoder + 4 decoder sites) + 2 embeddings.
    assert len(masks) == 2 * 4 * (2 * 7 + 2)
    assert len(set(masks)) == len(masks), "some dropout masks repeat"

    # The layers of one scan, seen from a plain forward pass: each layer its own masks.
    masks.clear()
    jax.jit(scanned.apply, static_argnames="deterministic")(
        {"params": params},
        batch["inputs"],
        batch["targets"],
        deterministic=False,
        rngs={"dropout": jax.random.key(1)},
    )
    jax.effects_barrier()
    assert len(masks) >= 2 * 7 and len(set(masks)) == len(masks), "scanned layers share masks"


def test_train_step_normalises_by_the_real_tokens_pad_id_names(tiny_state, monkeypatch):
    """With PAD_ID moved to 5, the loss is the mean over tokens that are not 5."""
    monkeypatch.setattr(losses_module, "PAD_ID", 5)
    rng = np.random.default_rng(5)
    inputs = rng.integers(6, 16, size=(4, 6)).astype(np.int32)
    targets = np.concatenate([inputs[:, :4], np.full((4, 2), 5, np.int32)], axis=1)
    batch = {"inputs": inputs, "targets": targets}  # 16 real target tokens, 8 "pads"
    sgd = tiny_state.replace(tx=optax.sgd(1.0), opt_state=optax.sgd(1.0).init(tiny_state.params))
    new_state, metrics = jax.jit(functools.partial(train_step, family=FAMILY))(
        sgd, batch, jax.random.key(0)
    )

    def mean_loss(params):
        logits = tiny_state.apply_fn({"params": params}, batch["inputs"], batch["targets"])
        sums = token_metrics(logits, batch["targets"])
        return sums["loss_sum"] / sums["token_count"]

    expected_step = jax.grad(mean_loss)(tiny_state.params)
    taken_step = jax.tree_util.tree_map(jnp.subtract, tiny_state.params, new_state.params)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), taken_step, expected_step
    )


def test_accuracy_counts_nan_logits_as_wrong():
    logits = jnp.zeros((1, 3, 5)).at[0, 0, 2].set(9.0)  # position 0 right, label 2
    logits = logits.at[0, 1].set(jnp.nan)  # the whole row NaN
    logits = logits.at[0, 2, 4].set(jnp.nan)  # one NaN beside a winning label logit
    logits = logits.at[0, 2, 1].set(9.0)
    metrics = token_metrics(logits, jnp.array([[2, 2, 1]]))
    assert metrics["correct_sum"] == 1 and metrics["exact_sum"] == 0


def test_a_nonfinite_update_is_not_applied_but_the_step_counts(tiny_state):
    batch, rng = random_batch(6), jax.random.key(0)
    step = jax.jit(functools.partial(train_step, family=FAMILY))
    finite_state, finite_metrics = step(tiny_state, batch, rng)
    assert finite_metrics["nonfinite"] == 0.0 and int(finite_state.step) == 1
    exploding = TrainState.create(
        apply_fn=tiny_state.apply_fn, params=tiny_state.params, tx=optax.sgd(float("inf"))
    )
    new_state, metrics = step(exploding, batch, rng)
    assert metrics["nonfinite"] == 1.0 and int(new_state.step) == 1
    jax.tree_util.tree_map(np.testing.assert_array_equal, new_state.params, tiny_state.params)


def test_train_step_is_pure_and_lowers_the_loss(tiny_state):
    batch, rng = random_batch(2), jax.random.key(1)
    step = jax.jit(functools.partial(train_step, family=FAMILY))
    first, metrics_a = step(tiny_state, batch, rng)
    again, metrics_b = step(tiny_state, batch, rng)  # same inputs, same outputs
    np.testing.assert_array_equal(metrics_a["loss_sum"], metrics_b["loss_sum"])
    state = first
    for _ in range(20):
        state, metrics = step(state, batch, rng)
    assert int(state.step) == 21
    assert metrics["loss_sum"] < 0.8 * metrics_a["loss_sum"]
