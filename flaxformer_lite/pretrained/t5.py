"""T5 (v1.0, v1.1, flan-T5) onto the encoder-decoder `Transformer`.

Pre-norm blocks with RMSNorm and no biases; attention logits are not scaled by
1/sqrt(d_kv) (T5 folds that into its initialisation); positions enter only as a
learned relative bias, one (buckets, heads) table per stack read by every layer
(bidirectional in the encoder, causal in the decoder, none in cross-attention);
heads * d_kv may differ from d_model. The feed-forward is ReLU (v1.0) or gated GELU
("gated-gelu": flan-T5, v1.1). Embeddings are shared and unscaled. The output layer
is the shared embedding with the decoder output scaled by d_model^-0.5 (v1.0), or
lm_head of its own, unscaled (v1.1, flan-T5: tie_word_embeddings false).
"""

from __future__ import annotations

from flaxformer_lite.config import TransformerConfig
from flaxformer_lite.models.encoder_decoder import Transformer
from flaxformer_lite.pretrained import common
from flaxformer_lite.pretrained.convert import Layout, from_heads, linear, nest, to_heads
from flaxformer_lite.pretrained.vocabulary import CheckpointVocabulary
from flaxformer_lite.pretrained.weights import PretrainedError

PREFIXES = ()
# Copies of shared.weight some versions save, and a bias table transformers itself
# lists as unexpected (cross-attention has no position bias).
IGNORED = (
    "encoder.embed_tokens.weight",
    "decoder.embed_tokens.weight",
    "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",
)
FEED_FORWARD = {"relu": "relu", "gated-gelu": "geglu", "gated-silu": "swiglu"}
DEFAULT_MAX_LEN = 512  # T5 has no position table; the longest input we accept


def scales_decoder_output(hf_config: dict) -> bool:
    """transformers 5 writes scale_decoder_outputs; older configs say tie_word_embeddings
    (false on v1.1 and flan-T5, whose outputs are unscaled)."""
    if "scale_decoder_outputs" in hf_config:
        return bool(hf_config["scale_decoder_outputs"])
    return hf_config.get("tie_word_embeddings", True) is not False


