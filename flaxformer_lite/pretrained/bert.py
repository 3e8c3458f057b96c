"""BERT (and MiniLM, sentence-transformers' BERT models) onto `EncoderOnlyTransformer`.

BERT is post-LN with exact GELU, learned absolute positions, token types and a
LayerNorm on the embeddings; an MLM head (dense, activation, LayerNorm, tied output +
bias) and a pooler (dense + tanh over [CLS]) are loaded when the checkpoint has them.
Checkpoints saved from BertForMaskedLM/BertForPreTraining prefix the encoder's names
with "bert."; a bare BertModel (sentence-transformers) does not.
"""

from __future__ import annotations

import numpy as np

from flaxformer_lite.config import TransformerConfig
from flaxformer_lite.models.encoder_only import EncoderOnlyTransformer
from flaxformer_lite.pretrained import common
from flaxformer_lite.pretrained.convert import (
    Layout,
    from_heads,
    head_bias,
    linear,
    nest,
    to_heads,
)
from flaxformer_lite.pretrained.vocabulary import CheckpointVocabulary

PREFIXES = ("bert.",)
MLM_HEAD = "cls.predictions."
# Tensors a BERT checkpoint may hold that the encoder does not read: the next-sentence
# head of BertForPreTraining, the MLM decoder (a copy of the word embeddings and of
# cls.predictions.bias), and buffers older versions saved.
IGNORED = (
    "cls.seq_relationship.weight",
    "cls.seq_relationship.bias",
    "cls.predictions.decoder.weight",
    "cls.predictions.decoder.bias",
    ".position_ids",
    ".token_type_ids",
)


def layout(hf_config: dict, names: set[str], *, path: str) -> Layout:
    common.refuse(
        hf_config,
        "position_embedding_type",
        "absolute",
        path=path,
        why="only learned absolute positions are mapped",
    )
    return encoder_layout(
        hf_config,
        names,
        path=path,
        position_offset=0,
        mlm_prefix=MLM_HEAD,
        mlm_names=dict(transform="transform.dense", norm="transform.LayerNorm", bias="bias"),
    )


