"""How fast the input pipeline alone makes training batches.

Two data sets, each through the real path (TFDS preparation, tokenizer, grain pipeline):

    default   the default config: the reverse task, byte tokenizer, short packed rows
    wmt       the WMT14 base config's shapes (SentencePiece, 256-token packed rows) on
              synthetic sentence pairs of WMT lengths, written to a local TSV

For each, and for 0 and 1 grain worker processes, it times `next(train_iter)` and prints
examples/s and tokens/s (real tokens of inputs plus targets, padding not counted), the
seconds per batch, and the CPU seconds per batch spent in the training process (with a
worker, most of the work moves to the worker process). A training step that takes longer
than "s/batch" is never kept waiting: the next batches are made while it runs.

    python benchmarks/data_pipeline.py                   # both, about two minutes
    python benchmarks/data_pipeline.py --only=default --batches=200
"""

import pathlib
import sys
import tempfile
import time

import numpy as np
from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # For `configs`.

from configs import default, wmt14_ende_base  # noqa: E402
from flaxformer_lite.data import create_datasets  # noqa: E402

_ONLY = flags.DEFINE_enum("only", None, ["default", "wmt"], "Benchmark one config only.")
_BATCHES = flags.DEFINE_integer("batches", 100, "Batches to time, after one warm-up batch.")
_WORKERS = flags.DEFINE_list("workers", ["0", "1"], "grain_worker_count values to time.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where to prepare data (default: a temp dir).")
_WMT_PAIRS = flags.DEFINE_integer("wmt_pairs", 50_000, "Synthetic WMT-length sentence pairs.")
_WMT_VOCAB = flags.DEFINE_integer("wmt_vocab_size", 8_000, "SentencePiece size for 'wmt'.")


def write_wmt_like_tsv(path: pathlib.Path, num_pairs: int, seed: int = 0) -> None:
    """Sentence pairs with WMT14 en-de's lengths: about 23 words, long-tailed, up to 150.

    Words are drawn from a Zipf-distributed vocabulary of made-up words, so SentencePiece
    learns pieces much as it would on real text.
    """
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyzäöüß"))
    vocabulary = ["".join(rng.choice(letters, size=rng.integers(2, 11))) for _ in range(30_000)]
    ranks = np.minimum(rng.zipf(1.2, size=num_pairs * 120), len(vocabulary)) - 1
    source_lengths = np.clip(rng.lognormal(np.log(20), 0.6, size=num_pairs), 1, 150).astype(int)
    target_lengths = np.clip(source_lengths * rng.uniform(0.8, 1.3, num_pairs), 1, 150).astype(int)
    words = iter(ranks)
    with open(path, "w", encoding="utf-8") as file:
        for source_length, target_length in zip(source_lengths, target_lengths, strict=True):
            source = " ".join(vocabulary[next(words)] for _ in range(source_length))
            target = " ".join(vocabulary[next(words)] for _ in range(target_length))
            file.write(f"{source.capitalize()}.\t{target.capitalize()}.\n")


def time_pipeline(config, workdir: str, num_batches: int) -> dict[str, float]:
    start = time.perf_counter()
    data = create_datasets(config, workdir, num_local_devices=1)
    ready = time.perf_counter() - start
    next(data.train_iter)  # Warm-up: starts threads or worker processes.
    examples = tokens = 0
    start, start_cpu = time.perf_counter(), time.process_time()
    for _ in range(num_batches):
        batch = next(data.train_iter)
        examples += int(batch["targets_segmentation"].max(axis=-1).sum())
        tokens += int((batch["inputs"] != 0).sum() + (batch["targets"] != 0).sum())
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    data.train_iter.close()
    capacity = num_batches * batch["inputs"].size * 2
    return {
        "ready_s": ready,
        "examples/s": examples / seconds,
        "tokens/s": tokens / seconds,
        "s/batch": seconds / num_batches,
        "cpu s/batch": cpu_seconds / num_batches,  # Of this process only, not its workers.
        "fill": tokens / capacity,
    }


def configs(workdir: pathlib.Path):
    if _ONLY.value in (None, "default"):
        yield "default", default.get_config()
    if _ONLY.value in (None, "wmt"):
        tsv = workdir / "wmt_like.tsv"
        if not tsv.exists():
            write_wmt_like_tsv(tsv, _WMT_PAIRS.value)
        config = wmt14_ende_base.get_config()
        config.dataset = "tsv"
        config.train_file = str(tsv)
        config.data_dir = None
        config.vocab_size = _WMT_VOCAB.value
        config.sentencepiece_max_corpus_chars = 3_000_000
        yield "wmt", config


def main(argv):
    del argv
    workdir = pathlib.Path(_WORKDIR.value or tempfile.mkdtemp(prefix="data_benchmark_"))
    print(f"workdir: {workdir}")
    header = f"{'config':8} {'workers':>7} {'ready s':>8} {'examples/s':>11} {'tokens/s':>10}"
    rows = [header + f" {'s/batch':>8} {'cpu s/batch':>11} {'batch':>13} {'fill':>5}"]
    for name, config in configs(workdir):
        rows_per_batch = config.per_device_batch_size
        length = max(config.max_source_length, config.max_target_length)
        for workers in map(int, _WORKERS.value):
            config.grain_worker_count = workers
            result = time_pipeline(config, str(workdir / name), _BATCHES.value)
            rows.append(
                f"{name:8} {workers:>7} {result['ready_s']:>8.1f} {result['examples/s']:>11,.0f}"
                f" {result['tokens/s']:>10,.0f} {result['s/batch']:>8.4f}"
                f" {result['cpu s/batch']:>11.4f}"
                f" {f'[1, {rows_per_batch}, {length}]':>13} {result['fill']:>5.2f}"
            )
            print(rows[-1], flush=True)
    print("\n".join(["", *rows]))


if __name__ == "__main__":
    app.run(main)
