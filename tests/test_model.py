"""The encoder-decoder Transformer: structure, masking properties, parameter count."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flaxformer_lite import Transformer, TransformerConfig, sinusoidal_encoding
from flaxformer_lite.models.stack import LayerStack
from flaxformer_lite.special_tokens import EOS_ID
from flaxformer_lite.training.losses import smoothed_cross_entropy

TINY = TransformerConfig(
    vocab_size=20,
    d_model=16,
    num_heads=2,
    d_ff=32,
    num_encoder_layers=2,
    num_decoder_layers=2,
    dropout_rate=0.0,
    max_len=16,
)
INPUTS = jnp.array([[5, 6, 7, 8, EOS_ID, 0], [9, 10, 11, 12, 13, EOS_ID]])
TARGETS = jnp.array([[8, 7, 6, 5, EOS_ID], [13, 12, 11, 10, 9]])


@pytest.fixture(scope="module")
def tiny():
    model = Transformer(TINY)
    variables = model.init(jax.random.key(0), INPUTS, TARGETS)
    return model, {"params": nn.meta.unbox(variables["params"])}


def perturbations_of(model, variables):
    """Zero `perturb` variables (B, L, D) for INPUTS/TARGETS: gradients land there."""
    return model.init(jax.random.key(0), INPUTS, TARGETS)["perturbations"]


def test_sinusoidal_encoding_matches_the_formula_in_float64():
    max_len, d_model = 50, 12
    table = sinusoidal_encoding(max_len, d_model)
    for pos in (0, 1, 7, 49):
        for i in range(d_model // 2):
            angle = pos / 10000 ** (2 * i / d_model)
            assert table[pos, 2 * i] == pytest.approx(np.sin(angle), abs=1e-6)
            assert table[pos, 2 * i + 1] == pytest.approx(np.cos(angle), abs=1e-6)


def count_params(config):
    shapes = jax.eval_shape(
        Transformer(config).init, jax.random.key(0), jnp.ones((1, 4), int), jnp.ones((1, 4), int)
    )["params"]
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(shapes))


@pytest.mark.parametrize("norm_placement", ["pre", "post"])
def test_exact_parameter_count_of_the_base_model(norm_placement):
    vocab, d, ff, layers = 37000, 512, 2048, 6
    attention = 4 * (d * d + d)  # W^Q, W^K, W^V, W^O with biases
    feed_forward = (d * ff + ff) + (ff * d + d)
    layer_norm = 2 * d  # scale and bias
    encoder_layer = attention + feed_forward + 2 * layer_norm
    decoder_layer = 2 * attention + feed_forward + 3 * layer_norm
    final_norms = 2 * layer_norm if norm_placement == "pre" else 0
    # One embedding table, shared by encoder, decoder and the (tied) output layer.
    expected = vocab * d + layers * (encoder_layer + decoder_layer) + final_norms
    config = TransformerConfig(vocab_size=vocab, norm_placement=norm_placement)
    assert count_params(config) == expected
    if norm_placement == "pre":
        assert expected == 63_084_544  # the paper's "65M" counts a slightly larger vocabulary


def test_untied_separate_vocabularies_add_their_tables():
    base = count_params(TINY)
    untied = count_params(TINY.replace(target_vocab_size=30, tie_output_embedding=False))
    assert untied - base == 30 * 16 + 16 * 30  # target embedding + output projection


@pytest.mark.parametrize("implementation", ["xla", "explicit"])
def test_gradient_to_future_target_positions_is_exactly_zero(implementation):
    model = Transformer(TINY.replace(attention_implementation=implementation))
    variables = model.init(jax.random.key(0), INPUTS, TARGETS)
    params, perturbations = variables["params"], variables["perturbations"]

    def output_per_position(perturbations):
        logits = model.apply({"params": params, "perturbations": perturbations}, INPUTS, TARGETS)
        return logits.sum(axis=(0, 2))  # (T,)

    jacobian = jax.jit(jax.jacrev(output_per_position))(perturbations)
    grads = np.asarray(jacobian["decoder"]["embedder"]["embedded"])  # (T_out, B, T_in, D)
    for position in range(TARGETS.shape[1]):
        assert np.all(grads[position, :, position + 1 :] == 0.0)
        assert np.any(grads[position, :, : position + 1] != 0.0)


def test_padding_changes_no_real_output(tiny):
    model, variables = tiny
    logits = model.apply(variables, INPUTS, TARGETS)
    more_padding = model.apply(
        variables, jnp.pad(INPUTS, ((0, 0), (0, 3))), jnp.pad(TARGETS, ((0, 0), (0, 4)))
    )
    real = np.asarray(TARGETS != 0)
    np.testing.assert_allclose(
        np.asarray(more_padding)[:, :5][real], np.asarray(logits)[real], atol=1e-5
    )

    # Nothing flows from padded source positions to any real output.
    def real_outputs(perturbations):
        out = model.apply({**variables, "perturbations": perturbations}, INPUTS, TARGETS)
        return (out * real[..., None]).sum()

    grads = jax.grad(real_outputs)(perturbations_of(model, variables))
    source_grads = np.asarray(grads["encoder"]["embedder"]["embedded"])
    assert np.all(source_grads[0, 5] == 0.0) and np.any(source_grads[0, :5] != 0.0)


def test_packed_examples_equal_the_examples_run_alone(tiny):
    model, variables = tiny
    first_source, first_target = [5, 6, 7, EOS_ID], [7, 6, 5, EOS_ID]
    second_source, second_target = [9, 10, EOS_ID], [10, 9, 4, EOS_ID]

    def row(*pieces, length=10):
        flat = [t for piece in pieces for t in piece]
        return jnp.array([flat + [0] * (length - len(flat))])

    def segments(*pieces, length=10):
        ids = [i + 1 for i, piece in enumerate(pieces) for _ in piece]
        pos = [p for piece in pieces for p in range(len(piece))]
        return row(ids, length=length), row(pos, length=length)

    inputs_seg, inputs_pos = segments(first_source, second_source)
    targets_seg, targets_pos = segments(first_target, second_target)
    packed = model.apply(
        variables,
        row(first_source, second_source),
        row(first_target, second_target),
        inputs_seg,
        targets_seg,
        inputs_pos,
        targets_pos,
    )
    alone_first = model.apply(variables, row(first_source), row(first_target))
    alone_second = model.apply(variables, row(second_source), row(second_target))
    np.testing.assert_allclose(packed[0, :4], alone_first[0, :4], atol=1e-5)
    np.testing.assert_allclose(packed[0, 4:8], alone_second[0, :4], atol=1e-5)


@pytest.mark.parametrize(
    "changes",
    [
        {"attention_implementation": "explicit"},
        {"scan_layers": True},
        {"matmul_backward": "cpu_row_major"},
    ],
)
def test_fast_paths_compute_the_same_logits(tiny, changes):
    model, variables = tiny
    reference = model.apply(variables, INPUTS, TARGETS)
    other = Transformer(TINY.replace(**changes))
    params = variables["params"]
    if changes.get("scan_layers"):
        params = stacked_on_a_layer_axis(params)
    np.testing.assert_allclose(
        other.apply({"params": params}, INPUTS, TARGETS), reference, atol=1e-5
    )


@pytest.mark.parametrize("local_window", [None, 1])
def test_xla_attention_equals_explicit_attention_on_packed_rows(local_window):
    config = TINY.replace(local_window=local_window)
    source, target = jnp.array([[5, 6, 1, 9, 8, 7, 1, 0]]), jnp.array([[6, 5, 1, 7, 8, 9, 1, 0]])
    segments = jnp.array([[1, 1, 1, 2, 2, 2, 2, 0]])
    positions = jnp.array([[0, 1, 2, 0, 1, 2, 3, 0]])
    packed = (source, target, segments, segments, positions, positions)
    unpacked = (INPUTS, TARGETS)
    params = Transformer(config).init(jax.random.key(3), INPUTS, TARGETS)["params"]
    for batch in (packed, unpacked):
        logits = {
            implementation: Transformer(
                config.replace(attention_implementation=implementation)
            ).apply({"params": params}, *batch)
            for implementation in ("explicit", "xla")
        }
        np.testing.assert_allclose(logits["xla"], logits["explicit"], atol=1e-5)


def test_local_window_limits_what_a_position_sees():
    model = Transformer(TINY.replace(local_window=1, num_decoder_layers=1, num_encoder_layers=1))
    variables = model.init(jax.random.key(0), INPUTS, TARGETS)

    def output_at(perturbations, position):
        logits = model.apply({**variables, "perturbations": perturbations}, INPUTS, TARGETS)
        return logits[:, position].sum()

    grads = jax.grad(output_at)(variables["perturbations"], 3)
    decoder_grads = np.abs(np.asarray(grads["decoder"]["embedder"]["embedded"])).sum((0, 2))
    assert decoder_grads[0] == 0.0 and decoder_grads[1] == 0.0 and decoder_grads[2] > 0.0


def test_encode_and_decode_compose_to_the_full_call(tiny):
    model, variables = tiny
    encoded = model.apply(variables, INPUTS, method=model.encode)
    assert encoded.shape == (2, 6, 16)
    decoder_inputs = jnp.array([[2, 8, 7, 6, 5], [2, 13, 12, 11, 10]])
    logits = model.apply(variables, encoded, INPUTS, decoder_inputs, method=model.decode)
    np.testing.assert_allclose(logits, model.apply(variables, INPUTS, TARGETS), atol=1e-6)


def test_attention_weights_of_every_layer_are_available(tiny):
    model, variables = tiny
    _, state = model.apply(variables, INPUTS, TARGETS, mutable=["intermediates"])
    sown = state["intermediates"]
    (cross,) = sown["decoder"]["stack"]["layer_1"]["cross_attention"]["attention_weights"]
    assert cross.shape == (2, 2, 5, 6)  # (B, H, T, S)
    np.testing.assert_allclose(cross[1].sum(-1), 1.0, atol=1e-6)
    assert np.all(np.asarray(cross)[0, :, :, 5] == 0.0)  # padded source token gets no weight


def test_bad_token_ids_and_lengths_raise_clear_errors(tiny):
    model, variables = tiny
    with pytest.raises(ValueError, match=r"inputs holds token ids in \[0, 25\].*\[0, 20\)"):
        model.apply(variables, INPUTS.at[0, 0].set(25), TARGETS)
    with pytest.raises(ValueError, match="inputs has length 17 > max_len=16"):
        model.apply(variables, jnp.ones((1, 17), int), TARGETS)
    with pytest.raises(ValueError, match="decoder_inputs holds token ids"):
        model.apply(variables, INPUTS, TARGETS.at[0, 0].set(-1))


def test_bfloat16_logits_are_within_a_stated_tolerance_of_float32(tiny):
    model, variables = tiny
    float32_logits = model.apply(variables, INPUTS, TARGETS)
    logits = Transformer(TINY.replace(dtype="bfloat16")).apply(variables, INPUTS, TARGETS)
    assert logits.dtype == jnp.float32
    # Measured: max |gap| 0.015 to 0.017 for seeds 0-2 on logits of magnitude up to 4.5 (about
    # one bfloat16 ulp of the largest logit); 0.05 is three times that, and far below a bug's.
    np.testing.assert_allclose(logits, float32_logits, atol=0.05, rtol=0)
    leaves = jax.tree_util.tree_leaves(variables["params"])
    assert all(leaf.dtype == jnp.float32 for leaf in leaves)


def test_forward_mode_autodiff_runs_through_the_model_with_defaults(tiny):
    model, variables = tiny
    params = variables["params"]
    tangent = jax.tree.map(lambda leaf: jnp.full_like(leaf, 1e-3), params)

    def logits_of(params):
        return model.apply({"params": params}, INPUTS, TARGETS)

    @jax.jit
    def forward_mode(params, tangent):
        _, forward_tangent = jax.jvp(logits_of, (params,), (tangent,))
        _, linear = jax.linearize(logits_of, params)
        return forward_tangent, linear(tangent)

    forward_tangent, linearized = forward_mode(params, tangent)
    np.testing.assert_allclose(linearized, forward_tangent, atol=1e-5)
    # Both agree with a finite difference of the float32 logits.
    shifted = jax.tree.map(lambda leaf, step: leaf + step, params, tangent)
    finite_difference = jax.jit(logits_of)(shifted) - jax.jit(logits_of)(params)
    np.testing.assert_allclose(forward_tangent, finite_difference, atol=2e-4)


def stacked_on_a_layer_axis(params, num_layers=2):
    """Per-layer parameters (layer_0, layer_1, ...) stacked under `layers`, as nn.scan has them."""
    params = jax.tree_util.tree_map(lambda x: x, params)
    for half in ("encoder", "decoder"):
        layers = params[half]["stack"]
        stacked = jax.tree_util.tree_map(
            lambda *xs: jnp.stack(xs), *(layers[f"layer_{i}"] for i in range(num_layers))
        )
        params[half]["stack"] = {"layers": stacked}
    return params


@functools.cache
def gradients_with_dropout(config):
    """Gradients of the loss with dropout on and fixed keys, from the `tiny` weights."""
    model = Transformer(config)
    params = nn.meta.unbox(Transformer(TINY).init(jax.random.key(0), INPUTS, TARGETS)["params"])
    if config.scan_layers:
        params = stacked_on_a_layer_axis(params)

    def loss(params):
        logits = model.apply(
            {"params": params},
            INPUTS,
            TARGETS,
            deterministic=False,
            rngs={"dropout": jax.random.key(5)},
        )
        return smoothed_cross_entropy(logits, TARGETS).mean()

    return jax.jit(jax.grad(loss))(params)


@pytest.mark.parametrize("scan_layers", [False, True], ids=["looped", "scanned"])
@pytest.mark.parametrize("remat_policy", ["full", "dots_saveable"])
def test_remat_gives_the_same_gradients(scan_layers, remat_policy):
    """Remat changes only the backward pass, so compare gradients (dropout on, same keys)."""
    config = TINY.replace(dropout_rate=0.2, scan_layers=scan_layers)
    stored = gradients_with_dropout(config)
    recomputed = gradients_with_dropout(config.replace(remat_policy=remat_policy))
    for got, want in zip(jax.tree.leaves(recomputed), jax.tree.leaves(stored), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=1e-5)
    assert max(float(jnp.abs(leaf).max()) for leaf in jax.tree.leaves(stored)) > 1e-2


class DropoutProbe(nn.Module):
    """A stand-in layer that records the dropout mask it draws."""

    config: TransformerConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x):
        mask = nn.Dropout(0.5)(jnp.ones_like(x), deterministic=self.deterministic)
        self.sow("intermediates", "dropout_mask", mask)
        return x, None


def test_scanned_layers_draw_different_dropout_masks():
    stack = LayerStack(DropoutProbe, TINY.replace(scan_layers=True), num_layers=3)
    x = jnp.zeros((2, 5, 16))
    _, state = stack.apply(
        {},
        x,
        deterministic=False,
        rngs={"dropout": jax.random.key(0)},
        mutable=["intermediates"],
    )
    (masks,) = state["intermediates"]["layers"]["dropout_mask"]  # (layers, B, L, D)
    masks = np.asarray(masks)
    assert masks.shape == (3, 2, 5, 16)
    for first in range(3):
        for second in range(first + 1, 3):
            assert (masks[first] != masks[second]).mean() > 0.3


@pytest.mark.parametrize("norm_placement", ["pre", "post"])
def test_both_norm_placements_learn_a_tiny_copy_task(norm_placement):
    config = TINY.replace(norm_placement=norm_placement, dropout_rate=0.1)
    model = Transformer(config)
    rng = np.random.default_rng(0)
    tokens = rng.integers(4, 20, size=(64, 6))
    tokens[:, -1] = EOS_ID
    tokens = jnp.asarray(tokens)
    params = model.init(jax.random.key(0), tokens, tokens)["params"]
    optimizer = optax.adam(5e-3, b2=0.98)
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, dropout_key):
        def loss_fn(params):
            logits = model.apply(
                {"params": params},
                tokens,
                tokens,
                deterministic=False,
                rngs={"dropout": dropout_key},
            )
            return smoothed_cross_entropy(logits, tokens).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    for i in range(40):
        params, opt_state, loss = step(params, opt_state, jax.random.key(i))
        losses.append(float(loss))
    assert np.mean(losses[-5:]) < 0.75 * np.mean(losses[:5])
