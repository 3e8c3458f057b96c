"""Why attention won: the Transformer against RNN, LSTM and GRU networks, on one trainer.

    python benchmarks/run.py --only recurrence          # all three, with the results JSON
    python benchmarks/recurrence.py --part gradients --out g.json   # one experiment
    python benchmarks/recurrence.py --part long_range --lengths 64 --models transformer
    python scripts/render_recurrence_figures.py         # the README's figures from the JSON

Every model is a model family of the library (`config.model`), built from
configs/default.py, fed by the library's data pipeline and trained by its own
pure `train_step`; the long-range runs are whole `train_and_evaluate` runs,
exactly what `python train.py` does. Three experiments:

parallelism  One training step of a decoder-only Transformer and of an LSTM
             language model of about the same parameter count, at sequence
             lengths 16 to 512 with the batch fixed: seconds per step and
             tokens/s. An LSTM step t needs the state of step t - 1, so its
             step is a loop as long as the sequence; the Transformer computes
             every position at once, as a few large matrix products.
long_range   Reverse strings of exactly 8, 16, 32 and 64 symbols (128 on request): the
             Transformer, the LSTM with additive attention, the LSTM without
             it (the whole source squeezed through one state vector) and the
             GRU with attention, each trained for the same number of steps at
             the same batch, then exact match on held-out strings.
gradients    The norm of d loss / d (input embedding at position t) against
             the distance from the predicted position, for a plain RNN, an
             LSTM and a Transformer language model, untrained and trained
             (reverse as prompt -> completion). The loss is that of the last
             completion symbol, which is the first prompt symbol: the model
             needs an input 2L - 1 positions back.

Budgets, chosen to keep the whole run under 15 minutes on a quiet 2-core CPU (CPU and wall
seconds of each part are in the results JSON): parallelism 6 lengths x 2 models,
TIMED_STEPS timed steps each, alone on the machine; long_range REVERSE_STEPS steps of
REVERSE_BATCH strings per run, 16 runs; gradients GRADIENT_STEPS steps of GRADIENT_BATCH
rows per model, 3 models. The trainings of long_range and of gradients run WORKERS (one
per core) at a time.
"""

import argparse
import concurrent.futures
import contextlib
import datetime
import io
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # For `configs`.

from processes import in_workers  # noqa: E402

from configs import default  # noqa: E402
from flaxformer_lite.data import create_datasets  # noqa: E402
from flaxformer_lite.families import make_family  # noqa: E402
from flaxformer_lite.training import checkpoint, step, trainer  # noqa: E402

WORKERS = os.cpu_count() or 1  # independent trainings run one per core

# -- The models: each is a set of config fields over configs/default.py. --------------------

# Sequence to sequence, for reversal. The Transformer is the default run's (2 + 2 layers of
# width 64); the recurrent models are the recurrent family's defaults.
SEQ2SEQ_MODELS = {
    "transformer": {"model": "encoder_decoder"},
    "lstm_attention": {"model": "rnn_seq2seq", "cell": "lstm", "rnn_attention": True},
    "lstm_plain": {"model": "rnn_seq2seq", "cell": "lstm", "rnn_attention": False},
    "gru": {"model": "rnn_seq2seq", "cell": "gru", "rnn_attention": True},
}
# Language models, for the speed and gradient experiments.
LANGUAGE_MODELS = {
    "transformer": {"model": "decoder_only", "num_decoder_layers": 2},
    "lstm": {"model": "rnn_lm", "cell": "lstm"},
    "rnn": {"model": "rnn_lm", "cell": "rnn"},
}

# -- parallelism ----------------------------------------------------------------------------

SPEED_LENGTHS = (16, 32, 64, 128, 256, 512)
SPEED_BATCH = 16
SPEED_VOCAB = 263  # the byte tokenizer's
TIMED_STEPS = 5  # one step at a time, each waited for; the median is reported
# The Transformer LM: 2 layers of width 128. The LSTM gets the hidden width (from
# HIDDEN_CHOICES) whose parameter count comes closest.
SPEED_TRANSFORMER = {"d_model": 128, "num_heads": 4, "d_ff": 512}
HIDDEN_CHOICES = tuple(range(64, 513, 32))

