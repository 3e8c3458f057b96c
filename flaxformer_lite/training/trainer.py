"""The training loop: data -> train_step -> metrics, evaluation, checkpoints.

The step runs under `jax.pmap` (config.parallelism="pmap", the default: a full copy
of the state on every device) or under `jax.jit` over a device mesh ("mesh":
data, FSDP and tensor parallel, training/mesh.py).
"""

import contextlib
import math
import os
import time

import jax
import numpy as np
from flax.training.train_state import TrainState
from jax.experimental import multihost_utils
from tqdm import tqdm

from flaxformer_lite import evaluation, flops
from flaxformer_lite.data import DataError
from flaxformer_lite.experiment import ConfigError, check_config, create_datasets, resolve_config
from flaxformer_lite.families import ModelFamily, make_family
from flaxformer_lite.training import mesh, parallel
from flaxformer_lite.training.checkpoint import Checkpointer
from flaxformer_lite.training.guards import (
    Interrupted,
    NonFiniteSteps,
    StopSignals,
    WorkdirLock,
)
from flaxformer_lite.training.logging import MetricWriter, format_metrics
from flaxformer_lite.training.metrics import summarize
from flaxformer_lite.training.optimizer import make_optimizer
from flaxformer_lite.training.schedules import make_schedule


def create_train_state(family: ModelFamily, config, rng: jax.Array) -> TrainState:
    """Initialise parameters from shapes alone (jit), then the optimizer state."""
    params = family.init_params(rng)
    tx = family.optimizer(make_optimizer(config))
    return TrainState.create(apply_fn=family.module.apply, params=params, tx=tx)


def _first_replica(tree):
    return jax.device_get(jax.tree_util.tree_map(lambda x: x[0], tree))


def evaluation_sums(
    p_eval_step, state, datasets, split: str = "validation", *, to_host=_first_replica
) -> list[dict]:
    """The metric sums of every evaluation batch of `split`, on the host.

    `to_host` takes the step's output to the host: the first replica under pmap,
    the (replicated) sums themselves under a mesh.
    """
    return [to_host(p_eval_step(state, batch)) for batch in datasets.eval_batches(split)]


def evaluate(p_eval_step, state, datasets, split: str = "validation") -> dict[str, float]:
    """Teacher-forced metrics over every example of `split`, each scored once."""
    return summarize(evaluation_sums(p_eval_step, state, datasets, split))


def decode_split(family: ModelFamily, p_predict, params, datasets, split: str = "validation"):
    """Generate for every example of `split`: (sources, predictions) token rows.

    Sources are what the model is conditioned on, cut to the length limits; score the
    predictions against `datasets.reference_texts(split)`, the target texts whole.
    """
    sources, predictions = [], []
    for batch in datasets.eval_batches(split):
        tokens = jax.device_get(p_predict(params, batch))
        real = batch["targets"].reshape(-1, batch["targets"].shape[-1]).any(axis=-1)
        conditioned_on = np.asarray(family.sources(batch))
        sources.extend(conditioned_on.reshape(-1, conditioned_on.shape[-1])[real])
        predictions.extend(tokens.reshape(-1, tokens.shape[-1])[real])
    return sources, predictions


def generation_metrics(config, tokenizer, predictions, reference_texts) -> dict[str, float]:
    """Exact match and, when config.eval_bleu, corpus BLEU (sacrebleu) of the decoded text.

    Both compare with `reference_texts`, the untouched target text of every example.
    """
    hypotheses = [tokenizer.decode(prediction) for prediction in predictions]
    metrics = {"exact_match": evaluation.exact_text_match(hypotheses, reference_texts)}
    if jax.process_count() > 1:  # each host decoded its own share of the examples
        local = np.array([metrics["exact_match"] * len(hypotheses), len(hypotheses)])
        matches, count = multihost_utils.process_allgather(local).sum(axis=0)
        metrics["exact_match"] = float(matches / max(count, 1))
    if config.eval_bleu:  # over this host's share of the examples
        bleu, signature = evaluation.corpus_bleu(hypotheses, reference_texts)
        metrics["bleu"] = bleu
        if jax.process_index() == 0:
            print(f"BLEU {bleu:.2f} ({signature})")
    return metrics


def print_examples(tokenizer, sources, predictions, reference_texts, count: int) -> None:
    """The first `count` examples: source -> generated text, marked against the reference."""
    examples = zip(sources[:count], predictions[:count], reference_texts[:count], strict=True)
    for source, prediction, reference in examples:
        generated = tokenizer.decode(prediction)
        mark = "ok " if generated == reference else "BAD"
        print(f"{mark} {tokenizer.decode(source)!r} -> {generated!r}  (reference {reference!r})")


