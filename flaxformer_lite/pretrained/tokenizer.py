"""A checkpoint's tokenizer, read with `tokenizers`, speaking our token ids.

`tokenizer.json` (what `save_pretrained` writes for every fast tokenizer) is read as it
is. A directory with only BERT's `vocab.txt` gets the WordPiece tokenizer BERT defines:
BERT normalisation (lower-casing unless tokenizer_config.json says do_lower_case=false),
BERT's pre-tokenizer, "[CLS] text [SEP]".
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

import numpy as np
import tokenizers
from tokenizers import decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece

from flaxformer_lite.pretrained.vocabulary import CheckpointVocabulary
from flaxformer_lite.pretrained.weights import PretrainedError
from flaxformer_lite.special_tokens import EOS_ID, PAD_ID


class PretrainedTokenizer:
    """The `flaxformer_lite.data.Tokenizer` interface over a checkpoint's tokenizer.

    encode(text)                       our ids of the text alone (the pipeline adds markers)
    encode_with_special_tokens(text)   our ids of what the checkpoint's own tokenizer gives
                                       (BERT's [CLS] ... [SEP], Llama's <s>, T5's </s>)
    decode(ids)                        text up to the first EOS, without special tokens
    """

    def __init__(self, tokenizer: tokenizers.Tokenizer, vocabulary: CheckpointVocabulary):
        self.tokenizer = tokenizer
        self.vocabulary = vocabulary

    @property
    def vocab_size(self) -> int:
        return self.vocabulary.model_vocab_size

    def encode(self, text: str) -> list[int]:
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        return self.vocabulary.to_model_ids(ids).tolist()

    def encode_with_special_tokens(self, text: str) -> list[int]:
        ids = self.tokenizer.encode(text, add_special_tokens=True).ids
        return self.vocabulary.to_model_ids(ids).tolist()

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(token) for token in ids]
        if EOS_ID in ids:
            ids = ids[: ids.index(EOS_ID)]
        checkpoint_ids = self.vocabulary.to_checkpoint_ids([i for i in ids if i != PAD_ID])
        in_vocabulary = checkpoint_ids[
            (checkpoint_ids >= 0) & (checkpoint_ids < self.vocabulary.size)
        ]
        return self.tokenizer.decode(in_vocabulary.tolist(), skip_special_tokens=True)

    def batch(self, texts: list[str], *, max_length: int) -> np.ndarray:
        """Texts -> (B, L) our ids with the checkpoint's special tokens, right-padded with PAD.

        L is the longest row, at most `max_length` (longer texts are cut, as transformers
        cuts them, before their closing special tokens).
        """
        # The tokenizer's own truncation keeps the special tokens ([CLS] ... [SEP]).
        self.tokenizer.enable_truncation(max_length)
        try:
            rows = [self.encode_with_special_tokens(text) for text in texts]
        finally:
            self.tokenizer.no_truncation()
        batch = np.full((len(rows), max(map(len, rows), default=1) or 1), PAD_ID, np.int32)
        for index, row in enumerate(rows):
            batch[index, : len(row)] = row
        return batch


def load_tokenizer(model_dir: str, vocabulary: CheckpointVocabulary) -> PretrainedTokenizer:
    """tokenizer.json, else vocab.txt (WordPiece), of `model_dir`."""
    tokenizer_json = os.path.join(model_dir, "tokenizer.json")
    vocab_txt = os.path.join(model_dir, "vocab.txt")
    if os.path.exists(tokenizer_json):
        tokenizer = tokenizers.Tokenizer.from_file(tokenizer_json)
        # Padding and truncation saved in the file would apply to every encode; we pad
        # batches ourselves, and truncate only where asked (`batch`).
        tokenizer.no_padding()
        tokenizer.no_truncation()
    elif os.path.exists(vocab_txt):
        tokenizer = _bert_wordpiece(
            vocab_txt, lowercase=_tokenizer_config(model_dir).get("do_lower_case", True)
        )
    else:
        raise PretrainedError(
            f"{model_dir} has no tokenizer.json or vocab.txt: save the tokenizer beside the "
            "model (tokenizer.save_pretrained(DIR))."
        )
    return PretrainedTokenizer(tokenizer, vocabulary)


def _tokenizer_config(model_dir: str) -> dict:
    path = os.path.join(model_dir, "tokenizer_config.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _bert_wordpiece(vocab_txt: str, *, lowercase: bool) -> tokenizers.Tokenizer:
    """BERT's tokenizer from its vocab.txt: one WordPiece token per line, id = line number."""
    vocab = WordPiece.read_file(vocab_txt)
    for marker in ("[UNK]", "[CLS]", "[SEP]"):
        if marker not in vocab:
            raise PretrainedError(
                f"{vocab_txt} has no {marker} line: a BERT vocab.txt lists [PAD], [UNK], "
                "[CLS], [SEP] and [MASK]; save the tokenizer again."
            )
    tokenizer = tokenizers.Tokenizer(WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tokenizer.decoder = decoders.WordPiece()
    markers = [token for token in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]") if token in vocab]
    tokenizer.add_special_tokens(markers)  # never split, and skipped by decode
    return tokenizer
