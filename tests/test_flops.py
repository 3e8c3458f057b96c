"""The analytic FLOP count against the matmuls the model actually traces, and the peak table."""

import math

import jax
import jax.numpy as jnp
import pytest

from flaxformer_lite import Transformer, TransformerConfig, flops
from flaxformer_lite.training.losses import token_metrics

BATCH, SOURCE, TARGET = 2, 5, 7


def tiny_config(**changes) -> TransformerConfig:
    config = TransformerConfig(
        vocab_size=53,
        d_model=16,
        num_heads=2,
        d_ff=24,
        num_encoder_layers=2,
        num_decoder_layers=3,
        max_len=16,
        dropout_rate=0.0,
    )
    return config.replace(**changes)


def traced_matmul_flops(jaxpr: jax.extend.core.Jaxpr) -> int:
    """2 x (output elements) x (contracted size) summed over every dot_general.

    Walks into sub-jaxprs (jit, custom_jvp, remat); a scan body counts once per
    iteration.
    """
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (contracting, _), _ = eqn.params["dimension_numbers"]
            lhs_shape = eqn.invars[0].aval.shape
            contracted = math.prod(lhs_shape[axis] for axis in contracting)
            total += 2 * math.prod(eqn.outvars[0].aval.shape) * contracted
        repeats = eqn.params.get("length", 1) if eqn.primitive.name == "scan" else 1
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            total += repeats * traced_matmul_flops(sub)
    return total


def model_and_batch(config):
    """The model, its parameter shapes (tracing needs no values) and a batch."""
    model = Transformer(config)
    inputs = jnp.full((BATCH, SOURCE), 5, jnp.int32)
    targets = jnp.full((BATCH, TARGET), 6, jnp.int32)
    params = jax.eval_shape(model.init, jax.random.key(0), inputs, targets)["params"]
    return model, params, inputs, targets


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"attention_implementation": "explicit"},
        {"tie_output_embedding": False, "target_vocab_size": 41},
        {"scan_layers": True},
        {"num_kv_heads": 1, "head_dim": 6, "mlp": "swiglu"},
    ],
    ids=["default", "explicit_attention", "separate_output_vocab", "scan_layers", "gqa_gated"],
)
def test_forward_flops_match_traced_matmuls(changes):
    config = tiny_config(**changes)
    model, params, inputs, targets = model_and_batch(config)
    jaxpr = jax.make_jaxpr(lambda p: model.apply({"params": p}, inputs, targets))(params)
    assert traced_matmul_flops(jaxpr.jaxpr) == flops.forward_flops(config, BATCH, SOURCE, TARGET)


@pytest.mark.parametrize("remat_policy", ["none", "full"])
def test_gradient_costs_three_forward_passes(remat_policy):
    """Backward runs two matmuls per forward matmul; remat adds recompute on top."""
    config = tiny_config(scan_layers=True, remat_policy=remat_policy)
    model, params, inputs, targets = model_and_batch(config)

    def loss(p):
        logits = model.apply({"params": p}, inputs, targets)
        return token_metrics(logits, targets, 0.1)["loss_sum"]

    traced = traced_matmul_flops(jax.make_jaxpr(jax.grad(loss))(params).jaxpr)
    expected = flops.train_step_flops(config, BATCH, SOURCE, TARGET)
    if remat_policy == "full":
        # The backward pass re-runs every layer's forward except its last matmul
        # (the MLP's second one), whose output no gradient needs.
        d, f = config.d_model, config.d_ff
        layers = expected // 3 - 2 * BATCH * TARGET * d * config.vocab_size
        last_matmuls = 2 * BATCH * d * f * (2 * SOURCE + 3 * TARGET)  # 2 encoder, 3 decoder layers
        expected += layers - last_matmuls
    assert traced == expected


def test_hand_count_of_the_bench_workload():
    """Vocab 8000, d 256, 4 heads, d_ff 1024, 3 + 3 layers, batch 32, lengths 64."""
    config = TransformerConfig(
        vocab_size=8000, d_model=256, num_heads=4, d_ff=1024, num_encoder_layers=3,
        num_decoder_layers=3,
    )  # fmt: skip
    tokens = 32 * 64
    d, f, v, length = 256, 1024, 8000, 64
    # Per token: 4 d^2 multiply-adds per attention, 2 d f per MLP, length x d
    # for scores and again for values; cross-attention projects K, V from the
    # source (same length here).
    encoder = 4 * d * d + 2 * d * f + 2 * length * d
    decoder = 2 * (4 * d * d + 2 * length * d) + 2 * d * f
    per_token = 3 * encoder + 3 * decoder + d * v
    assert flops.forward_flops(config, 32, 64, 64) == 2 * tokens * per_token
    assert flops.train_step_flops(config, 32, 64, 64) == 6 * tokens * per_token


def test_xla_cost_analysis_agrees_within_elementwise_work():
    """XLA counts every op; matmuls dominate a model this wide, so it lands ~2% above."""
    config = tiny_config(d_model=64, d_ff=256, vocab_size=512, max_len=32)
    model, params, inputs, targets = model_and_batch(config)
    compiled = jax.jit(lambda p: model.apply({"params": p}, inputs, targets)).lower(params)
    xla_flops = compiled.compile().cost_analysis()["flops"]
    analytic = flops.forward_flops(config, BATCH, SOURCE, TARGET)
    assert analytic <= xla_flops <= 1.05 * analytic


@pytest.mark.parametrize(
    "device_kind, peak",
    [
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA A100-SXM4-40GB", 312e12),
        ("TPU v4", 275e12),
        ("TPU v5 lite", 197e12),
        ("TPU v5", 459e12),
        ("TPU v5p", 459e12),
        ("TPU v4 lite", None),
        ("cpu", None),
    ],
)
def test_peak_table(device_kind, peak):
    assert flops.table_peak_flops(device_kind) == peak


def test_cpu_peak_is_a_measured_matmul(monkeypatch):
    assert 1e8 < flops.measure_matmul_flops("float32", size=256, repeats=3) < 1e14
    monkeypatch.setattr(flops, "measure_matmul_flops", lambda dtype, device: 1e11)
    assert flops.peak_flops("float32", jax.devices("cpu")[0]) == (1e11, "measured float32 matmul")


def test_mfu():
    assert flops.mfu(flops_per_step=8e12, step_seconds=2.0, peak=1e12, num_devices=8) == 0.5