# -- long_range -----------------------------------------------------------------------------

REVERSE_LENGTHS = (8, 16, 32, 64)  # --lengths 8 16 32 64 128 adds 128: ~10 min more
REVERSE_STEPS = 400  # the Transformer at length 64: token accuracy 0.455 after 300, 0.999 after 350
REVERSE_BATCH = 32
REVERSE_LEARNING_RATE = 0.003  # the cosine's peak, after a warm-up of a quarter of the steps
EVAL_EXAMPLES = 64

# -- gradients ------------------------------------------------------------------------------

GRADIENT_SYMBOLS = 16  # a row: 16 symbols, SEP, the 16 reversed, EOS
GRADIENT_STEPS = 300
GRADIENT_BATCH = 32


def experiment_config(model: dict, **fields):
    """configs/default.py with a model's fields and the experiment's own on top."""
    config = default.get_config()
    config.update(model)
    config.update(fields)
    return config


def parameter_count(family) -> int:
    """Parameters of a family's model, counted from shapes alone."""
    inputs = family.model_inputs(family.example_batch())
    shapes = jax.eval_shape(family.module.init, jax.random.key(0), **inputs)["params"]
    return sum(leaf.size for leaf in jax.tree.leaves(shapes))


def language_model(model: dict, length: int, **fields):
    """A language-model family over `length`-token rows, and its parameter count."""
    config = experiment_config(model, max_target_length=length, max_decode_length=length, **fields)
    family = make_family(config, SPEED_VOCAB)
    return family, config


def matched_lstm_fields(target_parameters: int, length: int) -> dict:
    """The LSTM LM's hidden width whose parameter count is closest to `target_parameters`."""

    def distance(hidden_size: int) -> int:
        family, _ = language_model(LANGUAGE_MODELS["lstm"], length, rnn_hidden_size=hidden_size)
        return abs(parameter_count(family) - target_parameters)

    return {"rnn_hidden_size": min(HIDDEN_CHOICES, key=distance)}


def time_train_step(family, config, length: int) -> float:
    """Median seconds of one training step on (SPEED_BATCH, length) random tokens."""
    ids = np.random.default_rng(0).integers(4, SPEED_VOCAB, (SPEED_BATCH, length))
    batch = {"targets": jnp.asarray(ids, jnp.int32)}  # no PAD: every position is a token
    state = trainer.create_train_state(family, config, jax.random.key(0))
    train_step = jax.jit(
        lambda state, batch, rng: step.train_step(state, batch, rng, family=family),
        donate_argnums=(0,),
    )
    rng = jax.random.key(1)
    state, metrics = train_step(state, batch, rng)  # compile, then one warm-up step
    state, metrics = train_step(state, batch, rng)
    jax.block_until_ready(metrics)
    seconds = []
    for _ in range(TIMED_STEPS):
        start = time.perf_counter()
        state, metrics = train_step(state, batch, rng)
        jax.block_until_ready(metrics)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def parallelism() -> dict:
    """Seconds per training step and tokens/s of the two LMs at every length."""
    transformer_model = {**LANGUAGE_MODELS["transformer"], **SPEED_TRANSFORMER}
    transformer, _ = language_model(transformer_model, SPEED_LENGTHS[0])
    transformer_parameters = parameter_count(transformer)
    lstm_model = {
        **LANGUAGE_MODELS["lstm"],
        **matched_lstm_fields(transformer_parameters, SPEED_LENGTHS[0]),
    }
    results = {"lengths": list(SPEED_LENGTHS), "batch": SPEED_BATCH}
    for name, model in (("transformer", transformer_model), ("lstm", lstm_model)):
        step_seconds = []
        for length in SPEED_LENGTHS:
            family, config = language_model(model, length)
            step_seconds.append(time_train_step(family, config, length))
            print(
                f"  {name} length {length}: {step_seconds[-1] * 1e3:.1f} ms/step, "
                f"{SPEED_BATCH * length / step_seconds[-1]:.0f} tokens/s",
                flush=True,
            )
        results[name] = {
            "fields": model,
            "parameters": parameter_count(family),
            "step_s": step_seconds,
            "tokens_per_s": [
                SPEED_BATCH * n / s for n, s in zip(SPEED_LENGTHS, step_seconds, strict=True)
            ],
        }
    for length, transformer_s, lstm_s in zip(
        SPEED_LENGTHS, results["transformer"]["step_s"], results["lstm"]["step_s"], strict=True
    ):
        results[f"transformer_vs_lstm_speed_at_{length}"] = lstm_s / transformer_s
    return results


