"""GPT-2 onto `DecoderOnlyTransformer`.

Pre-LN blocks with learned absolute positions, tanh-approximated GELU ("gelu_new"),
biases everywhere, a final LayerNorm and the output tied to the token embedding.
GPT-2's Conv1D layers store weights (in, out), our Dense layout already; the fused
c_attn (D, 3D) splits into query, key and value. Checkpoints saved from
GPT2LMHeadModel prefix names with "transformer."; the hub's gpt2 does not.
"""

from __future__ import annotations

import numpy as np

from flaxformer_lite.config import TransformerConfig
from flaxformer_lite.models.decoder_only import DecoderOnlyTransformer
from flaxformer_lite.pretrained import common
from flaxformer_lite.pretrained.convert import Layout, head_bias, nest
from flaxformer_lite.pretrained.vocabulary import CheckpointVocabulary

PREFIXES = ("transformer.",)
# The causal-mask buffers older checkpoints saved, and the tied output layer's copy.
IGNORED = (".attn.bias", ".attn.masked_bias")


def layout(hf_config: dict, names: set[str], *, path: str) -> Layout:
    for option in ("scale_attn_by_inverse_layer_idx", "add_cross_attention"):
        common.refuse(hf_config, option, False, path=path, why="our attention has no such option")
    common.refuse(
        hf_config, "scale_attn_weights", True, path=path, why="attention scales by 1/sqrt(Dh)"
    )
    size = common.field(hf_config, "vocab_size", path=path)
    width = common.field(hf_config, "n_embd", path=path)
    heads = common.field(hf_config, "n_head", path=path)
    layers = common.field(hf_config, "n_layer", path=path)
    positions = common.field(hf_config, "n_positions", path=path)
    hidden = hf_config.get("n_inner") or 4 * width
    tied = hf_config.get("tie_word_embeddings", True)
    config = TransformerConfig(
        vocab_size=size + 3,
        d_model=width,
        num_heads=heads,
        d_ff=hidden,
        num_encoder_layers=1,  # unused: there is no encoder
        num_decoder_layers=layers,
        dropout_rate=hf_config.get("resid_pdrop", 0.1),
        attention_dropout_rate=hf_config.get("attn_pdrop", 0.1),
        max_len=positions,
        norm_placement="pre",
        norm="layernorm",
        norm_epsilon=hf_config.get("layer_norm_epsilon", 1e-5),
        mlp=common.activation(hf_config, "activation_function", path=path, default="gelu_new"),
        use_bias=True,
        scale_embeddings=False,
        position_encoding="learned",
        tie_output_embedding=tied,
    )
    vocabulary = CheckpointVocabulary.from_config(hf_config, size)

    expected = {
        "wte.weight": (size, width),
        "wpe.weight": (positions, width),
        "ln_f.weight": (width,),
        "ln_f.bias": (width,),
    }
    if not tied:
        expected["lm_head.weight"] = (size, width)
    for i in range(layers):
        for name, shape in {
            "ln_1.weight": (width,),
            "ln_1.bias": (width,),
            "attn.c_attn.weight": (width, 3 * width),
            "attn.c_attn.bias": (3 * width,),
            "attn.c_proj.weight": (width, width),
            "attn.c_proj.bias": (width,),
            "ln_2.weight": (width,),
            "ln_2.bias": (width,),
            "mlp.c_fc.weight": (width, hidden),
            "mlp.c_fc.bias": (hidden,),
            "mlp.c_proj.weight": (hidden, width),
            "mlp.c_proj.bias": (width,),
        }.items():
            expected[f"h.{i}.{name}"] = shape

    def params(read) -> dict:
        flat = {
            "token_embedding/embedding/embedding": vocabulary.rows(read("wte.weight")),
            "decoder/embedder/position/position_embedding": read("wpe.weight"),
            "decoder/final/norm/scale": read("ln_f.weight"),
            "decoder/final/norm/bias": read("ln_f.bias"),
        }
        if not tied:
            flat["decoder/output_projection/kernel"] = vocabulary.rows(read("lm_head.weight")).T
        for i in range(layers):
            ours, theirs = f"decoder/stack/layer_{i}/", f"h.{i}."
            # c_attn computes x W + b with W (D, 3D): query, key and value side by side.
            kernels = np.split(read(f"{theirs}attn.c_attn.weight"), 3, axis=1)
            biases = np.split(read(f"{theirs}attn.c_attn.bias"), 3)
            for name, kernel, bias in zip(("query", "key", "value"), kernels, biases, strict=True):
                flat[f"{ours}self_attention/{name}/kernel"] = kernel.reshape(width, heads, -1)
                flat[f"{ours}self_attention/{name}/bias"] = head_bias(bias, heads)
            flat[f"{ours}self_attention/out/kernel"] = read(f"{theirs}attn.c_proj.weight").reshape(
                heads, -1, width
            )
            flat[f"{ours}self_attention/out/bias"] = read(f"{theirs}attn.c_proj.bias")
            for ours_name, theirs_name in (
                ("pre_self_attention_norm", "ln_1"),
                ("pre_mlp_norm", "ln_2"),
            ):
                flat[f"{ours}{ours_name}/scale"] = read(f"{theirs}{theirs_name}.weight")
                flat[f"{ours}{ours_name}/bias"] = read(f"{theirs}{theirs_name}.bias")
            for ours_name, theirs_name in (("wi", "c_fc"), ("wo", "c_proj")):
                flat[f"{ours}mlp/{ours_name}/kernel"] = read(f"{theirs}mlp.{theirs_name}.weight")
                flat[f"{ours}mlp/{ours_name}/bias"] = read(f"{theirs}mlp.{theirs_name}.bias")
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
