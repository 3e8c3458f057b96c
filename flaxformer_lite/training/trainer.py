"""The training loop: data -> pmapped train_step -> metrics, evaluation, checkpoints."""

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
from flax.training.train_state import TrainState
from tqdm import tqdm

from flaxformer_lite.config import TransformerConfig
from flaxformer_lite.data import create_datasets
from flaxformer_lite.models.encoder_decoder import Transformer
from flaxformer_lite.training import parallel
from flaxformer_lite.training.checkpoint import Checkpointer
from flaxformer_lite.training.logging import MetricWriter, format_metrics
from flaxformer_lite.training.metrics import summarize
from flaxformer_lite.training.optimizer import make_optimizer
from flaxformer_lite.training.schedules import make_schedule


def model_config_from(config, vocab_size: int) -> TransformerConfig:
    """The TransformerConfig fields a flat experiment config sets, plus data-derived ones."""
    names = {field.name for field in dataclasses.fields(TransformerConfig)}
    values = {name: config[name] for name in names if name in config}
    values["vocab_size"] = vocab_size
    values["max_len"] = max(config.max_source_length, config.max_target_length)
    return TransformerConfig(**values)


def create_train_state(model: Transformer, config, rng: jax.Array) -> TrainState:
    """Initialise parameters from shapes alone (jit), then the optimizer state."""
    source = jnp.ones((1, config.max_source_length), jnp.int32)
    target = jnp.ones((1, config.max_target_length), jnp.int32)
    params = jax.jit(model.init)(rng, source, target)["params"]
    return TrainState.create(apply_fn=model.apply, params=params, tx=make_optimizer(config))


def _first_replica(tree):
    return jax.device_get(jax.tree_util.tree_map(lambda x: x[0], tree))


def evaluate(p_eval_step, state, datasets, split: str = "validation") -> dict[str, float]:
    """Teacher-forced metrics over every example of `split`, each scored once."""
    sums = [p_eval_step(state, batch) for batch in datasets.eval_batches(split)]
    return summarize([_first_replica(s) for s in sums])


def train_and_evaluate(config, workdir: str) -> dict[str, float]:
    """Train the configured model in `workdir`, resuming from its latest checkpoint.

    Returns the final evaluation metrics (also printed as the last line,
    `final: key=value ...`).
    """
    parallel.initialize_distributed(config.distributed)
    is_chief = jax.process_index() == 0
    os.makedirs(workdir, exist_ok=True)
    datasets = create_datasets(config, workdir, jax.local_device_count())
    model = Transformer(model_config_from(config, datasets.tokenizer.vocab_size))
    init_rng, dropout_rng = jax.random.split(jax.random.key(config.seed))
    state = create_train_state(model, config, init_rng)

    checkpointer = Checkpointer(workdir, config.checkpoint_every_steps, config.keep_checkpoints)
    if checkpointer.latest_step() is not None:
        state = checkpointer.restore(state, datasets.train_iter)
        print(f"Resumed from step {int(state.step)} in {checkpointer.directory}")
    if is_chief:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))

    learning_rate = make_schedule(config)
    p_train_step = parallel.pmapped_train_step(config.label_smoothing)
    p_eval_step = parallel.pmapped_eval_step(config.label_smoothing)
    writer = MetricWriter(workdir, enabled=is_chief)
    start_step = int(state.step)
    state = parallel.replicate(state)

    pending, interval_start, final = [], time.perf_counter(), {}
    progress = tqdm(
        range(start_step, config.num_train_steps),
        initial=start_step,
        total=config.num_train_steps,
        disable=not is_chief,
        dynamic_ncols=True,
    )
    for step in progress:
        batch = next(datasets.train_iter)
        state, metrics = p_train_step(state, batch, dropout_rng)
        pending.append(metrics)  # still on device: no host sync until we log
        done = step + 1
        last = done == config.num_train_steps
        if done % config.log_every_steps == 0 or last:
            train = summarize([_first_replica(m) for m in pending])
            seconds = time.perf_counter() - interval_start
            train["tokens_per_s"] = train.pop("tokens") / seconds
            train["learning_rate"] = float(learning_rate(done - 1))
            progress.set_postfix(
                loss=f"{train['loss']:.3f}",
                lr=f"{train['learning_rate']:.2e}",
                tok_s=f"{train['tokens_per_s']:.0f}",
            )
            pending, interval_start = [], time.perf_counter()
        if done % config.eval_every_steps == 0 or last:
            evaluation = evaluate(p_eval_step, state, datasets)
            final = {
                "train_loss": train["loss"],
                "eval_loss": evaluation["loss"],
                "eval_perplexity": evaluation["perplexity"],
                "eval_accuracy": evaluation["accuracy"],
                "exact_match": evaluation["teacher_forced_exact"],
                "tokens_per_s": train["tokens_per_s"],
                "learning_rate": train["learning_rate"],
            }
            writer.write(done, final)
            progress.write(f"step {done}: {format_metrics(final)}")
            interval_start = time.perf_counter()  # evaluation time is not training time
        if checkpointer.should_save(done) or last:
            checkpointer.save(done, parallel.unreplicate(state), datasets.train_iter, force=last)
    checkpointer.wait()
    checkpointer.close()
    writer.close()
    if is_chief:
        print(f"final: step={config.num_train_steps} {format_metrics(final)}", flush=True)
    return final
