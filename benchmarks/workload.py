"""The reference ("bench") workload that every benchmark part trains.

It is the workload of the PyTorch peer (`shared/bench/peer_torch.py`, an
`nn.Transformer` training step), expressed in this library's terms:

    shared vocabulary 8000, d_model 256, 4 heads, d_ff 1024, 3 + 3 layers,
    pre-LN, ReLU, learned positions, an untied output layer, dropout 0.1 on
    residual branches, the FFN hidden layer and the attention weights,
    source and target length 64, batch 32, label smoothing 0.1, Adam.

The model turns on `matmul_backward="cpu_row_major"`, the dense layers' custom
backward tuned for XLA:CPU (off by default in the library because jax.jvp cannot
pass through it; what it does and what it gains: NOTES.md).

Batches are random ids in [1, vocab), as the peer draws them: no padding, so
every one of the 32 x 64 target positions is a real token. The step is the
trainer's own `train_step` (with its optimizer: global-norm clipping then
Adam), jitted with the state donated, exactly as training runs it.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax.training.train_state import TrainState

from flaxformer_lite import Transformer, TransformerConfig
from flaxformer_lite.training import parallel
from flaxformer_lite.training.optimizer import make_optimizer
from flaxformer_lite.training.step import train_step

BATCH_SIZE = 32
LENGTH = 64  # source and target
LABEL_SMOOTHING = 0.1


def model_config(**changes) -> TransformerConfig:
    """The bench model; `changes` override fields (depth, remat, scan, ...)."""
    config = TransformerConfig(
        vocab_size=8000,
        d_model=256,
        num_heads=4,
        d_ff=1024,
        num_encoder_layers=3,
        num_decoder_layers=3,
        dropout_rate=0.1,
        attention_dropout_rate=0.1,  # nn.Transformer drops attention weights too
        max_len=4 * LENGTH,  # the peer's position table
        norm_placement="pre",
        mlp="relu",
        position_encoding="learned",
        tie_output_embedding=False,
        matmul_backward="cpu_row_major",  # the CPU-tuned weight gradients (NOTES.md)
    )
    return config.replace(**changes)


def optimizer_config(model: TransformerConfig) -> ml_collections.ConfigDict:
    """The flat training config `make_optimizer` reads (values do not change the speed)."""
    return ml_collections.ConfigDict(
        {
            "schedule": "rsqrt",
            "learning_rate": 1.0,
            "warmup_steps": 100,
            "num_train_steps": 1000,
            "d_model": model.d_model,
            "adam_b1": 0.9,
            "adam_b2": 0.98,
            "adam_eps": 1e-9,
            "weight_decay": 0.0,
            "grad_clip_norm": 1.0,
        }
    )


def make_batch(config: TransformerConfig, seed: int = 0) -> dict:
    """{"inputs", "targets"}: (BATCH_SIZE, LENGTH) int32 ids in [1, vocab), no padding."""
    rng = np.random.default_rng(seed)
    shape = (BATCH_SIZE, LENGTH)
    return {
        "inputs": jnp.asarray(rng.integers(1, config.vocab_size, shape), jnp.int32),
        "targets": jnp.asarray(rng.integers(1, config.output_vocab_size, shape), jnp.int32),
    }


def make_state(config: TransformerConfig, batch: dict, seed: int = 0) -> TrainState:
    """Freshly initialised parameters and Adam state for `config`."""
    model = Transformer(config)
    sample = {name: ids[:1] for name, ids in batch.items()}  # shapes only; one row is enough
    params = jax.jit(model.init)(jax.random.key(seed), sample["inputs"], sample["targets"])
    tx = make_optimizer(optimizer_config(config))
    return TrainState.create(apply_fn=model.apply, params=params["params"], tx=tx)


def state_shapes(config: TransformerConfig, batch: dict) -> TrainState:
    """The TrainState as shapes and dtypes only: enough to compile, nothing allocated."""
    return jax.eval_shape(functools.partial(make_state, config), batch)


def prng_impl() -> str:
    """Philox dropout keys: ~5x cheaper masks on CPU than the library's default threefry
    (NOTES.md); the bench step runs on one device, where jax 0.10 compiles Philox."""
    return parallel.dropout_prng_impl("philox2x32", local_device_count=1)


def dropout_key(seed: int = 1) -> jax.Array:
    return jax.random.key(seed, impl=prng_impl())


def jitted_train_step():
    """train_step(state, batch, rng) -> (state, metric sums), the state's buffers donated."""
    step = functools.partial(train_step, label_smoothing=LABEL_SMOOTHING)
    return jax.jit(step, donate_argnums=(0,))
