"""A checkpoint's tokenizer, read with `tokenizers`, speaking our token ids.

`tokenizer.json` (what `save_pretrained` writes for every fast tokenizer) is read as it
is. A directory with only BERT's `vocab.txt` gets the WordPiece tokenizer BERT defines:
BERT normalisation (lower-casing unless tokenizer_config.json says do_lower_case=false),
BERT's pre-tokenizer, "[CLS] text [SEP]". A GPT-2 directory with only vocab.json and
merges.txt gets GPT-2's byte-level BPE.

`PipelineTokenizer` is the same tokenizer in the id space of our data pipeline, for
fine-tuning a checkpoint with train.py (`config.init_from`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

import numpy as np
import tokenizers
from tokenizers import decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE, WordPiece

from flaxformer_lite.pretrained.vocabulary import CheckpointVocabulary
from flaxformer_lite.pretrained.weights import PretrainedError
from flaxformer_lite.special_tokens import (
    BOS_ID,
    CLS_ID,
    EOS_ID,
    MASK_ID,
    NUM_SPECIAL_TOKENS,
    PAD_ID,
    SEP_ID,
    UNK_ID,
)


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


class PipelineTokenizer:
    """A checkpoint's tokenizer speaking the ids of our data pipeline (data/formats.py).

    The pipeline writes our own special ids around the text: `CLS text SEP` for a
    classifier, MASK where masked LM hides a token. So every checkpoint id h moves up by
    NUM_SPECIAL_TOKENS, and each special id of ours stands for the checkpoint's token in
    that role (a row of zeros where it has none):

        ours  0 PAD  1 EOS  2 BOS  3 UNK  4 SEP  5 CLS  6 MASK    h + 7 = checkpoint h

    `rows` builds an embedding table of these ids from the checkpoint's, so the pipeline's
    `CLS text SEP` is exactly the `[CLS] text [SEP]` (RoBERTa: `<s> text </s>`) the
    checkpoint's own tokenizer writes and the model was trained on.
    """

    def __init__(self, tokenizer: tokenizers.Tokenizer, vocabulary: CheckpointVocabulary):
        self.tokenizer = tokenizer
        self.size = vocabulary.size
        self.roles = {  # our special id -> the checkpoint id in that role, or None
            PAD_ID: vocabulary.pad_id,
            EOS_ID: vocabulary.eos_id,
            BOS_ID: vocabulary.start_id,
            UNK_ID: _first_token(tokenizer, "[UNK]", "<unk>"),
            SEP_ID: None,
            CLS_ID: None,
            MASK_ID: _first_token(tokenizer, "[MASK]", "<mask>"),
        }
        # What the checkpoint's tokenizer wraps a text in: its classification token and
        # its separator, as its post-processor (not a guess from token names) says.
        wrapped = tokenizer.encode("", add_special_tokens=True).ids
        if len(wrapped) != 2:
            raise PretrainedError(
                f"the checkpoint's tokenizer wraps a text in {len(wrapped)} special tokens, "
                "not a classification token and a separator ([CLS] text [SEP]): only "
                "BERT-style tokenizers can feed the classifier."
            )
        self.roles[CLS_ID], self.roles[SEP_ID] = wrapped

    @property
    def vocab_size(self) -> int:
        return self.size + NUM_SPECIAL_TOKENS

    def encode(self, text: str) -> list[int]:
        """Our ids of the text alone; the pipeline adds CLS, SEP (or EOS) itself."""
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        return [token + NUM_SPECIAL_TOKENS for token in ids]

    def decode(self, ids: Iterable[int]) -> str:
        """The text of the ids up to the first EOS, without special tokens."""
        checkpoint_ids = []
        for token in map(int, ids):
            if token == EOS_ID:
                break
            if NUM_SPECIAL_TOKENS <= token < self.vocab_size:
                checkpoint_ids.append(token - NUM_SPECIAL_TOKENS)
        return self.tokenizer.decode(checkpoint_ids, skip_special_tokens=True)

    def rows(self, table: np.ndarray) -> np.ndarray:
        """A checkpoint table (size, ...) -> ours (size + 7, ...): the role rows, then it."""
        if table.shape[0] != self.size:
            raise ValueError(f"table has {table.shape[0]} rows, the vocabulary {self.size}")
        special = [
            table[self.roles[i]] if self.roles[i] is not None else np.zeros_like(table[0])
            for i in range(NUM_SPECIAL_TOKENS)
        ]
        return np.concatenate([np.stack(special), table], axis=0)


def _first_token(tokenizer: tokenizers.Tokenizer, *names: str) -> int | None:
    """The id of the first of `names` the tokenizer knows, or None."""
    ids = (tokenizer.token_to_id(name) for name in names)
    return next((token for token in ids if token is not None), None)


# What a directory without tokenizer.json may hold instead: sentencepiece models (T5,
# Llama) and byte-level BPE tables (GPT-2). transformers converts them to tokenizer.json.
SLOW_TOKENIZER_FILES = ("spiece.model", "tokenizer.model", "vocab.json", "merges.txt")
GPT2_END_OF_TEXT = "<|endoftext|>"


def load_tokenizer(
    model_dir: str, vocabulary: CheckpointVocabulary, *, model_type: str | None = None
) -> PretrainedTokenizer:
    """tokenizer.json, else vocab.txt (WordPiece), else for GPT-2 vocab.json + merges.txt
    (byte-level BPE), of `model_dir`."""
    tokenizer_json = os.path.join(model_dir, "tokenizer.json")
    vocab_txt = os.path.join(model_dir, "vocab.txt")
    vocab_json = os.path.join(model_dir, "vocab.json")
    merges_txt = os.path.join(model_dir, "merges.txt")
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
    elif model_type == "gpt2" and os.path.exists(vocab_json) and os.path.exists(merges_txt):
        tokenizer = _gpt2_byte_level_bpe(vocab_json, merges_txt)
    else:
        slow = [
            name for name in SLOW_TOKENIZER_FILES if os.path.exists(os.path.join(model_dir, name))
        ]
        found = f"only {', '.join(slow)}, a slow tokenizer's files" if slow else "no tokenizer"
        raise PretrainedError(
            f"{model_dir} has {found}, and neither tokenizer.json nor BERT's vocab.txt: "
            "write tokenizer.json once with transformers, "
            "AutoTokenizer.from_pretrained(DIR).save_pretrained(DIR)."
        )
    return PretrainedTokenizer(tokenizer, vocabulary)


def _tokenizer_config(model_dir: str) -> dict:
    path = os.path.join(model_dir, "tokenizer_config.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _gpt2_byte_level_bpe(vocab_json: str, merges_txt: str) -> tokenizers.Tokenizer:
    """GPT-2's tokenizer from its two tables: byte-level BPE, no prefix space, no special
    tokens added around a text; <|endoftext|> is never split and skipped by decode."""
    tokenizer = tokenizers.Tokenizer(BPE.from_file(vocab_json, merges_txt))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    if tokenizer.token_to_id(GPT2_END_OF_TEXT) is not None:
        tokenizer.add_special_tokens([GPT2_END_OF_TEXT])
    return tokenizer


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
