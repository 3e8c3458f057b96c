"""Model families behind one interface: the trainer reads `config.model` and nothing else.

    family = make_family(config, vocab_size)   # e.g. config.model = "decoder_only"
    params = family.init_params(rng)
    logits = family.apply(params, batch)

Each family is a `ModelFamily` (families/base.py): its module, how a batch maps to the
module's inputs, its loss and metric sums, and what evaluation predicts.
"""

from flaxformer_lite.config import ConfigError, required_field
from flaxformer_lite.families.base import Batch, ModelFamily, transformer_config_from
from flaxformer_lite.families.captioning import ImageCaptioning
from flaxformer_lite.families.decoder_only import DecoderOnly
from flaxformer_lite.families.encoder_decoder import EncoderDecoder
from flaxformer_lite.families.encoder_only import EncoderClassifier, EncoderOnly
from flaxformer_lite.families.recurrent import RnnLM, RnnSeq2Seq
from flaxformer_lite.families.vit import VisionTransformerClassifier

FAMILIES: dict[str, type[ModelFamily]] = {
    family.name: family
    for family in (
        EncoderDecoder,
        DecoderOnly,
        ImageCaptioning,
        RnnSeq2Seq,
        RnnLM,
        VisionTransformerClassifier,
        EncoderOnly,
        EncoderClassifier,
    )
}


def make_family(config, vocab_size: int) -> ModelFamily:
    """The family `config.model` names, sized for a `vocab_size` tokenizer.

    An unknown name is a ConfigError in one line that lists the families there are.
    """
    name = required_field(config, "model")
    if name not in FAMILIES:
        raise ConfigError(f"config.model={name!r} is unknown: choose one of {tuple(FAMILIES)}.")
    return FAMILIES[name].from_config(config, vocab_size)


__all__ = [
    "FAMILIES",
    "Batch",
    "DecoderOnly",
    "EncoderDecoder",
    "ImageCaptioning",
    "ModelFamily",
    "RnnLM",
    "RnnSeq2Seq",
    "VisionTransformerClassifier",
    "make_family",
    "transformer_config_from",
]
