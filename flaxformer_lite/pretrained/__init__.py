"""Hugging Face checkpoints on our models: `load(path)` reads a model directory.

    from flaxformer_lite import pretrained
    loaded = pretrained.load("all-MiniLM-L6-v2")     # config.json, model.safetensors, tokenizer
    loaded.model, loaded.params, loaded.tokenizer    # our module, its params, our tokenizer

No torch: weights come through `safetensors` (one file, or shards listed by
model.safetensors.index.json), the tokenizer through `tokenizers` (tokenizer.json, or
BERT's vocab.txt, or GPT-2's vocab.json + merges.txt). Every checkpoint lands on one of
our own models, with no class of its own:

    model_type                  module                     kind
    bert, roberta, distilbert   EncoderOnlyTransformer     encoder
    gpt2, llama                 DecoderOnlyTransformer     causal_lm
    t5                          Transformer                seq2seq

Our models reserve token ids 0, 1, 2 for PAD, EOS and BOS, so a checkpoint's ids move up
by three (`vocabulary.py`); `loaded.tokenizer` speaks our ids, and `loaded.forward`
takes and returns the checkpoint's own, as `transformers` does, to compare the two.
Everything is checked before any tensor is read: a missing directory or file, an
unsupported model_type or option, a missing, unknown or misshapen tensor is one
`PretrainedError` naming the file or tensor and the fix.

train.py fine-tunes the BERT family from a model directory (`--config.init_from=DIR`):
finetune.py.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flaxformer_lite.config import TransformerConfig
from flaxformer_lite.pretrained.convert import Layout, check_against_module
from flaxformer_lite.pretrained.tokenizer import PretrainedTokenizer, load_tokenizer
from flaxformer_lite.pretrained.weights import CheckpointTensors, PretrainedError
from flaxformer_lite.special_tokens import BOS_ID, PAD_ID

__all__ = ["Pretrained", "PretrainedError", "PretrainedTokenizer", "load", "SUPPORTED"]

# model_type -> its module here (PREFIXES, layout(hf_config, names, path=...) -> Layout).
SUPPORTED = ("bert", "roberta", "distilbert", "gpt2", "llama", "t5")


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """A loaded checkpoint: our module, its parameters and a tokenizer of our ids."""

    model: nn.Module
    params: dict
    tokenizer: PretrainedTokenizer
    config: TransformerConfig
    kind: str  # "encoder", "causal_lm" or "seq2seq"
    model_type: str
    hf_config: dict
    model_dir: str

    def forward(
        self,
        input_ids,
        attention_mask=None,
        *,
        token_type_ids=None,
        decoder_input_ids=None,
        decoder_attention_mask=None,
    ) -> dict[str, np.ndarray]:
        """The model on the checkpoint's own token ids, as transformers takes them.

        input_ids (B, T) right-padded, attention_mask (B, T) 1 on real tokens (default:
        all real). Returns NumPy arrays over the checkpoint's vocabulary:
            encoder    "hidden" (B, T, D), "pooled" (B, D) and "mlm_logits" (B, T, V)
                       where the checkpoint has a pooler / an MLM head
            causal_lm  "logits" (B, T, V): position t predicts token t + 1
            seq2seq    "logits" (B, T', V) of decoder_input_ids (B, T'), which start with
                       the decoder start token as in transformers
        Positions outside the mask hold whatever the model computes there.
        """
        inputs = self._model_ids(input_ids, attention_mask)
        vocabulary = self.tokenizer.vocabulary
        if self.kind == "encoder":
            types = None if token_type_ids is None else jnp.asarray(token_type_ids, jnp.int32)
            outputs = _apply(self.model, self.params, inputs, types, method="__call__")
            outputs = {key: np.asarray(value) for key, value in outputs.items()}
            if "mlm_logits" in outputs:
                outputs["mlm_logits"] = vocabulary.checkpoint_logits(outputs["mlm_logits"])
            return outputs
        if self.kind == "causal_lm":
            logits = _apply(self.model, self.params, inputs, method="decode")
        else:
            if decoder_input_ids is None:
                raise ValueError("a seq2seq model needs decoder_input_ids.")
            targets = self._model_ids(decoder_input_ids, decoder_attention_mask)
            targets[:, 0] = BOS_ID  # the checkpoint's decoder start (T5: its PAD)
            logits = _apply(self.model, self.params, inputs, targets, method="seq2seq")
        return {"logits": vocabulary.checkpoint_logits(np.asarray(logits))}

    def _model_ids(self, checkpoint_ids, attention_mask) -> np.ndarray:
        ids = self.tokenizer.vocabulary.to_model_ids(checkpoint_ids)
        if attention_mask is not None:
            ids = np.where(np.asarray(attention_mask) > 0, ids, PAD_ID).astype(np.int32)
        return ids


@functools.partial(jax.jit, static_argnames=("model", "method"))
def _apply(model, params, *args, method):
    if method == "seq2seq":  # encode, then decode already-shifted targets
        inputs, targets = args
        encoded = model.apply({"params": params}, inputs, method=model.encode)
        return model.apply({"params": params}, encoded, inputs, targets, method=model.decode)
    if method == "decode":
        return model.apply({"params": params}, *args, method=model.decode)
    return model.apply({"params": params}, *args)


def load(path: str) -> Pretrained:
    """The Hugging Face model directory `path` as our model, params and tokenizer."""
    if not os.path.isdir(path):
        raise PretrainedError(
            f"{path} is not a directory: point it at a model directory holding config.json "
            "and model.safetensors (as save_pretrained writes them)."
        )
    hf_config = read_config(path)
    model_type = hf_config.get("model_type")
    if model_type not in SUPPORTED:
        raise PretrainedError(
            f"{os.path.join(path, 'config.json')}: model_type={model_type!r} is not supported; "
            f"supported: {', '.join(SUPPORTED)}."
        )
    family = importlib.import_module(f"{__name__}.{model_type}")
    tensors = CheckpointTensors(path, strip_prefixes=family.PREFIXES)
    layout: Layout = family.layout(
        hf_config, set(tensors.names()), path=os.path.join(path, "config.json")
    )
    tensors.check(layout.expected, ignored=layout.ignored)
    tokenizer = load_tokenizer(path, layout.vocabulary, model_type=model_type)
    params = layout.params(tensors.read)
    check_against_module(params, layout.module, _example_inputs(layout.kind))
    return Pretrained(
        model=layout.module,
        params=jax.tree.map(jnp.asarray, params),
        tokenizer=tokenizer,
        config=layout.config,
        kind=layout.kind,
        model_type=model_type,
        hf_config=hf_config,
        model_dir=path,
    )


def read_config(path: str) -> dict:
    """config.json of `path`, or a PretrainedError saying what is wrong with it."""
    config_path = os.path.join(path, "config.json")
    if not os.path.exists(config_path):
        raise PretrainedError(
            f"{config_path} is missing: save the model with save_pretrained, which writes it."
        )
    try:
        with open(config_path) as f:
            return json.load(f)
    except json.JSONDecodeError as error:
        raise PretrainedError(f"{config_path} is not valid JSON ({error}).") from None


def _example_inputs(kind: str) -> dict:
    tokens = jnp.ones((1, 4), jnp.int32)
    if kind == "encoder":
        return {"inputs": tokens}
    if kind == "causal_lm":
        return {"targets": tokens}
    return {"inputs": tokens, "targets": tokens}
