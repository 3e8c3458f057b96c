"""The input pipeline: datasets prepared by TFDS, read without TensorFlow, batched by grain.

    from flaxformer_lite.data import create_datasets

    data = create_datasets(config, workdir, num_local_devices=jax.local_device_count())
    data.tokenizer.vocab_size             # the model's vocabulary size
    batch = next(data.train_iter)         # dict of [devices, per_device_batch, length] arrays
    for batch in data.eval_batches("validation"): ...

`config.model` picks the data format, and with it the fields of a batch (formats.py):

    encoder_decoder  "pairs"              inputs, targets, *_segmentation, *_position
    decoder_only     "prompt_completion"  targets = source SEP target EOS,
                                          targets_segmentation, targets_position,
                                          loss_weights (float32): 0 on source and SEP, 1 after
    decoder_only     "text"               the same fields, every weight 1: windows of
                                          max_target_length tokens of a text stream
                                          (dataset=text, tiny_shakespeare), or packed lines (lm1b)

`data.data_format` names the format. For "text", `data.eval_bytes[split]` is the number of
UTF-8 bytes the evaluation batches of `split` cover (each held-out token is in exactly one
window; a window's first token is predicted from BOS alone), so that

    bits_per_byte = nll_sum / ln(2) / data.eval_bytes[split]

where nll_sum is the unsmoothed negative log-likelihood, in nats, summed over the split.

Modules, in the order the data flow through them:

    options      the config fields the pipeline reads, their checks, `DataError` (the
                 one-line error for bad input), and who prepares shared files on several hosts
    formats      the data format of each model family: pairs, prompt_completion, text
    synthetic    copy / reverse / sort / addition tasks as a TFDS builder (the default data)
    local_files  TSV, aligned, plain-text and labelled files as a TFDS builder
    catalog      wmt14, ted_hrlr, tiny_shakespeare, lm1b, imdb_reviews from the TFDS catalog
    prepared     a TFDS dataset prepared once and read back as ArrayRecord; each split as
                 text pairs, read a block of records at a time
    tokenizers   byte-level and SentencePiece tokenizers with fixed special ids
    pipeline     grain: shard, shuffle, tokenise, length policy, pack, batch
    text_stream  plain text as one token stream: training windows, held-out tiles, bytes
    datasets     `config.dataset` looked up as text pairs per split; `create_datasets` and
                 the `Datasets` it returns
"""

from flaxformer_lite.data.datasets import Datasets, create_datasets, load_tokenizer
from flaxformer_lite.data.options import DataError, DataOptions
from flaxformer_lite.data.tokenizers import ByteTokenizer, SentencePieceTokenizer, Tokenizer

__all__ = [
    "ByteTokenizer",
    "DataError",
    "DataOptions",
    "Datasets",
    "SentencePieceTokenizer",
    "Tokenizer",
    "create_datasets",
    "load_tokenizer",
]
