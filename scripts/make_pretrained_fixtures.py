"""Writes tests/fixtures/pretrained/: tiny Hugging Face checkpoints and their reference outputs.

    pip install -e '.[bench,fixtures]'   # torch (CPU) and transformers, for this script only
    python scripts/make_pretrained_fixtures.py

Every model is randomly initialised from a config (no download), saved the way
`save_pretrained` saves it (config.json + model.safetensors), with a tokenizer trained
here with `tokenizers` on a few sentences, and the outputs `transformers` computes for
it: hidden states, pooled output and MLM logits (BERT family), sentence embeddings
(sentence-transformers), LM logits and greedy generations (GPT-2, Llama, T5).
tests/test_pretrained.py and tests/test_embed.py compare our loader against them with
no torch. Weights are drawn with a larger spread than the models' default (0.02) so
logits are far apart and greedy search has no near-ties to break differently.

The weights are seeded and come out the same on every run; the tokenizer trainers of
`tokenizers` run multi-threaded and may order a vocabulary differently, so a new run
rewrites the tokenizers and references together (each directory stays consistent).
"""

from __future__ import annotations

import json
import pathlib
import shutil

import numpy as np
import torch
import transformers
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "pretrained"

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A tiny model reads a tiny sentence and writes another one.",
    "Transformers attend to every token before them, or around them.",
    "Hello world! Numbers like 12 and 345 are tokens too.",
    "She sells sea shells by the sea shore, and the shells are small.",
    "Rotary embeddings rotate queries and keys by their position.",
    "Grouped query attention shares one key head among several query heads.",
]
# Rows of different lengths: the references are computed on a right-padded batch.
SENTENCES = ["The quick brown fox.", "Hello world!", "Tiny models attend to every token, or not."]
PROMPTS = ["The quick", "Hello", "Rotary embeddings rotate"]
TRANSLATE = ["The lazy dog.", "Hello world, hello sea!"]
NEW_TOKENS = 8
INIT_RANGE = 0.3
# Smaller for Llama and for T5 (whose attention logits are not scaled by 1/sqrt(d_kv)):
# at 0.3 their logits grow so large that float32 itself (transformers' own float32
# against its float64) differs from the exact values by more than the tests' 1e-5.
LLAMA_INIT_RANGE = 0.2
T5_INIT_RANGE = 0.1


def main():
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    wordpiece = train_wordpiece()
    byte_bpe = train_byte_bpe(specials=["<|endoftext|>"])
    make_bert(wordpiece)
    make_sentence_transformer(wordpiece)
    make_distilbert(wordpiece)
    make_roberta(train_byte_bpe(specials=["<s>", "<pad>", "</s>", "<unk>", "<mask>"]))
    make_gpt2(byte_bpe)
    make_llama(train_byte_bpe(specials=["<unk>", "<s>", "</s>"], bos="<s>"))
    t5_tokenizer = train_unigram()
    make_t5("t5", t5_tokenizer, feed_forward_proj="relu", tie_word_embeddings=True)
    make_t5("flan_t5", t5_tokenizer, feed_forward_proj="gated-gelu", tie_word_embeddings=False)
    total = sum(path.stat().st_size for path in OUT.rglob("*") if path.is_file())
    print(f"wrote {OUT} ({total / 1e6:.2f} MB)")


# Tokenizers ---------------------------------------------------------------------------


def train_wordpiece() -> Tokenizer:
    """BERT's tokenizer: lower-cased WordPiece, "[CLS] text [SEP]"."""
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    trainer = trainers.WordPieceTrainer(vocab_size=200, special_tokens=specials)
    tokenizer.train_from_iterator(CORPUS, trainer)
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    tokenizer.decoder = decoders.WordPiece()
    return tokenizer