# -- long_range -----------------------------------------------------------------------------


def reverse_config(
    model: dict, symbols: int, *, steps: int, batch: int, data_dir: str, language_model=False
):
    """Reverse strings of exactly `symbols` symbols, one string per row, `steps` steps.

    Every training string is new (steps x batch of them), so nothing can be memorised;
    the model is evaluated once, after the last step, on EVAL_EXAMPLES held-out strings.
    A language model reads `source SEP target EOS` in one row. Runs that share
    `data_dir` prepare the strings once.
    """
    row = 2 * symbols + 2 if language_model else symbols + 1  # tokens, with SEP and EOS
    return experiment_config(
        model,
        dataset="reverse",
        synthetic_min_length=symbols,
        synthetic_max_length=symbols,
        max_source_length=symbols + 1,
        max_target_length=row,
        max_decode_length=row,
        pack_examples=False,  # recurrent models carry their state along a row
        num_train_examples=steps * batch,
        num_eval_examples=EVAL_EXAMPLES,
        per_device_batch_size=batch,
        per_device_eval_batch_size=EVAL_EXAMPLES,
        data_dir=data_dir,
        num_train_steps=steps,
        warmup_steps=steps // 4,
        learning_rate=REVERSE_LEARNING_RATE,
        log_every_steps=steps,
        eval_every_steps=steps,  # one evaluation, at the end
        checkpoint_every_steps=steps,
    )


def train_quietly(config, workdir: str) -> dict:
    """`train_and_evaluate` with its progress output held back (shown if it fails)."""
    output = io.StringIO()
    try:
        with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
            return trainer.train_and_evaluate(config, workdir)
    except Exception:
        print(output.getvalue()[-3000:], file=sys.stderr)
        raise


def reverse_run(name: str, symbols: int, root: str) -> tuple[dict, float]:
    """One long-range run: (its final metrics, its CPU seconds)."""
    config = reverse_config(
        SEQ2SEQ_MODELS[name],
        symbols,
        steps=REVERSE_STEPS,
        batch=REVERSE_BATCH,
        data_dir=f"{root}/data_{name}_{symbols}",  # runs at once must not share a directory
    )
    start = time.process_time()
    final = train_quietly(config, f"{root}/{name}_{symbols}")
    return final, time.process_time() - start


def long_range(lengths=REVERSE_LENGTHS, models=tuple(SEQ2SEQ_MODELS)) -> dict:
    """Held-out exact match of the seq2seq `models` at `lengths`, same steps and batch."""
    results = {"lengths": list(lengths), "steps": REVERSE_STEPS, "batch": REVERSE_BATCH}
    finals, results["cpu_s"] = {}, 0.0
    with tempfile.TemporaryDirectory(prefix="reverse_") as root:
        longest_first = [(name, n, root) for n in sorted(lengths, reverse=True) for name in models]
        runs = in_workers(reverse_run, longest_first, workers=WORKERS)
        for (name, symbols, _), (final, cpu_seconds) in runs:
            finals[name, symbols] = final
            results["cpu_s"] += cpu_seconds
            print(
                f"  {name} length {symbols}: exact_match={final['exact_match']:.3f} "
                f"token accuracy {final['eval_accuracy']:.3f} ({cpu_seconds:.0f} CPU-s)",
                flush=True,
            )
    for name in models:
        for symbols in lengths:
            key = f"reverse_exact_match_len{symbols}_{name}"
            results[key] = finals[name, symbols]["exact_match"]
        exact_match = [finals[name, symbols]["exact_match"] for symbols in lengths]
        results[name] = {"fields": SEQ2SEQ_MODELS[name], "exact_match": exact_match}
    return results


