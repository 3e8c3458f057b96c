"""Model FLOPs, device peaks and MFU (model FLOPs utilisation).

MFU = model FLOPs per step / step time / peak FLOP/s of the device. Model
FLOPs count what the architecture needs, not what the implementation happens
to run: the matmuls of every projection, of the attention scores and values,
and of the output layer; 2 FLOPs per multiply-add; training costs 3 forward
passes (the backward pass computes two matmuls per forward matmul, one for the
input gradient and one for the weight gradient). Rematerialisation re-runs
part of the forward pass but does not change the model FLOPs, so MFU shows its
cost. Embedding lookups, norms, softmax and the optimizer are not counted:
they are elementwise and small next to the matmuls.

The peak comes from `PEAK_FLOPS` on known accelerators and from a matmul
measured on the spot elsewhere (CPUs, whose peak depends on the core count,
clock and vector units of the machine at hand).
"""

import time

import jax
import jax.numpy as jnp

from flaxformer_lite.config import TransformerConfig

# Dense bfloat16 peak of one device, FLOP/s, from the vendors' data sheets.
PEAK_FLOPS = {
    "H100": 989e12,  # SXM
    "A100": 312e12,
    "TPU v4": 275e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
}
# `device.device_kind` as JAX reports it -> the names above. GPU kinds carry
# the memory size and form factor ("NVIDIA H100 80GB HBM3"), so GPUs match by
# substring instead.
_TPU_KINDS = {
    "TPU v4": "TPU v4",
    "TPU v5 lite": "TPU v5e",
    "TPU v5e": "TPU v5e",
    "TPU v5": "TPU v5p",
    "TPU v5p": "TPU v5p",
}
_GPU_NAMES = ("H100", "A100")


def attention_flops(
    batch: int,
    query_length: int,
    key_length: int,
    d_model: int,
    *,
    query_features: int | None = None,
    key_value_features: int | None = None,
) -> int:
    """One multi-head attention: Q, K, V, output projections, scores and weighted values.

    Queries (B, Q, D) and keys/values (B, K, D): Q and the output projection
    run on the Q positions, K and V on the K positions. Q and the output map D to
    and from query_features = H * Dh (default D); K and V map D to
    key_value_features = Hkv * Dh (default query_features; fewer under grouped-query
    attention). Scores Q K^T and weights x V are (Q, K) by Dh per head, over H heads.
    Masked entries (causal, local window) are computed all the same, so they count.
    """
    query_features = query_features or d_model
    key_value_features = key_value_features or query_features
    query_side = 2 * query_length * d_model * query_features  # Q and the output projection
    key_side = 2 * key_length * d_model * key_value_features  # K and V
    projections = 2 * batch * (query_side + key_side)
    scores_and_values = 2 * 2 * batch * query_length * key_length * query_features
    return projections + scores_and_values


def feed_forward_flops(
    batch: int, length: int, d_model: int, d_ff: int, *, gated: bool = False
) -> int:
    """The matmuls of the position-wise MLP at every position: (D, F) then (F, D), with a
    second (D, F) input projection when gated (SwiGLU, GeGLU)."""
    matmuls = 3 if gated else 2
    return matmuls * 2 * batch * length * d_model * d_ff


def _attention_flops(config: TransformerConfig, batch: int, queries: int, keys: int) -> int:
    return attention_flops(
        batch,
        queries,
        keys,
        config.d_model,
        query_features=config.num_heads * config.features_per_head,
        key_value_features=config.key_value_heads * config.features_per_head,
    )


def _feed_forward_flops(config: TransformerConfig, batch: int, length: int) -> int:
    gated = config.mlp in ("swiglu", "geglu")
    return feed_forward_flops(batch, length, config.d_model, config.d_ff, gated=gated)


def forward_flops(
    config: TransformerConfig, batch: int, source_length: int, target_length: int
) -> int:
    """Matmul FLOPs of one forward pass of the encoder-decoder on (B, S) -> (B, T) tokens."""
    encoder_layer = _attention_flops(config, batch, source_length, source_length)
    encoder_layer += _feed_forward_flops(config, batch, source_length)
    decoder_layer = _attention_flops(config, batch, target_length, target_length)  # masked self
    decoder_layer += _attention_flops(config, batch, target_length, source_length)  # cross
    decoder_layer += _feed_forward_flops(config, batch, target_length)
    output_layer = 2 * batch * target_length * config.d_model * config.output_vocab_size
    return (
        config.num_encoder_layers * encoder_layer
        + config.num_decoder_layers * decoder_layer
        + output_layer
    )


def decoder_only_forward_flops(config: TransformerConfig, batch: int, length: int) -> int:
    """Matmul FLOPs of one forward pass of the decoder-only LM on (B, T) tokens."""
    layer = _attention_flops(config, batch, length, length)
    layer += _feed_forward_flops(config, batch, length)
    output_layer = 2 * batch * length * config.d_model * config.vocab_size
    return config.num_decoder_layers * layer + output_layer


def train_step_flops(
    config: TransformerConfig, batch: int, source_length: int, target_length: int
) -> int:
    """Forward + backward: 3 x the forward matmul FLOPs."""
    return 3 * forward_flops(config, batch, source_length, target_length)


def table_peak_flops(device_kind: str) -> float | None:
    """Dense bf16 FLOP/s of a known accelerator (`device.device_kind`), else None."""
    name = _TPU_KINDS.get(device_kind)
    if name is None:
        name = next((gpu for gpu in _GPU_NAMES if gpu in device_kind), None)
    return PEAK_FLOPS.get(name)


def measure_matmul_flops(
    dtype="float32", size: int | None = None, repeats: int = 5, device=None
) -> float:
    """Median FLOP/s of a jitted (size, size) @ (size, size) matmul in `dtype`.

    The practical ceiling of the device for the compute dtype: what its matmul
    library reaches on a large, square, well-shaped problem. Each repeat runs
    the matmul 4 times back to back, so dispatch overhead stays out of the figure.
    """
    device = device or jax.devices()[0]
    size = size or (2048 if device.platform == "cpu" else 8192)
    calls = 4
    a = jax.device_put(jnp.ones((size, size), dtype), device)
    b = jax.device_put(jnp.full((size, size), 1.0 / size, dtype), device)
    matmul = jax.jit(jnp.matmul)
    matmul(a, b).block_until_ready()  # compile
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        outputs = [matmul(a, b) for _ in range(calls)]
        jax.block_until_ready(outputs)
        seconds.append((time.perf_counter() - start) / calls)
    seconds.sort()
    return 2 * size**3 / seconds[len(seconds) // 2]


def peak_flops(dtype, device=None) -> tuple[float, str]:
    """(FLOP/s, where it came from) that MFU on `device` is measured against.

    Known accelerators use the data-sheet bf16 peak; anything else (CPUs)
    gets a matmul measured now in `dtype`, the compute dtype of the model.
    """
    device = device or jax.devices()[0]
    peak = table_peak_flops(device.device_kind)
    if peak is not None:
        return peak, f"table ({device.device_kind}, bf16 dense)"
    return measure_matmul_flops(dtype, device=device), f"measured {dtype} matmul"


def mfu(flops_per_step: float, step_seconds: float, peak: float, num_devices: int = 1) -> float:
    """Fraction of the devices' peak that the model FLOPs of one step used."""
    return flops_per_step / step_seconds / (peak * num_devices)
