"""RoBERTa onto `EncoderOnlyTransformer`: BERT's layout with two differences.

RoBERTa pads with id 1 and numbers positions from padding_idx + 1 (so the first token
reads row 2 of the position table); we drop those leading rows, so our position 0 is
its row padding_idx + 1. Its MLM head ("lm_head.") always uses exact GELU.
"""

from __future__ import annotations

from flaxformer_lite.pretrained import bert, common
from flaxformer_lite.pretrained.convert import Layout

PREFIXES = ("roberta.",)


def layout(hf_config: dict, names: set[str], *, path: str) -> Layout:
    common.refuse(
        hf_config,
        "position_embedding_type",
        "absolute",
        path=path,
        why="only learned absolute positions are mapped",
    )
    padding_idx = common.field(hf_config, "pad_token_id", path=path)
    return bert.encoder_layout(
        hf_config,
        names,
        path=path,
        position_offset=padding_idx + 1,
        mlm_prefix="lm_head.",
        mlm_names=dict(transform="dense", norm="layer_norm", bias="bias"),
        head_activation="gelu",
        extra_ignored=("lm_head.decoder.weight", "lm_head.decoder.bias"),
    )