def train_byte_bpe(*, specials: list[str], bos: str | None = None) -> Tokenizer:
    """GPT-2's byte-level BPE (Llama's when `bos` is set: "<s> text")."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    if bos is not None:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", special_tokens=[(bos, tokenizer.token_to_id(bos))]
        )
    return tokenizer


def train_unigram() -> Tokenizer:
    """T5's tokenizer: a Unigram model over "▁"-marked words, "text </s>"."""
    tokenizer = Tokenizer(models.Unigram())
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=150, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>"
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", tokenizer.token_to_id("</s>"))]
    )
    return tokenizer


def padded_batch(tokenizer: Tokenizer, texts: list[str], pad_id: int):
    """Right-padded ids and attention mask of `texts`, as int64 arrays."""
    rows = [tokenizer.encode(text).ids for text in texts]
    length = max(map(len, rows))
    ids = np.full((len(rows), length), pad_id, np.int64)
    mask = np.zeros((len(rows), length), np.int64)
    for index, row in enumerate(rows):
        ids[index, : len(row)] = row
        mask[index, : len(row)] = 1
    return ids, mask


# Saving -------------------------------------------------------------------------------


def save(name: str, model, tokenizer: Tokenizer | None, arrays: dict, meta: dict):
    """The checkpoint as save_pretrained writes it, tokenizer.json, reference/*.npy and .json."""
    directory = OUT / name
    model.save_pretrained(directory)
    if tokenizer is not None:
        tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "reference").mkdir()
    for key, value in arrays.items():
        np.save(directory / "reference" / f"{key}.npy", np.asarray(value, np.float32))
    with open(directory / "reference" / "reference.json", "w") as f:
        json.dump(meta, f, indent=1)
    drop_generation_config(directory)


def drop_generation_config(directory: pathlib.Path):
    """generation_config.json repeats config.json's special ids; the loader reads config.json."""
    (directory / "generation_config.json").unlink(missing_ok=True)


def randomized(model, init_range: float = INIT_RANGE):
    """Every parameter drawn from N(0, init_range^2); norms' scales around 1."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if (
                "norm" in name.lower()
                or name.endswith("ln_1.weight")
                or name.endswith("ln_2.weight")
            ):
                parameter.copy_(1.0 + 0.1 * torch.randn_like(parameter))
            else:
                parameter.copy_(init_range * torch.randn_like(parameter))
    return model.eval()


# Encoders -----------------------------------------------------------------------------

BERT_SIZES = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
)


def bert_config(tokenizer):
    return transformers.BertConfig(
        vocab_size=tokenizer.get_vocab_size(), pad_token_id=0, hidden_act="gelu", **BERT_SIZES
    )


def make_bert(tokenizer: Tokenizer):
    """BertForPreTraining: encoder, pooler and MLM head (its NSP head the loader skips).

    Saved with vocab.txt only, so the loader's WordPiece-from-vocab.txt path is the one tested.
    """
    torch.manual_seed(0)
    model = randomized(transformers.BertForPreTraining(bert_config(tokenizer)))
    ids, mask = padded_batch(tokenizer, SENTENCES, pad_id=0)
    types = np.zeros_like(ids)
    types[:, 3:] = 1 * mask[:, 3:]  # a second segment, to test the token-type table
    with torch.no_grad():
        output = model(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            token_type_ids=torch.tensor(types),
            output_hidden_states=True,
        )
        pooled = model.bert(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            token_type_ids=torch.tensor(types),
        ).pooler_output
    arrays = dict(
        hidden_states=output.hidden_states[-1], pooled=pooled, mlm_logits=output.prediction_logits
    )
    save(
        "bert",
        model,
        None,
        arrays,
        dict(ids=ids.tolist(), mask=mask.tolist(), token_types=types.tolist(), texts=SENTENCES),
    )
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    (OUT / "bert" / "vocab.txt").write_text("".join(token + "\n" for token, _ in vocab))


def make_sentence_transformer(tokenizer: Tokenizer):
    """A sentence-transformers directory: BertModel, mean pooling, then L2 normalisation."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers import models as st_models

    torch.manual_seed(1)
    bert_dir = OUT / "_bert_model"
    randomized(transformers.BertModel(bert_config(tokenizer))).save_pretrained(bert_dir)
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    ).save_pretrained(bert_dir)
    transformer = st_models.Transformer(str(bert_dir), max_seq_length=64)
    pooling = st_models.Pooling(transformer.get_word_embedding_dimension(), pooling_mode="mean")
    model = SentenceTransformer(modules=[transformer, pooling, st_models.Normalize()], device="cpu")
    directory = OUT / "sentence_bert"
    model.save(str(directory))
    shutil.rmtree(bert_dir)
    (directory / "README.md").unlink()  # the model card sentence-transformers writes
    embeddings = model.encode(SENTENCES, convert_to_numpy=True)
    (directory / "reference").mkdir()
    np.save(directory / "reference" / "embeddings.npy", embeddings.astype(np.float32))
    with open(directory / "reference" / "reference.json", "w") as f:
        json.dump(dict(texts=SENTENCES), f, indent=1)


