"""Llama onto `DecoderOnlyTransformer`.

Pre-norm blocks with RMSNorm, rotary position embeddings (RoPE, the "rotate half"
layout of our rotary layer, so no kernel is permuted), grouped-query attention
(num_key_value_heads), a SwiGLU feed-forward (gate_proj, up_proj, down_proj), no
biases, a final RMSNorm and an output layer of its own unless tie_word_embeddings.
RoPE scaling (linear, dynamic, yarn, llama3) is refused: only plain RoPE is mapped.
"""

from __future__ import annotations

from flaxformer_lite.config import TransformerConfig
from flaxformer_lite.models.decoder_only import DecoderOnlyTransformer
from flaxformer_lite.pretrained import common
from flaxformer_lite.pretrained.convert import Layout, from_heads, head_bias, linear, nest, to_heads
from flaxformer_lite.pretrained.vocabulary import CheckpointVocabulary
from flaxformer_lite.pretrained.weights import PretrainedError

PREFIXES = ("model.",)
IGNORED = (".rotary_emb.inv_freq",)  # a buffer older versions saved
MLP = (("wi_gate", "gate_proj"), ("wi_up", "up_proj"), ("wo", "down_proj"))  # ours, theirs


def rope_theta(hf_config: dict, *, path: str) -> float:
    """RoPE's base, from rope_parameters (transformers 5) or rope_theta + rope_scaling."""
    parameters = hf_config.get("rope_parameters") or {}
    scaling = hf_config.get("rope_scaling") or {}
    for settings in (parameters, scaling):
        kind = settings.get("rope_type", settings.get("type", "default"))
        if kind != "default":
            raise PretrainedError(
                f"{path}: RoPE scaling {kind!r} is not supported; only plain RoPE "
                "(rope_type 'default', rope_scaling null) is mapped."
            )
    if parameters.get("partial_rotary_factor", 1.0) != 1.0:
        raise PretrainedError(f"{path}: partial_rotary_factor != 1 is not supported.")
    return float(parameters.get("rope_theta", hf_config.get("rope_theta", 10000.0)))


def layout(hf_config: dict, names: set[str], *, path: str) -> Layout:
    if hf_config.get("hidden_act", "silu") != "silu":
        raise PretrainedError(
            f"{path}: hidden_act={hf_config['hidden_act']!r} is not supported; Llama's "
            "feed-forward is SwiGLU (silu)."
        )
    attention_bias = hf_config.get("attention_bias", False)
    if hf_config.get("mlp_bias", False) != attention_bias:
        raise PretrainedError(
            f"{path}: attention_bias and mlp_bias differ; our use_bias covers both."
        )
    if hf_config.get("pretraining_tp", 1) not in (1, None):
        raise PretrainedError(f"{path}: pretraining_tp > 1 is not supported.")
    size = common.field(hf_config, "vocab_size", path=path)
    width = common.field(hf_config, "hidden_size", path=path)
    heads = common.field(hf_config, "num_attention_heads", path=path)
    kv_heads = hf_config.get("num_key_value_heads") or heads
    layers = common.field(hf_config, "num_hidden_layers", path=path)
    hidden = common.field(hf_config, "intermediate_size", path=path)
    head_dim = hf_config.get("head_dim") or width // heads
    tied = hf_config.get("tie_word_embeddings", False)
    config = TransformerConfig(
        vocab_size=size + 3,
        d_model=width,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        d_ff=hidden,
        num_encoder_layers=1,  # unused: there is no encoder
        num_decoder_layers=layers,
        dropout_rate=0.0,  # Llama has no dropout outside attention
        attention_dropout_rate=hf_config.get("attention_dropout", 0.0),
        max_len=common.field(hf_config, "max_position_embeddings", path=path),
        norm_placement="pre",
        norm="rmsnorm",
        norm_epsilon=hf_config.get("rms_norm_eps", 1e-6),
        mlp="swiglu",
        use_bias=attention_bias,
        scale_embeddings=False,
        position_encoding="rope",
        rope_theta=rope_theta(hf_config, path=path),
        tie_output_embedding=tied,
    )
    vocabulary = CheckpointVocabulary.from_config(hf_config, size)

    projections = {
        "self_attn.q_proj": (heads * head_dim, width),
        "self_attn.k_proj": (kv_heads * head_dim, width),
        "self_attn.v_proj": (kv_heads * head_dim, width),
        "self_attn.o_proj": (width, heads * head_dim),
        "mlp.gate_proj": (hidden, width),
        "mlp.up_proj": (hidden, width),
        "mlp.down_proj": (width, hidden),
    }
    expected = {"embed_tokens.weight": (size, width), "norm.weight": (width,)}
    if not tied:
        expected["lm_head.weight"] = (size, width)
    for i in range(layers):
        for name, shape in projections.items():
            expected[f"layers.{i}.{name}.weight"] = shape
            if attention_bias:
                expected[f"layers.{i}.{name}.bias"] = shape[:1]
        expected[f"layers.{i}.input_layernorm.weight"] = (width,)
        expected[f"layers.{i}.post_attention_layernorm.weight"] = (width,)

    def params(read) -> dict:
        flat = {
            "token_embedding/embedding/embedding": vocabulary.rows(read("embed_tokens.weight")),
            "decoder/final/norm/scale": read("norm.weight"),
        }
        if not tied:
            flat["decoder/output_projection/kernel"] = vocabulary.rows(read("lm_head.weight")).T
        for i in range(layers):
            ours, theirs = f"decoder/stack/layer_{i}/", f"layers.{i}."
            for name, proj, count in (
                ("query", "q_proj", heads),
                ("key", "k_proj", kv_heads),
                ("value", "v_proj", kv_heads),
            ):
                weight = read(f"{theirs}self_attn.{proj}.weight")
                flat[f"{ours}self_attention/{name}/kernel"] = to_heads(weight, count)
                if attention_bias:
                    bias = read(f"{theirs}self_attn.{proj}.bias")
                    flat[f"{ours}self_attention/{name}/bias"] = head_bias(bias, count)
            out = read(f"{theirs}self_attn.o_proj.weight")
            flat[f"{ours}self_attention/out/kernel"] = from_heads(out, heads)
            if attention_bias:
                flat[f"{ours}self_attention/out/bias"] = read(f"{theirs}self_attn.o_proj.bias")
            for ours_name, proj in MLP:
                flat[f"{ours}mlp/{ours_name}/kernel"] = linear(read(f"{theirs}mlp.{proj}.weight"))
                if attention_bias:
                    flat[f"{ours}mlp/{ours_name}/bias"] = read(f"{theirs}mlp.{proj}.bias")
            flat[f"{ours}pre_self_attention_norm/scale"] = read(f"{theirs}input_layernorm.weight")
            flat[f"{ours}pre_mlp_norm/scale"] = read(f"{theirs}post_attention_layernorm.weight")
        return nest(flat)

    return Layout(
        module=DecoderOnlyTransformer(config),
        config=config,
        vocabulary=vocabulary,
        expected=expected,
        ignored=IGNORED + (("lm_head.weight",) if tied else ()),
        params=params,
        kind="causal_lm",
    )
