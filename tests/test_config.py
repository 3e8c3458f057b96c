"""TransformerConfig rejects bad values with a message naming the field."""

import pytest

from flaxformer_lite import TransformerConfig


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"d_model": 30, "num_heads": 4}, "d_model=30.*divisible by num_heads=4"),
        ({"dropout_rate": -0.1}, "dropout_rate=-0.1.*\\[0, 1\\)"),
        ({"attention_dropout_rate": 1.0}, "attention_dropout_rate=1.0"),
        ({"num_encoder_layers": 0}, "num_encoder_layers=0.*at least 1"),
        ({"num_decoder_layers": 0}, "num_decoder_layers=0"),
        ({"vocab_size": 0}, "vocab_size=0.*positive"),
        ({"max_len": -3}, "max_len=-3"),
        ({"norm_placement": "middle"}, "norm_placement='middle'.*'pre', 'post'"),
        ({"mlp": "tanh"}, "mlp='tanh'.*'relu', 'gelu', 'gelu_tanh', 'swiglu', 'geglu'"),
        ({"position_encoding": "rotary"}, "position_encoding='rotary'"),
        ({"dtype": "float8"}, "dtype='float8'"),
        ({"remat_policy": "some"}, "remat_policy='some'"),
        ({"local_window": -1}, "local_window=-1"),
        ({"target_vocab_size": 0}, "target_vocab_size=0"),
    ],
)
def test_invalid_field_is_named(changes, message):
    with pytest.raises(ValueError, match=message):
        TransformerConfig(**changes)


def test_defaults_are_the_papers_base_model():
    config = TransformerConfig()
    assert (config.d_model, config.num_heads, config.d_ff) == (512, 8, 2048)
    assert (config.num_encoder_layers, config.num_decoder_layers, config.features_per_head) == (
        6,
        6,
        64,
    )


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            {"attention_implementation": "cudnn"},
            "attention_implementation='cudnn'.*needs dtype 'bfloat16' or 'float16'",
        ),
        (
            {"attention_implementation": "xla", "attention_dropout_rate": 0.1},
            "attention_dropout_rate=0.1 runs only on the explicit path",
        ),
        ({"attention_implementation": "fused"}, "attention_implementation='fused'.*'auto'"),
        ({"matmul_backward": "fast"}, "matmul_backward='fast'.*'autodiff', 'cpu_row_major'"),
    ],
)
def test_attention_and_matmul_choices_are_checked(changes, message):
    with pytest.raises(ValueError, match=message):
        TransformerConfig(**changes)


def test_cudnn_in_bfloat16_and_auto_with_attention_dropout_are_accepted():
    TransformerConfig(attention_implementation="cudnn", dtype="bfloat16")
    TransformerConfig(attention_implementation="auto", attention_dropout_rate=0.1)
