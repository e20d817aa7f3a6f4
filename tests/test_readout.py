"""readout.py: what a saved model answers (the views, the widening, the loader)."""

import numpy as np
import pytest
import tensorflow as tf

import readout


def test_a_zoom_on_the_centre_is_the_crop_the_augmentation_makes():
    for size, side in ((32, 0.94), (32, 0.88), (17, 0.5), (96, 0.94)):
        images = tf.random.stateless_uniform((2, size, size, 3), seed=(size, 1))
        margin = (1.0 - side) / 2
        box = tf.constant([[margin, margin, margin + side, margin + side]] * 2)
        cropped = tf.image.crop_and_resize(images, box, tf.range(2), (size, size))
        zoomed = readout.zoom_centre(images, side)
        np.testing.assert_allclose(zoomed.numpy(), cropped.numpy(), atol=1e-4)
    assert readout.zoom_centre(images, 1.0) is images
    with pytest.raises(ValueError, match="square images"):
        readout.zoom_centre(tf.zeros((1, 8, 9, 3)), 0.9)
