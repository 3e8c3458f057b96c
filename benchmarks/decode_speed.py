"""Greedy decoding speed: the KV cache against recomputing the decoder every step.

Both paths run the same jit-compiled `greedy_search` loop and differ only in
the `tokens_to_logits` callback. The cached one feeds one token per step
through the decoder's KV cache; the recomputing one writes the token into a
(B, L) buffer and runs the full decoder (self- and cross-attention, output
layer) over the whole buffer, as a decoder without a cache must under jit's
static shapes. The encoder runs once in both.

Setting: the bench config (shared vocabulary 8000, d_model 256, 4 heads,
d_ff 1024, 3 + 3 layers), random weights, batch 32, source length 64, 128
new tokens. Run `python benchmarks/decode_speed.py`; the last line it prints
is `decode_cache_speedup=X`.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
import workload

from flaxformer_lite import Transformer, TransformerConfig
from flaxformer_lite.decoding import DecodeStart, decode_batch, greedy_search
from flaxformer_lite.special_tokens import BOS_ID, EOS_ID, NUM_SPECIAL_TOKENS, PAD_ID

BENCH_CONFIG = workload.model_config(dropout_rate=0.0, attention_dropout_rate=0.0)
BATCH, SOURCE_LENGTH, NEW_TOKENS = 32, 64, 128


def random_sources(batch: int, length: int, vocab_size: int, seed: int = 0) -> np.ndarray:
    """(B, S) ids: ordinary tokens, EOS, then PAD; the lengths vary from S/2 to S."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(NUM_SPECIAL_TOKENS, vocab_size, size=(batch, length))
    lengths = rng.integers(length // 2, length + 1, size=batch)
    positions = np.arange(length)
    tokens = np.where(positions == lengths[:, None] - 1, EOS_ID, tokens)
    return np.where(positions >= lengths[:, None], PAD_ID, tokens).astype(np.int32)


def greedy_by_recomputing(model, params, inputs, *, max_decode_len):
    """Greedy decoding without a cache: inputs (B, S) -> tokens (B, max_decode_len)."""
    batch = inputs.shape[0]
    encoded = model.apply({"params": params}, inputs, method=model.encode)

    def decoder_logits(decoder_inputs, position):  # (B, L) -> (B, V) at `position`
        logits = model.apply(
            {"params": params}, encoded, inputs, decoder_inputs, method=model.decode
        )
        return logits[:, position]

    def tokens_to_logits(tokens, cache):
        decoder_inputs, position = cache  # the shifted-right targets (B, L); the next position
        decoder_inputs = decoder_inputs.at[:, position].set(tokens[:, 0])
        return decoder_logits(decoder_inputs, position), (decoder_inputs, position + 1)

    decoder_inputs = jnp.zeros((batch, max_decode_len), jnp.int32).at[:, 0].set(BOS_ID)
    start = DecodeStart(
        logits=decoder_logits(decoder_inputs, 0),
        cache=(decoder_inputs, jnp.int32(1)),
        index=jnp.int32(0),
        forced=jnp.zeros((batch, max_decode_len), jnp.int32),
    )
    return greedy_search(tokens_to_logits, start)


def _compile_and_time(function, args, repeats):
    """(compile seconds, best run seconds, output) of jit(function)(*args)."""
    begin = time.perf_counter()
    compiled = jax.jit(function).lower(*args).compile()
    compile_seconds = time.perf_counter() - begin
    best = float("inf")
    for _ in range(repeats):
        begin = time.perf_counter()
        output = jax.block_until_ready(compiled(*args))
        best = min(best, time.perf_counter() - begin)
    return compile_seconds, best, np.asarray(output)


def run(
    config: TransformerConfig = BENCH_CONFIG,
    batch: int = BATCH,
    source_length: int = SOURCE_LENGTH,
    new_tokens: int = NEW_TOKENS,
    repeats: int = 3,
) -> dict:
    """Time both paths; returns per-path timings and `decode_cache_speedup`.

    The cached path runs `repeats` times (best time kept), the slow recomputing
    path once. Both decode until every row has ended or `new_tokens` are out;
    tokens/s counts batch x steps.
    """
    model = Transformer(config)
    inputs = jnp.asarray(random_sources(batch, source_length, config.vocab_size))
    targets = jnp.ones((batch, new_tokens), jnp.int32)
    params = jax.jit(model.init)(jax.random.key(0), inputs, targets)["params"]

    def cached(params, inputs):
        return decode_batch(model, params, inputs, max_decode_len=new_tokens)

    def recomputed(params, inputs):
        return greedy_by_recomputing(model, params, inputs, max_decode_len=new_tokens)

    results, outputs = {}, {}
    for name, function, path_repeats in (
        ("kv_cache", cached, repeats),
        ("recompute", recomputed, 1),
    ):
        compile_seconds, seconds, outputs[name] = _compile_and_time(
            function, (params, inputs), path_repeats
        )
        steps = int((outputs[name] != PAD_ID).sum(axis=1).max())
        results[name] = {
            "compile_s": compile_seconds,
            "decode_s": seconds,
            "steps": steps,
            "tokens_per_s": batch * steps / seconds,
            "ms_per_step": 1000.0 * seconds / steps,
        }
    return {
        "batch": batch,
        "source_length": source_length,
        "new_tokens": new_tokens,
        "backend": jax.default_backend(),
        **results,
        "same_tokens_fraction": float(np.mean(outputs["kv_cache"] == outputs["recompute"])),
        "decode_cache_speedup": results["recompute"]["decode_s"] / results["kv_cache"]["decode_s"],
    }


def main():
    result = run()
    print(
        f"greedy decoding, batch {result['batch']}, source length {result['source_length']}, "
        f"{result['new_tokens']} new tokens, backend {result['backend']}"
    )
    header = ("path", "compile s", "decode s", "steps", "ms/step", "tokens/s")
    print("{:<10} {:>10} {:>10} {:>6} {:>9} {:>10}".format(*header))
    for name in ("kv_cache", "recompute"):
        row = result[name]
        print(
            f"{name:<10} {row['compile_s']:>10.2f} {row['decode_s']:>10.3f} {row['steps']:>6d} "
            f"{row['ms_per_step']:>9.2f} {row['tokens_per_s']:>10.0f}"
        )
    print(f"tokens equal between the two paths: {100 * result['same_tokens_fraction']:.1f}%")
    print(f"decode_cache_speedup={result['decode_cache_speedup']:.1f}")


if __name__ == "__main__":
    main()