def step_flops_and_peak(family: ModelFamily, config) -> tuple[float, float]:
    """Model FLOPs of one global training step, and the FLOP/s that MFU divides by.

    Accelerators use their data-sheet peak times the device count. On CPU the
    (possibly fake) devices share one host, whose ceiling is a matmul measured
    now, small enough to take about a second.
    """
    step_flops = family.train_step_flops(config.per_device_batch_size * jax.device_count())
    device = jax.devices()[0]
    peak = flops.table_peak_flops(device.device_kind)
    if peak is not None:
        return step_flops, peak * jax.device_count()
    return step_flops, flops.measure_matmul_flops(config.dtype, size=1024, repeats=3)


def train_and_evaluate(config, workdir: str) -> dict[str, float]:
    """Train the configured model in `workdir`, resuming from its latest checkpoint.

    Returns the final evaluation metrics, also printed as the run's last line,
    `final: key=value ...`. Raises ConfigError before any work for a config
    that cannot work, WorkdirInUseError if another live run holds `workdir`,
    NonFiniteError when a step goes NaN (unless config.skip_nonfinite), and
    Interrupted after saving a checkpoint when SIGTERM or SIGINT arrives.
    """
    config = resolve_config(config)  # e.g. a pretrained init_from sets the architecture
    check_config(config)
    parallel.initialize_distributed(config)  # first: nothing may touch the devices before
    prng_impl = _checked_prng_impl(config.prng_impl)
    mesh.check_parallelism(config, jax.device_count())
    os.makedirs(workdir, exist_ok=True)
    # The first process holds the lock for the job; the others share its workdir.
    lock = WorkdirLock(workdir) if jax.process_index() == 0 else contextlib.nullcontext()
    with lock:
        return _train_and_evaluate(config, workdir, prng_impl)


def _checked_prng_impl(name: str) -> str:
    try:
        return parallel.dropout_prng_impl(name, jax.local_device_count())
    except ValueError as error:
        raise ConfigError(str(error)) from None


