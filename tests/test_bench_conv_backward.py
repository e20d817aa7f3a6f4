"""bench/bench_conv_backward.py: a kernel's gradient from the input's patches is the tape's."""

import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import bench_conv_backward  # noqa: E402


def test_a_member_has_its_stem_and_two_convolutions_a_stage():
    layers = bench_conv_backward.member_layers(96, (16, 32, 80, 160), 2)
    assert layers[0] == (96, 3, 16, 3, 2)
    assert [side for side, *_ in layers] == [96, 48, 24, 24, 12, 12, 6, 6, 3]
    assert [stride for *_, stride in layers] == [2, 2, 1, 2, 1, 2, 1, 2, 1]
    assert layers[-1] == (3, 160, 160, 3, 1)


@pytest.mark.parametrize("side, stride, kernel_side", [(8, 1, 3), (8, 2, 3), (7, 2, 3)])
def test_the_patches_give_the_tapes_kernel_gradient(side, stride, kernel_side):
    inputs = tf.random.stateless_normal((2, side, side, 3), (0, 1))
    kernel = tf.random.stateless_normal((kernel_side, kernel_side, 3, 5), (0, 2))
    out = -(-side // stride)
    output_gradient = tf.random.stateless_normal((2, out, out, 5), (0, 3))
    with tf.GradientTape() as tape:
        tape.watch(kernel)
        outputs = tf.nn.conv2d(inputs, kernel, stride, "SAME")
        loss = tf.reduce_sum(outputs * output_gradient)
    expected = tape.gradient(loss, kernel).numpy()
    for way in (
        bench_conv_backward.kernel_gradient_by_patches,
        bench_conv_backward.kernel_gradient_by_tensorflow,
    ):
        found = way(inputs, output_gradient, kernel_side, stride).numpy()
        np.testing.assert_allclose(found, expected, rtol=1e-4, atol=1e-4)


def test_the_benchmark_times_the_three_ways(capsys):
    bench_conv_backward.main(["--rounds", "1", "--steps", "1", "--batch", "2"])
    out = capsys.readouterr().out
    for way in ("forward", "tensorflow", "patches"):
        assert f"\n{way} " in out
    assert "patches against tensorflow" in out and "x the time" in out
