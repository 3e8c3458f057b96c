"""The input pipeline: datasets prepared by TFDS, read without TensorFlow, batched by grain.

    from flaxformer_lite.data import create_datasets

    data = create_datasets(config, workdir, num_local_devices=jax.local_device_count())
    data.tokenizer.vocab_size             # the model's vocabulary size
    batch = next(data.train_iter)         # dict of int32 [devices, per_device_batch, length]
    for batch in data.eval_batches("validation"): ...

Modules, in the order the data flow through them:

    options      the config fields the pipeline reads, and their checks
    synthetic    copy / reverse / sort / addition tasks as a TFDS builder (the default data)
    local_files  TSV, aligned, plain-text and labelled files as a TFDS builder
    catalog      wmt14, ted_hrlr, tiny_shakespeare, lm1b, imdb_reviews from the TFDS catalog
    prepared     preparing a TFDS dataset once and reading it back as ArrayRecord
    sources      any of the above as text pairs, per split
    splits       a split of text pairs, read a block of records at a time
    tokenizers   byte-level and SentencePiece tokenizers with fixed special ids
    pipeline     grain: shard, shuffle, tokenise, length policy, pack, batch
    datasets     `create_datasets` and the `Datasets` it returns
    hosts        who prepares shared files when there are several hosts
    errors       `DataError`, the one-line error for bad input
"""

from flaxformer_lite.data.datasets import Datasets, create_datasets, load_tokenizer
from flaxformer_lite.data.errors import DataError
from flaxformer_lite.data.options import DataOptions
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