def _train_and_evaluate(config, workdir: str, prng_impl: str) -> dict[str, float]:
    is_chief = jax.process_index() == 0
    datasets = create_datasets(config, workdir, jax.local_device_count())
    if is_chief:
        print(datasets.info)
    if "validation" not in datasets.eval_splits:  # say so now, not at the first evaluation
        raise DataError(
            f"config.dataset={config.dataset!r} gives no validation split, and evaluation "
            "needs one: name held-out data with config.eval_file (eval_source_file and "
            "eval_target_file for aligned files)."
        )
    family = make_family(config, datasets.tokenizer.vocab_size)
    step_flops, peak_flops = step_flops_and_peak(family, config)
    dropout_rng = jax.random.key(config.seed, impl=prng_impl)
    on_mesh = config.parallelism == "mesh"
    if on_mesh:
        sharded = mesh.MeshParallel(
            family, config, mesh.make_mesh(config.mesh_shape), config.logical_axis_rules
        )
        state = sharded.init_state(jax.random.key(config.seed))
        if is_chief:
            print(f"Mesh {dict(sharded.mesh.shape)} over {jax.device_count()} devices")
    else:
        state = create_train_state(family, config, jax.random.key(config.seed))

    checkpointer = Checkpointer(
        workdir,
        config.checkpoint_every_steps,
        config.keep_checkpoints,
        run={"prng_impl": prng_impl},
    )
    if checkpointer.latest_step() is not None:
        # Under a mesh the arrays are read straight into this run's shardings.
        template = sharded.state_template() if on_mesh else state
        state = checkpointer.restore(template, datasets.train_iter)
        if on_mesh:
            state = sharded.place_state(state)
        if is_chief:
            print(f"Resumed from step {int(state.step)} in {checkpointer.directory}")
    if is_chief:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))

    learning_rate = make_schedule(config)
    if on_mesh:
        p_train_step = sharded.train_on_host_batch
        p_eval_step = sharded.eval_on_host_batch
        p_predict = sharded.predict_on_host_batch
        to_host = jax.device_get  # metric sums leave the step replicated: one copy
    else:
        p_train_step = parallel.pmapped_train_step(family, config.label_smoothing)
        p_eval_step = parallel.pmapped_eval_step(family, config.label_smoothing)
        p_predict = jax.pmap(family.predict)
        to_host = _first_replica
    writer = MetricWriter(workdir, enabled=is_chief)
    nonfinite = NonFiniteSteps(
        skip=config.skip_nonfinite,
        last_good_checkpoint=lambda: _describe_latest(checkpointer),
    )

    def run_evaluation(step, train):
        sums = evaluation_sums(p_eval_step, state, datasets, to_host=to_host)
        teacher_forced = summarize(sums)
        metrics = {"train_loss": train["loss"]} if train else {}
        metrics.update(
            eval_loss=teacher_forced["loss"],
            eval_perplexity=teacher_forced["perplexity"],
            eval_accuracy=teacher_forced["accuracy"],
        )
        metrics.update({f"eval_{name}": value for name, value in family.eval_metrics(sums).items()})
        if datasets.eval_bytes:  # plain text: bits per byte, comparable across tokenizers
            nll_nats = teacher_forced["nll"] * teacher_forced["tokens"]
            metrics["eval_bits_per_byte"] = (
                nll_nats / math.log(2) / datasets.eval_bytes["validation"]
            )
        examples = ([], [], [])
        # Every example has a reference to generate (a classifier's accuracy is above).
        if family.generates_text and datasets.data_format != "text":
            sources, predictions = decode_split(family, p_predict, state.params, datasets)
            references = datasets.reference_texts()
            metrics.update(generation_metrics(config, datasets.tokenizer, predictions, references))
            examples = (sources, predictions, references)
        if train:
            metrics.update(tokens_per_s=train["tokens_per_s"], mfu=train["mfu"])
        metrics["learning_rate"] = float(learning_rate(step - 1))
        if config.skip_nonfinite:
            metrics["skipped_steps"] = nonfinite.skipped
        writer.write(step, metrics)
        return metrics, examples

    def save(step):
        nonfinite.flush()  # never write the state of a step that went non-finite
        # A mesh state is saved as it lies: each host writes the shards it holds.
        saved = state if on_mesh else parallel.unreplicate(state)
        checkpointer.save(step, saved, datasets.train_iter)

    start_step = int(state.step)
    if not on_mesh:
        state = parallel.replicate(state)
    train, pending, interval_start = {}, [], time.perf_counter()
    if is_chief:
        print(f"Training steps {start_step + 1} to {config.num_train_steps}", flush=True)
    progress = tqdm(
        range(start_step, config.num_train_steps),
        initial=start_step,
        total=config.num_train_steps,
        disable=not is_chief,
        dynamic_ncols=True,
        mininterval=1.0,
    )
    try:
        with StopSignals() as stop_signals:
            for step in progress:
                batch = next(datasets.train_iter)
                state, metrics = p_train_step(state, batch, dropout_rng)
                done = step + 1
                # Checks step `done - 1` now that `done` is queued: no wait for the device.
                nonfinite.push(done, metrics["nonfinite"])
                pending.append(metrics)  # stays on device: no host sync until the next log
                last = done == config.num_train_steps
                if done % config.log_every_steps == 0 or last:
                    train = summarize([to_host(m) for m in pending])
                    seconds = time.perf_counter() - interval_start
                    train["tokens_per_s"] = train.pop("tokens") / seconds
                    train["mfu"] = step_flops * len(pending) / seconds / peak_flops
                    progress.set_postfix(
                        loss=f"{train['loss']:.3f}",
                        lr=f"{float(learning_rate(step)):.2e}",
                        tok_s=f"{train['tokens_per_s']:.0f}",
                        mfu=f"{train['mfu']:.1%}",
                    )
                    pending = []
                if stop_signals.requested(done):
                    save(done)
                    checkpointer.wait()
                    raise Interrupted(stop_signals.received, done, checkpointer.directory)
                if done % config.eval_every_steps == 0 and not last:
                    metrics, _ = run_evaluation(done, train)
                    progress.write(f"step {done}: {format_metrics(metrics)}")
                if checkpointer.should_save(done) or last:
                    save(done)
                if done % config.log_every_steps == 0:
                    interval_start = time.perf_counter()  # evaluation and saving are not training
            nonfinite.flush()
    finally:
        progress.close()
        checkpointer.wait()  # whatever ends the loop, a started save is committed
        checkpointer.close()

    final, examples = run_evaluation(max(start_step, config.num_train_steps), train)
    writer.close()
    if is_chief:
        print_examples(datasets.tokenizer, *examples, config.num_print_examples)
        print(f"final: step={config.num_train_steps} {format_metrics(final)}", flush=True)
    return final


def _describe_latest(checkpointer: Checkpointer) -> str:
    step = checkpointer.latest_step()
    if step is None:
        return f"none yet in {checkpointer.directory}"
    return f"step {step} in {checkpointer.directory}"
