"""The dense layers' matmul: plain `lax.dot_general`, or a CPU-tuned backward.

`TransformerConfig.matmul_backward="cpu_row_major"` differentiates every dense
layer with a custom VJP laid out for XLA:CPU's fast kernels (same math,
reverse mode only: jax.jvp cannot pass through it); why, in benchmarks/NOTES.md.
"""

import math

import jax
import jax.numpy as jnp
from jax import lax

from flaxformer_lite.config import TransformerConfig


def dot_general_for(config: TransformerConfig):
    """The `dot_general` the dense layers of a model with `config` use."""
    if config.matmul_backward == "cpu_row_major":
        return cpu_row_major_dot_general
    return lax.dot_general


def cpu_row_major_dot_general(
    lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None
):
    """Drop-in `dot_general` for flax's Dense and DenseGeneral (their `dot_general=`).

    Handles their contraction, the trailing axes of `lhs` with the leading
    axes of `rhs` and no batch axes, on CPU; hands anything else to
    `lax.dot_general` unchanged.
    """
    (lhs_contracting, rhs_contracting), batch_dims = dimension_numbers
    num_contracting = len(lhs_contracting)
    is_dense = (
        batch_dims == ((), ())
        and tuple(lhs_contracting) == tuple(range(lhs.ndim - num_contracting, lhs.ndim))
        and tuple(rhs_contracting) == tuple(range(num_contracting))
    )
    plain = precision is not None or preferred_element_type is not None
    if plain or not is_dense or jax.default_backend() != "cpu":
        return lax.dot_general(
            lhs, rhs, dimension_numbers, precision, preferred_element_type=preferred_element_type
        )
    batch_shape, features_shape = lhs.shape[:-num_contracting], rhs.shape[num_contracting:]
    contracted = math.prod(rhs.shape[:num_contracting])
    rows = lhs.reshape(-1, contracted)  # (M, K)
    kernel = rhs.reshape(contracted, -1)  # (K, N)
    return dense_matmul(rows, kernel).reshape(*batch_shape, *features_shape)


@jax.custom_vjp
def dense_matmul(x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
    """x (M, K) @ kernel (K, N) -> (M, N); every weight gradient a row-major product."""
    return x @ kernel


def _forward(x, kernel):
    return x @ kernel, (x, kernel)


def _backward(residuals, y_grad):
    x, kernel = residuals  # (M, K), (K, N)
    y_grad = _materialized(y_grad)  # (M, N)
    x_grad = y_grad @ kernel.T  # (M, K)
    if kernel.shape[0] <= kernel.shape[1]:
        kernel_grad = _materialized(x.T) @ y_grad  # (K, M) @ (M, N)
    else:
        kernel_grad = _materialized(_materialized(y_grad.T) @ x).T  # ((N, M) @ (M, K))^T
    return x_grad, kernel_grad


def _materialized(array: jnp.ndarray) -> jnp.ndarray:
    """`array` computed into its own row-major buffer, not folded into its consumer."""
    return lax.optimization_barrier(array)


dense_matmul.defvjp(_forward, _backward)