def encoder_layout(
    hf_config: dict,
    names: set[str],
    *,
    path: str,
    position_offset: int,
    mlm_prefix: str,
    mlm_names: dict,
    head_activation: str | None = None,
    extra_ignored: tuple[str, ...] = (),
) -> Layout:
    """The layout of BERT's tensor names; RoBERTa shares it (see roberta.py).

    `position_offset` rows of the position table come before position 0 (RoBERTa: 2).
    The MLM head's `mlm_names` (transform, norm, bias) sit under `mlm_prefix`; its
    activation is `head_activation`, or hidden_act's when None (BERT).
    """
    size = common.field(hf_config, "vocab_size", path=path)
    width = common.field(hf_config, "hidden_size", path=path)
    heads = common.field(hf_config, "num_attention_heads", path=path)
    layers = common.field(hf_config, "num_hidden_layers", path=path)
    hidden = common.field(hf_config, "intermediate_size", path=path)
    positions = common.field(hf_config, "max_position_embeddings", path=path)
    token_types = hf_config.get("type_vocab_size", 2)
    act = common.activation(hf_config, "hidden_act", path=path)
    has_mlm_head = f"{mlm_prefix}{mlm_names['transform']}.weight" in names
    has_pooler = "pooler.dense.weight" in names
    config = TransformerConfig(
        vocab_size=size + 3,
        d_model=width,
        num_heads=heads,
        d_ff=hidden,
        num_encoder_layers=layers,
        num_decoder_layers=1,  # unused: there is no decoder
        dropout_rate=hf_config.get("hidden_dropout_prob", 0.1),
        attention_dropout_rate=hf_config.get("attention_probs_dropout_prob", 0.1),
        max_len=positions - position_offset,
        norm_placement="post",
        norm="layernorm",
        norm_epsilon=hf_config.get("layer_norm_eps", 1e-12),
        mlp=act,
        use_bias=True,
        scale_embeddings=False,
        position_encoding="learned",
    )
    module = EncoderOnlyTransformer(
        config,
        num_token_types=token_types,
        embedding_norm=True,
        has_mlm_head=has_mlm_head,
        head_activation=head_activation or act,
        has_pooler=has_pooler,
    )
    vocabulary = CheckpointVocabulary.from_config(hf_config, size)

    expected = {
        "embeddings.word_embeddings.weight": (size, width),
        "embeddings.position_embeddings.weight": (positions, width),
        "embeddings.token_type_embeddings.weight": (token_types, width),
        "embeddings.LayerNorm.weight": (width,),
        "embeddings.LayerNorm.bias": (width,),
    }
    for i in range(layers):
        layer = f"encoder.layer.{i}."
        for name, shape in {
            "attention.self.query": (width, width),
            "attention.self.key": (width, width),
            "attention.self.value": (width, width),
            "attention.output.dense": (width, width),
            "intermediate.dense": (hidden, width),
            "output.dense": (width, hidden),
        }.items():
            expected[f"{layer}{name}.weight"] = shape
            expected[f"{layer}{name}.bias"] = shape[:1]
        for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
            expected[f"{layer}{norm}.weight"] = (width,)
            expected[f"{layer}{norm}.bias"] = (width,)
    if has_pooler:
        expected["pooler.dense.weight"] = (width, width)
        expected["pooler.dense.bias"] = (width,)
    if has_mlm_head:
        head = mlm_prefix
        expected[f"{head}{mlm_names['transform']}.weight"] = (width, width)
        expected[f"{head}{mlm_names['transform']}.bias"] = (width,)
        expected[f"{head}{mlm_names['norm']}.weight"] = (width,)
        expected[f"{head}{mlm_names['norm']}.bias"] = (width,)
        expected[f"{head}{mlm_names['bias']}"] = (size,)

    def params(read) -> dict:
        flat = {
            "token_embedding/embedding/embedding": vocabulary.rows(
                read("embeddings.word_embeddings.weight")
            ),
            "embeddings/position/position_embedding": read("embeddings.position_embeddings.weight")[
                position_offset:
            ],
            "embeddings/token_type_embedding/embedding": read(
                "embeddings.token_type_embeddings.weight"
            ),
            "embeddings/norm/scale": read("embeddings.LayerNorm.weight"),
            "embeddings/norm/bias": read("embeddings.LayerNorm.bias"),
        }
        for i in range(layers):
            ours, theirs = f"stack/layer_{i}/", f"encoder.layer.{i}."
            for name in ("query", "key", "value"):
                flat[f"{ours}self_attention/{name}/kernel"] = to_heads(
                    read(f"{theirs}attention.self.{name}.weight"), heads
                )
                flat[f"{ours}self_attention/{name}/bias"] = head_bias(
                    read(f"{theirs}attention.self.{name}.bias"), heads
                )
            flat[f"{ours}self_attention/out/kernel"] = from_heads(
                read(f"{theirs}attention.output.dense.weight"), heads
            )
            flat[f"{ours}self_attention/out/bias"] = read(f"{theirs}attention.output.dense.bias")
            flat.update(_dense(read, f"{ours}mlp/wi", f"{theirs}intermediate.dense"))
            flat.update(_dense(read, f"{ours}mlp/wo", f"{theirs}output.dense"))
            flat.update(
                _norm(
                    read, f"{ours}post_self_attention_norm", f"{theirs}attention.output.LayerNorm"
                )
            )
            flat.update(_norm(read, f"{ours}post_mlp_norm", f"{theirs}output.LayerNorm"))
        if has_pooler:
            flat.update(_dense(read, "pooler/dense", "pooler.dense"))
        if has_mlm_head:
            head = mlm_prefix
            flat.update(_dense(read, "mlm_head/transform", f"{head}{mlm_names['transform']}"))
            flat.update(_norm(read, "mlm_head/norm", f"{head}{mlm_names['norm']}"))
            flat["mlm_head/output_bias"] = vocabulary.rows(read(f"{head}{mlm_names['bias']}"))
        return nest(flat)

    return Layout(
        module=module,
        config=config,
        vocabulary=vocabulary,
        expected=expected,
        ignored=IGNORED + extra_ignored,
        params=params,
        kind="encoder",
    )


def _dense(read, ours: str, theirs: str) -> dict[str, np.ndarray]:
    return {
        f"{ours}/kernel": linear(read(f"{theirs}.weight")),
        f"{ours}/bias": read(f"{theirs}.bias"),
    }


def _norm(read, ours: str, theirs: str) -> dict[str, np.ndarray]:
    return {f"{ours}/scale": read(f"{theirs}.weight"), f"{ours}/bias": read(f"{theirs}.bias")}
