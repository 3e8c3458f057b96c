"""The blocks of 2017 against their modern replacements, on one small language model.

    python benchmarks/run.py --only variants      # the table, with the results JSON
    python benchmarks/variants.py                 # the table alone

Each variant is configs/lm_default.py (a decoder-only LM on the built-in reversal task,
`source SEP target EOS`, the loss on the completion) with a few config fields changed,
trained by `train_and_evaluate` (what `python train.py` runs) for the same STEPS steps
from the same seed on the same batches:

    2017                  sinusoidal positions, LayerNorm, ReLU MLP, 4 heads of keys and values
    rope                  rotary position embeddings instead of sinusoidal ones
    rope_rmsnorm_swiglu   + RMSNorm and a SwiGLU MLP (d_ff 2/3 as wide: same parameters)
    ..._gqa2              + grouped-query attention, 2 key/value heads for the 4 query heads

All are pre-LN (the library's default; the 2017 paper's blocks were post-LN). For each:
held-out loss (nats per completion token, teacher-forced) and exact match (completions
generated greedily), training tokens/s as the trainer reports it over its last STEPS // 4
steps (input pipeline included), greedy decoding tokens/s with the KV cache on the held-out
prompts (best of DECODE_REPEATS), and the bytes of that KV cache for one evaluation batch
at max_decode_length. What such a table can and cannot show at this scale is in the
README section (and /work/notes/readme/variants.md).
"""

import contextlib
import functools
import io
import pathlib
import sys
import tempfile
import time

import jax
import numpy as np
from absl import logging

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # For `configs`.

from processes import in_workers  # noqa: E402

from configs import lm_default  # noqa: E402
from flaxformer_lite import decoding  # noqa: E402
from flaxformer_lite.data import create_datasets  # noqa: E402
from flaxformer_lite.families import make_family  # noqa: E402
from flaxformer_lite.special_tokens import PAD_ID  # noqa: E402
from flaxformer_lite.training import checkpoint, trainer  # noqa: E402

STEPS = 400
DECODE_REPEATS = 10  # best of 10: one decode of 128 rows takes ~0.1 s, too short to time once
# SwiGLU has three d_model x d_ff matrices where ReLU has two: 2/3 of lm_default's d_ff 256
# keeps the MLP's parameter count.
SWIGLU_D_FF = 170
MODERN = {"position_encoding": "rope", "norm": "rmsnorm", "mlp": "swiglu", "d_ff": SWIGLU_D_FF}
VARIANTS = {
    "2017": {},
    "rope": {"position_encoding": "rope"},
    "rope_rmsnorm_swiglu": MODERN,
    "rope_rmsnorm_swiglu_gqa2": {**MODERN, "num_kv_heads": 2},
}


def variant_config(fields: dict, data_dir: str):
    config = lm_default.get_config()
    config.update(
        num_train_steps=STEPS,
        warmup_steps=STEPS // 9,  # lm_default's 100 of 900
        log_every_steps=STEPS // 4,
        eval_every_steps=STEPS,  # one evaluation, at the end
        checkpoint_every_steps=STEPS,
        data_dir=data_dir,  # the variants share one prepared copy of the data
    )
    config.update(fields)
    return config


def parameter_count(params) -> int:
    return sum(leaf.size for leaf in jax.tree.leaves(params))


def cache_bytes(model, batch: int, length: int) -> int:
    """Bytes of the KV cache `decoding` allocates for `batch` rows of `length` positions."""
    tokens = np.zeros((batch, length), np.int32)
    shapes = jax.eval_shape(
        lambda rng: model.init(rng, tokens, decode=True, method=model.decode),
        jax.random.key(0),
    )["cache"]
    return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(shapes))


def decode_speed(family, params, batch: dict) -> float:
    """Generated tokens per second, greedy with the KV cache, over the batch's prompts."""
    prompts = np.asarray(family.sources(batch))  # (B, T): the prompt, then PAD
    prompts = prompts[:, : prompts.shape[1] - 1]
    real = prompts.any(axis=1)
    prompts, prompt_lengths = prompts[real], (prompts[real] != PAD_ID).sum(axis=1)

    # One compiled program for prefill and the whole search: called eagerly, the search
    # loop would be traced and compiled again at every call, and the timing would be that.
    search = jax.jit(
        functools.partial(decoding.generate, family.module, max_decode_len=family.max_decode_length)
    )

    def generate():
        return jax.block_until_ready(search(params, prompts))

    generate()  # compile
    seconds = []
    for _ in range(DECODE_REPEATS):
        start = time.perf_counter()
        tokens = generate()
        seconds.append(time.perf_counter() - start)
    # Tokens written after each prompt, its EOS included.
    generated = int(((np.asarray(tokens) != PAD_ID).sum(axis=1) - prompt_lengths).sum())
    return generated / min(seconds)


def measure(name: str, fields: dict, root: str) -> dict:
    config = variant_config(fields, data_dir=f"{root}/data")
    workdir = f"{root}/{name}"
    output = io.StringIO()
    start = time.process_time()
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        final = trainer.train_and_evaluate(config, workdir)
        datasets = create_datasets(config, workdir, num_local_devices=1)
    train_cpu_s = time.process_time() - start
    family = make_family(config, datasets.tokenizer.vocab_size)
    params = checkpoint.restore_params(workdir)
    batch = {key: value[0] for key, value in next(datasets.eval_batches("validation")).items()}
    return {
        "fields": fields,
        "parameters": parameter_count(params),
        "eval_loss": final["eval_loss"],
        "exact_match": final["exact_match"],
        "train_tokens_per_s": final["tokens_per_s"],
        "decode_tokens_per_s": decode_speed(family, params, batch),
        "cache_bytes": cache_bytes(
            family.module, config.per_device_eval_batch_size, config.max_decode_length
        ),
        "train_cpu_s": train_cpu_s,
    }


def print_table(results: dict) -> None:
    header = ("variant", "params", "eval loss", "exact", "train tok/s", "decode tok/s", "cache KB")
    print("{:26s} {:>8s} {:>10s} {:>6s} {:>12s} {:>13s} {:>9s}".format(*header))
    for name, row in results.items():
        print(
            f"{name:26s} {row['parameters']:8,d} {row['eval_loss']:10.4f} "
            f"{row['exact_match']:6.3f} {row['train_tokens_per_s']:12,.0f} "
            f"{row['decode_tokens_per_s']:13,.0f} {row['cache_bytes'] / 1024:9,.0f}"
        )


def run() -> dict:
    """Train and measure every variant; print the table and key=value lines."""
    logging.set_verbosity(logging.ERROR)  # tfds and orbax warn at every run
    results = {}
    with tempfile.TemporaryDirectory(prefix="variants_") as root:
        for name, fields in VARIANTS.items():
            # Each variant trains and decodes in a fresh process, so none is measured in a
            # process the ones before it have aged.
            [(_, results[name])] = in_workers(measure, [(name, fields, root)], workers=1)
            row = results[name]
            print(
                f"  {name}: eval_loss={row['eval_loss']:.4f} exact_match="
                f"{row['exact_match']:.3f} ({row['train_cpu_s']:.0f} CPU-s)",
                flush=True,
            )
    print_table(results)
    for name, row in results.items():
        for key in ("eval_loss", "train_tokens_per_s", "decode_tokens_per_s", "cache_bytes"):
            print(f"variants_{key}_{name}={row[key]:.4g}")
    return results


if __name__ == "__main__":
    run()