def make_distilbert(tokenizer: Tokenizer):
    config = transformers.DistilBertConfig(
        vocab_size=tokenizer.get_vocab_size(),
        dim=32,
        n_layers=2,
        n_heads=4,
        hidden_dim=64,
        max_position_embeddings=64,
        activation="gelu",
        pad_token_id=0,
    )
    torch.manual_seed(0)
    model = randomized(transformers.DistilBertForMaskedLM(config))
    ids, mask = padded_batch(tokenizer, SENTENCES, pad_id=0)
    with torch.no_grad():
        output = model(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            output_hidden_states=True,
        )
    arrays = dict(hidden_states=output.hidden_states[-1], mlm_logits=output.logits)
    save(
        "distilbert",
        model,
        tokenizer,
        arrays,
        dict(ids=ids.tolist(), mask=mask.tolist(), texts=SENTENCES),
    )


def make_roberta(tokenizer: Tokenizer):
    """RoBERTa: byte-level BPE, <s>=0 <pad>=1 </s>=2, positions from padding_idx + 1."""
    tokenizer.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    config = transformers.RobertaConfig(
        vocab_size=tokenizer.get_vocab_size(),
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        type_vocab_size=1,
        **{**BERT_SIZES, "max_position_embeddings": 66},  # 64 positions after the offset of 2
    )
    torch.manual_seed(0)
    model = randomized(transformers.RobertaForMaskedLM(config))
    ids, mask = padded_batch(tokenizer, SENTENCES, pad_id=1)
    with torch.no_grad():
        output = model(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            output_hidden_states=True,
        )
    arrays = dict(hidden_states=output.hidden_states[-1], mlm_logits=output.logits)
    save(
        "roberta",
        model,
        tokenizer,
        arrays,
        dict(ids=ids.tolist(), mask=mask.tolist(), texts=SENTENCES),
    )


# Language models ----------------------------------------------------------------------


def lm_references(model, tokenizer: Tokenizer, pad_id: int):
    """Logits of a right-padded batch, and greedy generations of each prompt alone."""
    ids, mask = padded_batch(tokenizer, SENTENCES, pad_id=pad_id)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits
    generations = []
    for prompt in PROMPTS:
        prompt_ids = torch.tensor([tokenizer.encode(prompt).ids])
        with torch.no_grad():
            output = model.generate(
                prompt_ids,
                attention_mask=torch.ones_like(prompt_ids),
                max_new_tokens=NEW_TOKENS,
                do_sample=False,
                pad_token_id=model.config.eos_token_id,
            )
        generations.append(output[0, prompt_ids.shape[1] :].tolist())
    meta = dict(
        ids=ids.tolist(),
        mask=mask.tolist(),
        texts=SENTENCES,
        prompts=PROMPTS,
        generations=generations,
    )
    return dict(logits=logits), meta


