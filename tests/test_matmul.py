"""The dense layers' matmul: same values and gradients as lax.dot_general."""

import jax
import numpy as np
import pytest
from jax import lax

from flaxformer_lite.layers import matmul

DENSE = (((2,), (0,)), ((), ()))


@pytest.mark.parametrize(
    "lhs_shape, rhs_shape, dimension_numbers",
    [
        ((2, 3, 4), (4, 7), DENSE),  # Dense with a wide kernel (x^T materialised)
        ((2, 3, 7), (7, 4), DENSE),  # Dense with a tall kernel (dW^T, transposed)
        ((2, 3, 8), (8, 2, 5), DENSE),  # DenseGeneral into heads (B, T, H, Dh)
        ((2, 3, 2, 5), (2, 5, 8), (((2, 3), (0, 1)), ((), ()))),  # W^O over the heads
        ((2, 3, 4), (2, 4, 5), (((2,), (1,)), ((0,), (0,)))),  # batched: handed to lax
    ],
)
def test_values_and_gradients_equal_lax_dot_general(lhs_shape, rhs_shape, dimension_numbers):
    lhs_key, rhs_key, weights_key = jax.random.split(jax.random.key(0), 3)
    lhs = jax.random.normal(lhs_key, lhs_shape)
    rhs = jax.random.normal(rhs_key, rhs_shape)
    output_shape = lax.dot_general(lhs, rhs, dimension_numbers).shape
    weights = jax.random.normal(weights_key, output_shape)

    def weighted_sum(product, lhs, rhs):
        return (product(lhs, rhs, dimension_numbers) * weights).sum()

    ours = jax.value_and_grad(weighted_sum, argnums=(1, 2))(
        matmul.cpu_row_major_dot_general, lhs, rhs
    )
    plain = jax.value_and_grad(weighted_sum, argnums=(1, 2))(lax.dot_general, lhs, rhs)
    for got, want in zip(jax.tree.leaves(ours), jax.tree.leaves(plain), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