# -- gradients ------------------------------------------------------------------------------


def embedding_gradient_norms(family, params, batch, *, position: int, width: int) -> np.ndarray:
    """Mean over rows of |d loss / d e_t| for t = 0..position: (position + 1,).

    e_t is the input embedding at position t, the row of the embedding table the model
    looks up for its t-th input token (`nn.Embed`), and the loss is the cross-entropy
    of the token predicted at `position`. A zero perturbation is added to every e_t
    (Flax's method interception, so no model needs a hook for it) and the loss is
    differentiated with respect to it: one `grad` gives every position. Rows are
    independent, so the gradient of the summed loss holds each row's own.
    """
    inputs = family.model_inputs(batch)
    labels = batch["targets"][:, position]  # (B,)
    perturbation = jnp.zeros((*batch["targets"].shape, width))  # (B, T, E)

    def loss(perturbation):
        with nn.intercept_methods(_add_to_embeddings(perturbation)):
            logits = family.module.apply({"params": params}, **inputs)  # (B, T, V)
        log_probs = jax.nn.log_softmax(logits[:, position])  # (B, V)
        return -jnp.take_along_axis(log_probs, labels[:, None], axis=1).sum()

    gradient = jax.grad(loss)(perturbation)  # (B, T, E)
    norms = jnp.linalg.norm(gradient[:, : position + 1], axis=-1)  # (B, position + 1)
    return np.asarray(norms.mean(axis=0))


def _add_to_embeddings(perturbation):
    """An interceptor adding `perturbation` (B, T, E) to what an `nn.Embed` looks up.

    A language model embeds its tokens once per call; a second lookup (an encoder's)
    would get the same perturbation, so it is refused.
    """
    calls = []

    def interceptor(next_method, args, kwargs, context):
        outputs = next_method(*args, **kwargs)
        if isinstance(context.module, nn.Embed) and context.method_name == "__call__":
            calls.append(context.module.name)
            if len(calls) > 1:
                raise ValueError(f"The model embeds tokens twice ({calls}): one lookup expected.")
            return outputs + perturbation
        return outputs

    return interceptor


# Row: s_1 .. s_L SEP s_L .. s_1 EOS. Position 2L predicts s_1, whose own embedding is input
# position 1 (position 0 reads BOS): distance 2L - 1.
GRADIENT_POSITION = 2 * GRADIENT_SYMBOLS


def gradient_run(name: str) -> dict:
    """One language model, trained: its exact match, parameter count and gradient norms
    against distance, untrained (as initialised) and trained; its CPU seconds."""
    start = time.process_time()
    with tempfile.TemporaryDirectory(prefix=f"gradients_{name}_") as workdir:
        config = reverse_config(
            LANGUAGE_MODELS[name],
            GRADIENT_SYMBOLS,
            steps=GRADIENT_STEPS,
            batch=GRADIENT_BATCH,
            data_dir=f"{workdir}/data",
            language_model=True,
        )
        final = train_quietly(config, workdir)
        trained = checkpoint.restore_params(workdir)
        with contextlib.redirect_stdout(io.StringIO()):
            datasets = create_datasets(config, workdir, num_local_devices=1)
        family = make_family(config, datasets.tokenizer.vocab_size)
        untrained = family.init_params(jax.random.key(config.seed))  # the trainer's start
        batch = {k: v[0] for k, v in next(iter(datasets.eval_batches("validation"))).items()}
    row = {"exact_match": final["exact_match"], "parameters": parameter_count(family)}
    for state, params in (("untrained", untrained), ("trained", trained)):
        norms = embedding_gradient_norms(
            family, params, batch, position=GRADIENT_POSITION, width=config.d_model
        )
        row[state] = norms.tolist()
    row["cpu_s"] = time.process_time() - start
    return row


