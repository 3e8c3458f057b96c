"""Distillation: a frozen teacher inside the jitted step, and the loss against NumPy."""

import functools

import jax
import numpy as np
import pytest
from test_classification import tiny_config, trained  # noqa: F401 (a fixture)

from flaxformer_lite.data import create_datasets
from flaxformer_lite.families import make_family
from flaxformer_lite.training.checkpoint import restore_params
from flaxformer_lite.training.step import train_step
from flaxformer_lite.training.trainer import create_train_state

TEMPERATURE, ALPHA = 3.0, 0.7


@pytest.fixture(scope="module")
def run(trained, tmp_path_factory):  # noqa: F811 (the fixture imported above)
    """The trained classifier as the teacher; a smaller student's family, state and batch."""
    _, teacher_dir, _ = trained
    config = tiny_config(teacher=teacher_dir, d_model=16, d_ff=32, num_encoder_layers=1)
    config.data_dir = f"{teacher_dir}/data"  # the same prepared data
    config.update(distill_temperature=TEMPERATURE, distill_alpha=ALPHA, label_smoothing=0.1)
    config.update(weight_decay=0.5, learning_rate=0.01, warmup_steps=0)  # would move a teacher
    data = create_datasets(config, str(tmp_path_factory.mktemp("student")), 1)
    family = make_family(config, data.tokenizer.vocab_size)
    state = create_train_state(family, config, jax.random.key(0))
    batch = jax.tree.map(lambda x: x[0], next(data.train_iter))
    return family, state, batch, restore_params(teacher_dir)


def log_softmax(logits):
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def test_the_loss_is_the_kl_at_temperature_mixed_with_the_hard_loss(run):
    family, state, batch, _ = run
    params = state.params

    def class_logits(module, params):
        return np.asarray(module.apply({"params": params}, batch["inputs"])["class_logits"], float)

    student = class_logits(family.module, params["student"])
    teacher = class_logits(family.teacher.module, params["teacher"])
    labels = batch["targets"][:, 0]
    teacher_t, student_t = log_softmax(teacher / TEMPERATURE), log_softmax(student / TEMPERATURE)
    kl = (np.exp(teacher_t) * (teacher_t - student_t)).sum(-1)
    # Label smoothing 0.1 over 2 classes: target 0.9 on the label, 0.1 on the other, minus
    # the target's entropy (so a perfect prediction scores 0).
    log_p = log_softmax(student)
    target = np.where(np.arange(2)[None, :] == labels[:, None], 0.9, 0.1)
    hard = -(target * log_p).sum(-1) + (0.9 * np.log(0.9) + 0.1 * np.log(0.1))
    expected = np.mean(ALPHA * TEMPERATURE**2 * kl + (1 - ALPHA) * hard)

    step = jax.jit(functools.partial(train_step, family=family, label_smoothing=0.1))
    _, metrics = step(state, batch, jax.random.key(1))  # metrics of the parameters before
    assert metrics["token_count"] == len(labels)  # every row of a training batch is real
    np.testing.assert_allclose(metrics["loss_sum"] / metrics["token_count"], expected, rtol=1e-5)


def test_the_teacher_stays_frozen_while_the_student_learns(run):
    family, state, batch, teacher_checkpoint = run
    before = jax.tree.map(np.array, state.params)
    step = jax.jit(functools.partial(train_step, family=family), donate_argnums=(0,))
    for index in range(3):
        state, _ = step(state, batch, jax.random.key(index))
    jax.tree.map(np.testing.assert_array_equal, state.params["teacher"], teacher_checkpoint)
    changed = jax.tree.map(
        lambda old, new: not np.array_equal(old, new), before["student"], state.params["student"]
    )
    assert all(jax.tree.leaves(changed))  # every student parameter moved
