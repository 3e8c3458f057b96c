"""Data formats: the rows each model family reads, chosen once from `config.model`.

A format says how a (source, target) text pair becomes an example, and how long each of
its features may be:

    pairs              encoder-decoder   inputs  = source EOS
                                         targets = target EOS
    prompt_completion  decoder-only      targets      = source SEP target EOS
                                         loss_weights =   0 ..0  0   1 ..1  1
    text               decoder-only      targets      = text EOS (a line of a corpus), or
                                         a window of a token stream (data/text_stream.py)
                                         loss_weights = 1 everywhere
    masked_lm          encoder-only      inputs  = CLS source SEP target SEP, or CLS text SEP;
                                         each row then masked afresh (data/masking.py)
    classification     encoder-only      inputs  = CLS text SEP
                       classifier        targets = [the label's index in config.class_labels]

`config.model` and the kind of the dataset (pairs of texts, or plain text) pick the
format through `MODEL_FORMATS`, and nothing downstream asks again: the pipeline reads the
encoder and the lengths from the `DataFormat`. Language-model rows are `max_target_length`
tokens long; every feature of a row is padded, cut and packed alike.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import grain
import numpy as np

from flaxformer_lite.data import masking
from flaxformer_lite.data.options import DataError, DataOptions
from flaxformer_lite.data.tokenizers import Tokenizer
from flaxformer_lite.special_tokens import CLS_ID, EOS_ID, SEP_ID

Example = dict[str, np.ndarray]  # Feature name -> [n] ids (int32) or weights (float32).

# Datasets of plain text: a language model learns the text itself, with no source.
PLAIN_TEXT_DATASETS = ("text", "tiny_shakespeare", "lm1b")


def encode_pair(tokenizer: Tokenizer, pair: tuple[str, str]) -> Example:
    """(source, target) -> {"inputs": source EOS, "targets": target EOS}."""
    source, target = pair
    return {
        "inputs": np.array([*tokenizer.encode(source), EOS_ID], np.int32),
        "targets": np.array([*tokenizer.encode(target), EOS_ID], np.int32),
    }


def encode_prompt_completion(tokenizer: Tokenizer, pair: tuple[str, str]) -> Example:
    """(source, target) -> source SEP target EOS, weighted 0 on source and SEP, 1 after."""
    prompt = [*tokenizer.encode(pair[0]), SEP_ID]
    completion = [*tokenizer.encode(pair[1]), EOS_ID]
    return {
        "targets": np.array(prompt + completion, np.int32),
        "loss_weights": np.repeat(np.float32([0, 1]), [len(prompt), len(completion)]),
    }


def encode_document(tokenizer: Tokenizer, pair: tuple[str, str]) -> Example:
    """(_, text) -> text EOS, every token weighted 1: a line of a plain-text corpus."""
    targets = np.array([*tokenizer.encode(pair[1]), EOS_ID], np.int32)
    return {"targets": targets, "loss_weights": np.ones(len(targets), np.float32)}


def encode_masked_lm_text(tokenizer: Tokenizer, pair: tuple[str, str]) -> Example:
    """(source, target) -> CLS source SEP target SEP (BERT's sentence pair); CLS text SEP
    when there is no source (a line of plain text)."""
    source, target = pair
    tokens = [CLS_ID]
    if source:
        tokens += [*tokenizer.encode(source), SEP_ID]
    return {"inputs": np.array([*tokens, *tokenizer.encode(target), SEP_ID], np.int32)}


def encode_classification(
    labels: tuple[str, ...], tokenizer: Tokenizer, pair: tuple[str, str]
) -> Example:
    """(text, label) -> {"inputs": CLS text SEP, "targets": [index of label in labels]}."""
    text, label = pair
    if label not in labels:
        raise DataError(
            f"Label {label!r} (of the example {text[:40]!r}) is not in config.class_labels="
            f"{','.join(labels)!r}: fix the label, or add it to config.class_labels."
        )
    return {
        "inputs": np.array([CLS_ID, *tokenizer.encode(text), SEP_ID], np.int32),
        "targets": np.array([labels.index(label)], np.int32),
    }


def class_labels(options: DataOptions) -> tuple[str, ...]:
    """The label names of `config.class_labels` ("neg,pos"), in id order."""
    if options.class_labels is None:
        raise DataError(
            "config.class_labels is not set: a classifier needs its label names in id order, "
            "e.g. --config.class_labels=neg,pos."
        )
    labels = tuple(label.strip() for label in options.class_labels.split(","))
    if len(labels) < 2 or len(set(labels)) != len(labels) or not all(labels):
        raise DataError(
            f"config.class_labels={options.class_labels!r} must name two or more distinct, "
            "non-empty labels separated by commas, e.g. 'neg,pos'."
        )
    return labels


def pair_lengths(options: DataOptions) -> dict[str, int]:
    return {"inputs": options.max_source_length, "targets": options.max_target_length}


def language_model_lengths(options: DataOptions) -> dict[str, int]:
    return {"targets": options.max_target_length, "loss_weights": options.max_target_length}


def encoder_lengths(options: DataOptions) -> dict[str, int]:
    return {"inputs": options.max_source_length}


def classification_lengths(options: DataOptions) -> dict[str, int]:
    return {"inputs": options.max_source_length, "targets": 1}


def mask_tokens_transform(options: DataOptions, vocab_size: int) -> masking.MaskTokens:
    """BERT's masking of every row, at most `mlm_max_predictions` predictions a row."""
    return masking.MaskTokens(
        probability=options.mlm_probability,
        max_predictions=masking.max_predictions(
            options.mlm_probability, options.max_source_length, options.mlm_max_predictions
        ),
        vocab_size=vocab_size,
    )


@dataclasses.dataclass(frozen=True)
class DataFormat:
    """How text pairs become the examples of one model family."""

    name: str
    encode: Callable[[Tokenizer, tuple[str, str]], Example]
    lengths: Callable[[DataOptions], dict[str, int]]  # The row length of each feature.
    # The token features: each gets `_segmentation` and `_position` in a row. The others
    # (loss_weights) are float32 and follow the token feature of the same length.
    sequences: tuple[str, ...] = ("targets",)
    # What follows a prompt's tokens before the model writes: SEP for prompt -> completion,
    # so that generation from a user's prompt sees the rows it was trained on.
    prompt_suffix: tuple[int, ...] = ()
    # A random transform of every padded or packed row, made from the options and the
    # vocabulary size (masked-LM masking), or None.
    row_transform: Callable[[DataOptions, int], grain.transforms.RandomMap] | None = None


FORMATS = {
    "pairs": DataFormat("pairs", encode_pair, pair_lengths, sequences=("inputs", "targets")),
    "prompt_completion": DataFormat(
        "prompt_completion",
        encode_prompt_completion,
        language_model_lengths,
        prompt_suffix=(SEP_ID,),
    ),
    "text": DataFormat("text", encode_document, language_model_lengths),
    "masked_lm": DataFormat(
        "masked_lm",
        encode_masked_lm_text,
        encoder_lengths,
        sequences=("inputs",),
        row_transform=mask_tokens_transform,
    ),
    # Its encoder is bound to config.class_labels by `data_format`.
    "classification": DataFormat(
        "classification", encode_classification, classification_lengths, ("inputs", "targets")
    ),
}
# config.model -> {the dataset's kind -> the format its batches take}.
MODEL_FORMATS = {
    "encoder_decoder": {"pairs": "pairs", "plain_text": "pairs"},
    "decoder_only": {"pairs": "prompt_completion", "plain_text": "text"},
    "rnn_seq2seq": {"pairs": "pairs", "plain_text": "pairs"},
    "rnn_lm": {"pairs": "prompt_completion", "plain_text": "text"},
    "encoder_only": {"pairs": "masked_lm", "plain_text": "masked_lm"},
    "encoder_classifier": {"pairs": "classification"},
}

# Models whose training rows hold one example each, whatever config.pack_examples says: a
# recurrent state runs along the whole row, so it would carry one example into the next.
ONE_EXAMPLE_PER_ROW = ("rnn_seq2seq", "rnn_lm", "encoder_classifier")


def packs_rows(options: DataOptions) -> bool:
    """Are several training examples packed into each row?"""
    return options.pack_examples and options.model not in ONE_EXAMPLE_PER_ROW


def data_format(options: DataOptions) -> DataFormat:
    """The format `options.model` reads, for the kind of data `options.dataset` holds."""
    if options.model not in MODEL_FORMATS:
        raise DataError(
            f"config.model={options.model!r} has no data format: choose one of "
            f"{tuple(MODEL_FORMATS)}."
        )
    kind = "plain_text" if options.dataset in PLAIN_TEXT_DATASETS else "pairs"
    if kind not in MODEL_FORMATS[options.model]:
        raise DataError(
            f"config.model={options.model!r} reads labelled examples, not the plain text of "
            f"config.dataset={options.dataset!r}: use dataset 'classification' or a labelled one."
        )
    fmt = FORMATS[MODEL_FORMATS[options.model][kind]]
    if fmt.name == "classification":
        fmt = dataclasses.replace(
            fmt, encode=functools.partial(encode_classification, class_labels(options))
        )
    return fmt