def make_gpt2(tokenizer: Tokenizer):
    eos = tokenizer.token_to_id("<|endoftext|>")
    config = transformers.GPT2Config(
        vocab_size=tokenizer.get_vocab_size(),
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=4,
        bos_token_id=eos,
        eos_token_id=eos,
    )
    torch.manual_seed(0)
    model = randomized(transformers.GPT2LMHeadModel(config))
    arrays, meta = lm_references(model, tokenizer, pad_id=eos)
    save("gpt2", model, tokenizer, arrays, meta)


def make_llama(tokenizer: Tokenizer):
    """Llama with grouped-query attention (2 key/value heads for 4 query heads)."""
    config = transformers.LlamaConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0},
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = randomized(transformers.LlamaForCausalLM(config), init_range=LLAMA_INIT_RANGE)
    arrays, meta = lm_references(model, tokenizer, pad_id=2)
    save("llama", model, tokenizer, arrays, meta)


def make_t5(name: str, tokenizer: Tokenizer, *, feed_forward_proj: str, tie_word_embeddings: bool):
    """T5 v1.0 (ReLU, tied output scaled by d_model^-0.5) or v1.1 / flan (gated GELU, untied)."""
    config = transformers.T5Config(
        vocab_size=tokenizer.get_vocab_size() + 6,  # padded past the tokenizer, as T5's 32128
        d_model=32,
        d_kv=12,  # heads * d_kv = 48 != d_model, as in some T5 sizes
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=20,
        feed_forward_proj=feed_forward_proj,
        tie_word_embeddings=tie_word_embeddings,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    torch.manual_seed(0)
    model = randomized(transformers.T5ForConditionalGeneration(config), init_range=T5_INIT_RANGE)
    if not tie_word_embeddings:  # transformers ties at init; give the head its own weights
        model.lm_head.weight = torch.nn.Parameter(
            T5_INIT_RANGE * torch.randn_like(model.lm_head.weight)
        )
    inputs, input_mask = padded_batch(tokenizer, SENTENCES, pad_id=0)
    targets, target_mask = padded_batch(tokenizer, TRANSLATE + ["Hello."], pad_id=0)
    with torch.no_grad():
        logits = model(
            input_ids=torch.tensor(inputs),
            attention_mask=torch.tensor(input_mask),
            labels=torch.tensor(np.where(target_mask == 1, targets, -100)),
        ).logits
        sources, source_mask = padded_batch(tokenizer, TRANSLATE, pad_id=0)
        generated = model.generate(
            torch.tensor(sources),
            attention_mask=torch.tensor(source_mask),
            max_new_tokens=NEW_TOKENS,
            do_sample=False,
        )
    generations = [row[1:].tolist() for row in generated]  # without the decoder start
    meta = dict(
        ids=inputs.tolist(),
        mask=input_mask.tolist(),
        targets=targets.tolist(),
        target_mask=target_mask.tolist(),
        texts=SENTENCES,
        sources=TRANSLATE,
        generations=generations,
    )
    save(name, model, tokenizer, dict(logits=logits), meta)
    if not tie_word_embeddings:
        # transformers 5 writes scale_decoder_outputs=false and tie_word_embeddings=true;
        # the flan-T5 checkpoints on the hub say tie_word_embeddings=false instead. Write
        # that older form, and check that transformers reads it back to the same logits.
        path = OUT / name / "config.json"
        saved = json.loads(path.read_text())
        saved.pop("scale_decoder_outputs")
        saved["tie_word_embeddings"] = False
        path.write_text(json.dumps(saved, indent=2))
        reloaded = transformers.T5ForConditionalGeneration.from_pretrained(OUT / name).eval()
        with torch.no_grad():
            again = reloaded(
                input_ids=torch.tensor(inputs),
                attention_mask=torch.tensor(input_mask),
                labels=torch.tensor(np.where(target_mask == 1, targets, -100)),
            ).logits
        if not torch.allclose(again, logits, atol=1e-6):
            raise SystemExit(f"{name}: the saved directory does not reproduce its logits")


if __name__ == "__main__":
    main()