def gradients() -> dict:
    """Gradient norm against distance for each LM, untrained (as initialised) and trained."""
    position = GRADIENT_POSITION
    results = {"symbols": GRADIENT_SYMBOLS, "steps": GRADIENT_STEPS, "batch": GRADIENT_BATCH}
    results["distances"] = list(range(position, -1, -1))  # of input positions 0..position
    results["needed_distance"] = position - 1
    results["cpu_s"] = 0.0
    for (name,), row in in_workers(
        gradient_run, [(name,) for name in LANGUAGE_MODELS], workers=WORKERS
    ):
        for state in ("untrained", "trained"):
            norms = row[state]
            # The gradient that reaches the input the prediction needs, relative to the
            # gradient at the predicting position's own input.
            ratio = norms[1] / norms[position]
            results[f"gradient_needed_over_own_{state}_{name}"] = ratio
            print(
                f"  {name} {state}: |grad| at distance 0: {norms[position]:.3g}, at the "
                f"needed input (distance {position - 1}): {norms[1]:.3g} (ratio {ratio:.3g})",
                flush=True,
            )
        print(f"  {name}: exact_match={row['exact_match']:.3f} after training", flush=True)
        results["cpu_s"] += row.pop("cpu_s")
        results[name] = row
    return results


EXPERIMENTS = {"parallelism": parallelism, "long_range": long_range, "gradients": gradients}
# Printed as key=value lines and kept at the top of the results.
HEADLINE_PREFIXES = (
    "transformer_vs_lstm_speed_at_",
    "reverse_exact_match_len",
    "gradient_needed_over_own_",
)


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its finished worker processes."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def run(parts=tuple(EXPERIMENTS), **long_range_options) -> dict:
    """The experiments in `parts`: {headline: value, experiment: its results}.

    Headlines sit at the top level, for benchmarks/run.py to print; each experiment's
    curves and its CPU and wall seconds sit under its name. parallelism times steps, so
    it runs alone; long_range and gradients only train, so they run side by side.
    """
    logging.set_verbosity(logging.ERROR)  # tfds and orbax warn at every run
    options = {name: {} for name in parts} | {"long_range": long_range_options}
    results = {}
    if "parallelism" in parts:
        results["parallelism"] = timed_part("parallelism", {})
    training = [name for name in parts if name != "parallelism"]
    with concurrent.futures.ThreadPoolExecutor(max(1, len(training))) as threads:
        running = {name: threads.submit(timed_part, name, options[name]) for name in training}
    results |= {name: future.result() for name, future in running.items()}
    headlines = {}
    for values in results.values():
        for key in [key for key in values if key.startswith(HEADLINE_PREFIXES)]:
            headlines[key] = values.pop(key)
    for key, value in headlines.items():
        print(f"{key}={value:.3f}", flush=True)
    return {**headlines, **results}


def timed_part(name: str, options: dict) -> dict:
    """One experiment's results, with its wall seconds and CPU seconds (the sum over its
    trainings where it reports them, as parts running side by side share the process)."""
    print(f"-- {name}", flush=True)
    cpu_start, wall_start = cpu_seconds(), time.perf_counter()
    results = EXPERIMENTS[name](**options)
    results.setdefault("cpu_s", cpu_seconds() - cpu_start)
    results["wall_s"] = time.perf_counter() - wall_start
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=tuple(EXPERIMENTS), action="append")
    parser.add_argument("--out", help="also write the results to this JSON file")
    parser.add_argument("--lengths", type=int, nargs="+", default=REVERSE_LENGTHS)
    parser.add_argument("--models", nargs="+", choices=tuple(SEQ2SEQ_MODELS))
    args = parser.parse_args()
    results = run(
        args.part or tuple(EXPERIMENTS),
        lengths=tuple(args.lengths),
        models=tuple(args.models or SEQ2SEQ_MODELS),
    )
    if args.out:
        record = {
            "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "load_average": os.getloadavg(),
            "results": {"recurrence": results},
        }
        with open(args.out, "w") as f:
            json.dump(record, f, indent=2)


if __name__ == "__main__":
    main()