def layout(hf_config: dict, names: set[str], *, path: str) -> Layout:
    projection = hf_config.get("feed_forward_proj", "relu")
    if projection not in FEED_FORWARD:
        raise PretrainedError(
            f"{path}: feed_forward_proj={projection!r} is not supported; use one of "
            f"{sorted(FEED_FORWARD)}."
        )
    gated = projection.startswith("gated")
    size = common.field(hf_config, "vocab_size", path=path)
    width = common.field(hf_config, "d_model", path=path)
    heads = common.field(hf_config, "num_heads", path=path)
    head_dim = common.field(hf_config, "d_kv", path=path)
    hidden = common.field(hf_config, "d_ff", path=path)
    encoder_layers = common.field(hf_config, "num_layers", path=path)
    decoder_layers = hf_config.get("num_decoder_layers") or encoder_layers
    buckets = hf_config.get("relative_attention_num_buckets", 32)
    # transformers uses lm_head whenever the file has one (a tied checkpoint's equals
    # shared.weight), and scales the decoder output by config alone.
    untied = "lm_head.weight" in names
    config = TransformerConfig(
        vocab_size=size + 3,
        d_model=width,
        num_heads=heads,
        head_dim=head_dim,
        d_ff=hidden,
        num_encoder_layers=encoder_layers,
        num_decoder_layers=decoder_layers,
        dropout_rate=hf_config.get("dropout_rate", 0.1),
        attention_dropout_rate=0.0,
        max_len=hf_config.get("n_positions", DEFAULT_MAX_LEN),
        norm_placement="pre",
        norm="rmsnorm",
        norm_epsilon=hf_config.get("layer_norm_epsilon", 1e-6),
        mlp=FEED_FORWARD[projection],
        use_bias=False,
        scale_embeddings=False,
        position_encoding="t5_relative",
        relative_num_buckets=buckets,
        relative_max_distance=hf_config.get("relative_attention_max_distance", 128),
        scale_attention_logits=False,
        tie_output_embedding=not untied,
        scale_decoder_output=scales_decoder_output(hf_config),
    )
    vocabulary = CheckpointVocabulary.from_config(hf_config, size)

    inner = heads * head_dim
    attention = {"q": (inner, width), "k": (inner, width), "v": (inner, width), "o": (width, inner)}
    feed_forward = {"wo": (width, hidden)}
    feed_forward.update(
        {"wi_0": (hidden, width), "wi_1": (hidden, width)} if gated else {"wi": (hidden, width)}
    )
    expected = {
        "shared.weight": (size, width),
        "encoder.final_layer_norm.weight": (width,),
        "decoder.final_layer_norm.weight": (width,),
        "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": (buckets, heads),
        "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": (buckets, heads),
    }
    if untied:
        expected["lm_head.weight"] = (size, width)
    for stack, layers in (("encoder", encoder_layers), ("decoder", decoder_layers)):
        sublayers = (
            ["SelfAttention", "EncDecAttention"] if stack == "decoder" else ["SelfAttention"]
        )
        for i in range(layers):
            block = f"{stack}.block.{i}.layer."
            for index, sublayer in enumerate(sublayers):
                for name, shape in attention.items():
                    expected[f"{block}{index}.{sublayer}.{name}.weight"] = shape
                expected[f"{block}{index}.layer_norm.weight"] = (width,)
            for name, shape in feed_forward.items():
                expected[f"{block}{len(sublayers)}.DenseReluDense.{name}.weight"] = shape
            expected[f"{block}{len(sublayers)}.layer_norm.weight"] = (width,)

    def params(read) -> dict:
        flat = {
            "source_embedding/embedding/embedding": vocabulary.rows(read("shared.weight")),
            "encoder/final/norm/scale": read("encoder.final_layer_norm.weight"),
            "decoder/final/norm/scale": read("decoder.final_layer_norm.weight"),
        }
        if untied:
            flat["decoder/output_projection/kernel"] = vocabulary.rows(read("lm_head.weight")).T
        for stack, layers in (("encoder", encoder_layers), ("decoder", decoder_layers)):
            flat[f"{stack}/position_bias/relative_attention_bias"] = read(
                f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
            )
            sublayers = [("self_attention", "SelfAttention")]
            if stack == "decoder":
                sublayers.append(("cross_attention", "EncDecAttention"))
            for i in range(layers):
                ours, theirs = f"{stack}/stack/layer_{i}/", f"{stack}.block.{i}.layer."
                for index, (attention_name, sublayer) in enumerate(sublayers):
                    prefix = f"{theirs}{index}.{sublayer}."
                    for name, letter in (("query", "q"), ("key", "k"), ("value", "v")):
                        kernel = to_heads(read(f"{prefix}{letter}.weight"), heads)
                        flat[f"{ours}{attention_name}/{name}/kernel"] = kernel
                    out = from_heads(read(f"{prefix}o.weight"), heads)
                    flat[f"{ours}{attention_name}/out/kernel"] = out
                    norm = f"{ours}pre_{attention_name}_norm/scale"
                    flat[norm] = read(f"{theirs}{index}.layer_norm.weight")
                dense = f"{theirs}{len(sublayers)}.DenseReluDense."
                if gated:
                    flat[f"{ours}mlp/wi_gate/kernel"] = linear(read(f"{dense}wi_0.weight"))
                    flat[f"{ours}mlp/wi_up/kernel"] = linear(read(f"{dense}wi_1.weight"))
                else:
                    flat[f"{ours}mlp/wi/kernel"] = linear(read(f"{dense}wi.weight"))
                flat[f"{ours}mlp/wo/kernel"] = linear(read(f"{dense}wo.weight"))
                flat[f"{ours}pre_mlp_norm/scale"] = read(
                    f"{theirs}{len(sublayers)}.layer_norm.weight"
                )
        return nest(flat)

    return Layout(
        module=Transformer(config),
        config=config,
        vocabulary=vocabulary,
        expected=expected,
        ignored=IGNORED,
        params=params,
        kind="seq2seq",
    )
