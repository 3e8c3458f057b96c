"""Masks: each kind alone, and combined."""

import jax.numpy as jnp
import numpy as np

from flaxformer_lite import (
    causal_mask,
    combine_masks,
    key_padding_mask,
    local_window_mask,
    mask_to_bias,
    padding_mask,
    segment_mask,
)


def test_padding_mask_blocks_pad_queries_and_keys():
    tokens = jnp.array([[5, 6, 0]])
    mask = np.asarray(padding_mask(tokens, tokens))[0, 0]
    np.testing.assert_array_equal(mask, [[1, 1, 0], [1, 1, 0], [0, 0, 0]])
    np.testing.assert_array_equal(np.asarray(key_padding_mask(tokens))[0, 0, 0], [1, 1, 0])


def test_causal_mask_is_lower_triangular_and_offsets():
    np.testing.assert_array_equal(causal_mask(4)[0, 0], np.tril(np.ones((4, 4), bool)))
    # One query at position 2 of a 4-slot cache sees slots 0..2.
    np.testing.assert_array_equal(causal_mask(1, 4, offset=2)[0, 0, 0], [1, 1, 1, 0])


def test_segment_mask_keeps_examples_apart():
    segments = jnp.array([[1, 1, 2, 2, 0]])
    mask = np.asarray(segment_mask(segments, segments))[0, 0]
    assert mask[0, 1] and mask[2, 3] and not mask[1, 2] and not mask[3, 0]


def test_local_window_mask_is_a_band():
    mask = np.asarray(local_window_mask(5, 5, window=1))[0, 0]
    expected = np.abs(np.arange(5)[:, None] - np.arange(5)[None, :]) <= 1
    np.testing.assert_array_equal(mask, expected)


def test_masks_combine_by_and_and_ignore_none():
    segments = jnp.array([[1, 1, 1, 2]])
    tokens = jnp.array([[4, 4, 4, 4]])
    combined = combine_masks(
        causal_mask(4), None, segment_mask(segments, segments), padding_mask(tokens, tokens)
    )
    expected = np.tril(np.ones((4, 4), bool))
    expected[3, :3] = False
    np.testing.assert_array_equal(np.asarray(combined)[0, 0], expected)
    assert combine_masks(None, None) is None


def test_mask_to_bias():
    bias = np.asarray(mask_to_bias(jnp.array([True, False])))
    assert bias[0] == 0.0 and bias[1] == np.finfo(np.float32).min
