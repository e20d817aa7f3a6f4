"""bench/bench_grouped.py: a grouped convolution computes what the members compute apart."""

import sys
from pathlib import Path

import numpy as np
import tensorflow as tf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import bench_grouped  # noqa: E402


def test_the_grouped_stack_gives_each_members_own_features():
    widths, members = (4, 8), 3
    stacks = bench_grouped.member_stacks(widths, members, seed=0)
    inputs = tf.random.stateless_normal((2, 16, 16, widths[0] * members), (0, 1))
    apart = bench_grouped.features(inputs, stacks).numpy()
    grouped = bench_grouped.features(inputs, [bench_grouped.grouped_stack(stacks)])
    assert apart.shape == (2, widths[-1] * members)
    np.testing.assert_allclose(grouped.numpy(), apart, rtol=1e-5, atol=1e-6)
    # Each member's features are its own: another member's kernels change only its part.
    stacks[1][0][0].assign(stacks[1][0][0] * 2.0)
    changed = bench_grouped.features(inputs, stacks).numpy() != apart
    assert not changed[:, :8].any() and changed[:, 8:16].any()
    assert not changed[:, 16:].any()
