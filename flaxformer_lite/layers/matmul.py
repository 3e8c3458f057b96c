"""The dense layers' matmul, with a backward pass arranged for XLA:CPU's kernels.

The math is the plain product's: y = x W, dx = dy W^T, dW = x^T dy. Only the
way the backward is handed to XLA:CPU changes, because left to itself it ran
the weight gradients of the bench train step at about half speed
(benchmarks/NOTES.md):

- XLA:CPU runs a product on YNNPACK when its left operand is row-major and
  on Eigen when it is transposed, as dW's x^T is. Eigen ran those products
  slowly and gained little from a second core (the output layer's dW: 86 ms
  on one core, 81 ms on two; 48 ms on two as a row-major product). So the
  transposed operand is materialised first, a copy of the smaller array kept
  apart from the product by an optimization barrier, and every dW is a
  row-major product;
- that product is fast when dW has fewer rows than columns; for a taller dW
  (the FFN's W2: d_ff x d_model) we compute dW^T and transpose the small
  result;
- dy is materialised once, row-major, behind an optimization barrier: for the
  output layer XLA otherwise computed the (B*T, V) logits gradient a second
  time, straight into a transposed buffer.

Other backends lay out their matmuls themselves and get the plain product.
"""

import math

import jax
import jax.numpy as jnp
from jax import lax


def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
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
    """x (M, K) @ kernel (K, N) -> (M, N), differentiated as described above."""
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
