"""DistilBERT onto `EncoderOnlyTransformer`.

BERT's post-LN layers without token types or pooler, LayerNorm epsilon fixed at 1e-12,
and names of its own (q_lin, sa_layer_norm, ffn.lin1, vocab_transform, ...). A
checkpoint with sinusoidal_pos_embds stores the sinusoids in its position table, so
positions load as a learned table either way.
"""

from __future__ import annotations

from flaxformer_lite.config import TransformerConfig
from flaxformer_lite.models.encoder_only import EncoderOnlyTransformer
from flaxformer_lite.pretrained import common
from flaxformer_lite.pretrained.convert import Layout, from_heads, head_bias, linear, nest, to_heads
from flaxformer_lite.pretrained.vocabulary import CheckpointVocabulary

PREFIXES = ("distilbert.",)
EPSILON = 1e-12  # DistilBERT's LayerNorms do not read layer_norm_eps
IGNORED = ("vocab_projector.weight", ".position_ids")  # the tied output layer's copy; a buffer


def layout(hf_config: dict, names: set[str], *, path: str) -> Layout:
    size = common.field(hf_config, "vocab_size", path=path)
    width = common.field(hf_config, "dim", path=path)
    heads = common.field(hf_config, "n_heads", path=path)
    layers = common.field(hf_config, "n_layers", path=path)
    hidden = common.field(hf_config, "hidden_dim", path=path)
    positions = common.field(hf_config, "max_position_embeddings", path=path)
    act = common.activation(hf_config, "activation", path=path)
    has_mlm_head = "vocab_transform.weight" in names
    config = TransformerConfig(
        vocab_size=size + 3,
        d_model=width,
        num_heads=heads,
        d_ff=hidden,
        num_encoder_layers=layers,
        num_decoder_layers=1,  # unused: there is no decoder
        dropout_rate=hf_config.get("dropout", 0.1),
        attention_dropout_rate=hf_config.get("attention_dropout", 0.1),
        max_len=positions,
        norm_placement="post",
        norm="layernorm",
        norm_epsilon=EPSILON,
        mlp=act,
        use_bias=True,
        scale_embeddings=False,
        position_encoding="learned",
    )
    module = EncoderOnlyTransformer(
        config,
        num_token_types=0,
        embedding_norm=True,
        has_mlm_head=has_mlm_head,
        head_activation=act,
        has_pooler=False,
    )
    vocabulary = CheckpointVocabulary.from_config(hf_config, size)

    expected = {
        "embeddings.word_embeddings.weight": (size, width),
        "embeddings.position_embeddings.weight": (positions, width),
        "embeddings.LayerNorm.weight": (width,),
        "embeddings.LayerNorm.bias": (width,),
    }
    linears = {
        "attention.q_lin": (width, width),
        "attention.k_lin": (width, width),
        "attention.v_lin": (width, width),
        "attention.out_lin": (width, width),
        "ffn.lin1": (hidden, width),
        "ffn.lin2": (width, hidden),
    }
    for i in range(layers):
        layer = f"transformer.layer.{i}."
        for name, shape in linears.items():
            expected[f"{layer}{name}.weight"] = shape
            expected[f"{layer}{name}.bias"] = shape[:1]
        for norm in ("sa_layer_norm", "output_layer_norm"):
            expected[f"{layer}{norm}.weight"] = (width,)
            expected[f"{layer}{norm}.bias"] = (width,)
    if has_mlm_head:
        expected.update(
            {
                "vocab_transform.weight": (width, width),
                "vocab_transform.bias": (width,),
                "vocab_layer_norm.weight": (width,),
                "vocab_layer_norm.bias": (width,),
                "vocab_projector.bias": (size,),
            }
        )

    def params(read) -> dict:
        flat = {
            "token_embedding/embedding/embedding": vocabulary.rows(
                read("embeddings.word_embeddings.weight")
            ),
            "embeddings/position/position_embedding": read("embeddings.position_embeddings.weight"),
            "embeddings/norm/scale": read("embeddings.LayerNorm.weight"),
            "embeddings/norm/bias": read("embeddings.LayerNorm.bias"),
        }
        for i in range(layers):
            ours, theirs = f"stack/layer_{i}/", f"transformer.layer.{i}."
            for name, lin in (("query", "q_lin"), ("key", "k_lin"), ("value", "v_lin")):
                weight = read(f"{theirs}attention.{lin}.weight")
                flat[f"{ours}self_attention/{name}/kernel"] = to_heads(weight, heads)
                bias = read(f"{theirs}attention.{lin}.bias")
                flat[f"{ours}self_attention/{name}/bias"] = head_bias(bias, heads)
            out = read(f"{theirs}attention.out_lin.weight")
            flat[f"{ours}self_attention/out/kernel"] = from_heads(out, heads)
            flat[f"{ours}self_attention/out/bias"] = read(f"{theirs}attention.out_lin.bias")
            for ours_name, theirs_name in (("wi", "lin1"), ("wo", "lin2")):
                flat[f"{ours}mlp/{ours_name}/kernel"] = linear(
                    read(f"{theirs}ffn.{theirs_name}.weight")
                )
                flat[f"{ours}mlp/{ours_name}/bias"] = read(f"{theirs}ffn.{theirs_name}.bias")
            for ours_name, theirs_name in (
                ("post_self_attention_norm", "sa_layer_norm"),
                ("post_mlp_norm", "output_layer_norm"),
            ):
                flat[f"{ours}{ours_name}/scale"] = read(f"{theirs}{theirs_name}.weight")
                flat[f"{ours}{ours_name}/bias"] = read(f"{theirs}{theirs_name}.bias")
        if has_mlm_head:
            flat["mlm_head/transform/kernel"] = linear(read("vocab_transform.weight"))
            flat["mlm_head/transform/bias"] = read("vocab_transform.bias")
            flat["mlm_head/norm/scale"] = read("vocab_layer_norm.weight")
            flat["mlm_head/norm/bias"] = read("vocab_layer_norm.bias")
            flat["mlm_head/output_bias"] = vocabulary.rows(read("vocab_projector.bias"))
        return nest(flat)

    return Layout(
        module=module,
        config=config,
        vocabulary=vocabulary,
        expected=expected,
        ignored=IGNORED,
        params=params,
        kind="encoder",
    )
