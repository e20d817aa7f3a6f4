"""The training augmentation: each face flipped, framed anew, turned, toned (RandAugment's
colour operations), brightened, contrasted and partly erased at random, all of a batch at
once, as a stateless seed says.

    settings = Augmentation(largest_frame=1.15)      # the training run's settings
    images = prepare_batch(uint8_batch, seed, settings)   # float32 in [0, 1], augmented
    images = prepare_batch(uint8_batch, seed, None)       # float32 in [0, 1] only

The train step prepares its raw uint8 batches where the model runs (see
`utk_data.make_dataset(raw=True)`); a dataset that is not raw prepares them in `tf.data`,
to the same images.
"""

import math
from typing import NamedTuple

import tensorflow as tf


class Augmentation(NamedTuple):
    """How the training faces are augmented (see `augment_batch`)."""

    # The largest frame, times the image's side: 1.0 only crops inside the image (0.88 to
    # 1.0 times its side); above 1.0 some frames show the face smaller, as a face found in
    # a photo may be framed.
    largest_frame: float = 1.0
    # The largest turn of a frame about its centre, in degrees either way (0: none).
    rotation: float = 0.0
    # The chance that a rectangle of a face is replaced by noise (random erasing; 0: none).
    erasing: float = 0.0
    # The magnitude, from 0 to 1, of the two RandAugment operations on each face's tones
    # and colours (`_rand_augmented`; 0: none).
    rand_augment: float = 0.0


# How a smaller training image shows a face (progressive resizing's first epochs): the
# whole frame resized, the face smaller; or a part of the frame, the face at its scale.
VIEWS = ("resized", "cropped")


def prepare_batch(images, seed, augmentation=None, size=None, view="cropped"):
    """uint8 images (batch, side, side, 3) as the model takes them: float32 in [0, 1] and,
    with an `augmentation` (an Augmentation), augmented as the stateless `seed` (2,) says.
    With a `size`, (batch, size, size, 3) as `view` says: "resized", each face framed as
    at its own side, then resized; "cropped", a frame size / side as large (without an
    augmentation, the middle), so that the face keeps its scale in pixels."""
    images = tf.cast(images, tf.float32) / 255.0  # (batch, side, side, 3)
    if size == images.shape[1]:
        size = None
    if augmentation is None:
        if size is None:
            return images
        if view == "cropped":
            return tf.image.resize_with_crop_or_pad(images, size, size)
        return tf.image.resize(images, [size, size])
    return augment_batch(images, seed, augmentation, size, view)


def augment_batch(images, seed, augmentation=Augmentation(), size=None, view="cropped"):
    """Randomly flip, frame, turn, brighten, contrast and erase a float batch in [0, 1]:
    images of their own side or, with a `size`, of that side, as `view` says (the frames
    resized, or frames size / side as large, see `prepare_batch`).

    Each image is framed anew by a square from 88 % of its side up to
    `augmentation.largest_frame` times its side, anywhere inside the image or, larger than
    it, anywhere that holds the whole image: such a frame shows the face smaller, the
    border filled with the image mirrored. With `augmentation.rotation` (degrees), each
    frame is also turned about its centre by an angle drawn from [-rotation, rotation];
    where a turned frame reaches past the image, the image is mirrored. With
    `augmentation.erasing`, a rectangle of each face is replaced by noise with that chance
    (`_erased`); with `augmentation.rand_augment`, each framed face has two operations on
    its tones and colours (`_rand_augmented`) before its brightness and contrast."""
    largest_frame, rotation = augmentation.largest_frame, augmentation.rotation
    batch = tf.shape(images)[0]
    uniform = _uniform(tf.random.experimental.stateless_split(seed, 6), batch)
    flip = uniform(0, 0.0, 1.0) < 0.5
    # A small zoom and shift of the aligned face (of the face flipped, where `flip`
    # says), without black borders.
    side = uniform(1, 0.88, largest_frame)
    if size is not None and view == "cropped":
        side = side * (size / images.shape[1])
    top = uniform(2, 0.0, 1.0) * (1.0 - side)
    left = uniform(3, 0.0, 1.0) * (1.0 - side)
    if rotation > 0.0:
        images = tf.where(
            flip[:, None, None, None], tf.reverse(images, axis=[2]), images
        )
        boxes = tf.stack([top, left, top + side, left + side], axis=1)
        # Its own seed, so that the other draws stay those of a run without rotation.
        rotation_seed = tf.random.experimental.stateless_fold_in(seed, 6)
        degrees = tf.random.stateless_uniform(
            [batch], rotation_seed, -rotation, rotation
        )
        images = _turned_frames(images, boxes, degrees * (math.pi / 180.0), size)
    else:
        # The frame of the flipped face is the mirror image's frame read from right to
        # left (crop_and_resize flips a box whose left lies right of its right): the
        # same pixels as reversing the image first, without a pass over the batch.
        start = tf.where(flip, 1.0 - left, left)
        end = tf.where(flip, 1.0 - left - side, left + side)
        boxes = tf.stack([top, start, top + side, end], axis=1)
        images = _framed(images, boxes, largest_frame, size)
    if augmentation.rand_augment > 0.0:
        # Its own seed too, as the rotation's.
        rand_augment_seed = tf.random.experimental.stateless_fold_in(seed, 8)
        images = _rand_augmented(images, rand_augment_seed, augmentation.rand_augment)
    brightness = uniform(4, -0.1, 0.1)[:, None, None, None]
    contrast = uniform(5, 0.8, 1.2)[:, None, None, None]
    mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
    images = (images - mean) * contrast + mean + brightness
    images = tf.clip_by_value(images, 0.0, 1.0)
    if augmentation.erasing > 0.0:
        # Its own seed too, as the rotation's.
        erasing_seed = tf.random.experimental.stateless_fold_in(seed, 7)
        images = _erased(images, erasing_seed, augmentation.erasing)
    return images


def _uniform(seeds, batch):
    """draw(index, low, high): `batch` numbers drawn uniformly from [low, high) with the
    stateless seed `seeds[index]`."""
    return lambda index, low, high: tf.random.stateless_uniform(
        [batch], seeds[index], low, high
    )


# RandAugment's operations on tones and colours (the geometric ones are the frames and
# turns; brightness and contrast come after, for every face). Each takes images in [0, 1],
# the amounts drawn for them (batch, 1, 1, 1), from -magnitude to magnitude, and `chosen`
# (batch, 1, 1, 1), 1 for the images it changes and 0 for those it leaves as they are.


def _autocontrast(images, amounts, chosen):
    """Each channel of a chosen image stretched to the whole range [0, 1] (a flat one
    kept)."""
    low = tf.reduce_min(images, axis=[1, 2], keepdims=True)
    high = tf.reduce_max(images, axis=[1, 2], keepdims=True)
    chosen = chosen * tf.cast(high > low, tf.float32)
    stretch = 1.0 + chosen * (1.0 / tf.maximum(high - low, 1e-6) - 1.0)
    return (images - chosen * low) * stretch


def _solarized(images, amounts, chosen):
    """The values above 1 − |amount| inverted."""
    threshold = 1.0 - tf.abs(amounts) + 2.0 * (1.0 - chosen)  # above 1 unchosen
    return images + tf.cast(images > threshold, tf.float32) * (1.0 - 2.0 * images)


def _posterized(images, amounts, chosen):
    """Each 8-bit value with its last round(4 × |amount|) bits cleared."""
    step = tf.pow(2.0, tf.round(4.0 * tf.abs(amounts)) * chosen)
    posterized = tf.floor(tf.round(images * 255.0) / step) * step / 255.0
    return images + chosen * (posterized - images)


def _coloured(images, amounts, chosen):
    """The colours' saturation times 1 + amount: greyer below 1, stronger above."""
    grey = tf.reduce_sum(
        images * tf.constant([0.2989, 0.587, 0.114]), -1, keepdims=True
    )
    return grey + (1.0 + chosen * amounts) * (images - grey)


def _sharpened(images, amounts, chosen):
    """The image moved from its smoothed self (PIL's smoothing kernel: 5 at the centre, 1
    around it, over 13) by 1 + amount: blurred below 1, sharpened above."""
    # Each pixel plus its neighbours, down then across (the edges repeated).
    padded = tf.concat([images[:, :1], images, images[:, -1:]], axis=1)
    sums = padded[:, :-2] + padded[:, 1:-1] + padded[:, 2:]
    padded = tf.concat([sums[:, :, :1], sums, sums[:, :, -1:]], axis=2)
    sums = padded[:, :, :-2] + padded[:, :, 1:-1] + padded[:, :, 2:]
    smooth = (sums + 4.0 * images) / 13.0
    return smooth + (1.0 + chosen * amounts) * (images - smooth)


# The identity is the sixth choice: an image that draws it keeps its tones.
TONE_OPERATIONS = (_autocontrast, _solarized, _posterized, _coloured, _sharpened)


@tf.function(jit_compile=True)
def _rand_augmented(images, seed, magnitude, operations=2):
    """RandAugment's tone and colour operations (E. D. Cubuk, B. Zoph, J. Shlens, Q. V. Le,
    "RandAugment", CVPR Workshops 2020): each image, in turn `operations` times, gets the
    identity or one of TONE_OPERATIONS, drawn at random, by an amount drawn from
    -`magnitude` to `magnitude` (0 to 1). Every operation passes over the whole batch,
    changing only the images that chose it, and XLA fuses the passes into a few (a gather
    of each image's own result would copy the batch once an operation; EXPERIMENTS.md,
    "RandAugment's tones", has the cost)."""
    batch = tf.shape(images)[0]
    seeds = tf.random.experimental.stateless_split(seed, 2 * operations)
    shape = tf.stack([batch, 1, 1, 1])
    for turn in range(operations):
        choice = tf.random.stateless_uniform(
            shape, seeds[2 * turn], 0, len(TONE_OPERATIONS) + 1, dtype=tf.int32
        )
        amounts = magnitude * tf.random.stateless_uniform(
            shape, seeds[2 * turn + 1], -1.0, 1.0
        )
        for index, operation in enumerate(TONE_OPERATIONS):
            images = operation(images, amounts, tf.cast(choice == index, tf.float32))
        images = tf.clip_by_value(images, 0.0, 1.0)
    return images


def _erased(images, seed, chance):
    """Each image, with probability `chance`, with a rectangle of 2-40 % of its area,
    its sides in a ratio from 0.3 to 3.3, anywhere inside it, filled with uniform noise:
    random erasing (Z. Zhong, L. Zheng, G. Kang, S. Li, Y. Yang, "Random Erasing Data
    Augmentation", AAAI 2020), a face partly hidden, as by a hand or a shadow."""
    batch, height, width = tf.shape(images)[0], tf.shape(images)[1], tf.shape(images)[2]
    seeds = tf.random.experimental.stateless_split(seed, 6)
    uniform = _uniform(seeds, batch)
    area = uniform(0, 0.02, 0.4)
    ratio = tf.exp(uniform(1, math.log(0.3), math.log(1 / 0.3)))  # height / width
    tall = tf.minimum(tf.sqrt(area * ratio), 1.0)  # fractions of the image's sides
    wide = tf.minimum(tf.sqrt(area / ratio), 1.0)
    top = uniform(2, 0.0, 1.0) * (1.0 - tall)
    left = uniform(3, 0.0, 1.0) * (1.0 - wide)

    def inside(start, extent, pixels):
        """(batch, pixels): whether each pixel's centre lies in [start, start + extent)."""
        centres = (tf.range(pixels, dtype=tf.float32) + 0.5) / tf.cast(
            pixels, tf.float32
        )
        return (centres >= start[:, None]) & (centres < (start + extent)[:, None])

    erase = uniform(4, 0.0, 1.0) < chance
    mask = (
        inside(top, tall, height)[:, :, None]
        & inside(left, wide, width)[:, None, :]
        & erase[:, None, None]
    )  # (batch, height, width)
    noise = tf.random.stateless_uniform(tf.shape(images), seeds[5], dtype=images.dtype)
    return tf.where(mask[..., None], noise, images)


def _framed(images, boxes, largest_frame, size=None):
    """Each image's square frame `boxes` (top, left, bottom, right, fractions of its sides,
    as crop_and_resize takes them) resized to `size` (None: the image's size); frames up
    to `largest_frame` times the image reach into a border mirrored from the image."""
    output_size = tf.shape(images)[1:3] if size is None else [size, size]
    if largest_frame > 1.0:
        # The border, and the boxes moved to the same pixels of the padded image
        # (crop_and_resize puts a box's 0 and 1 on the first and last pixel).
        sizes = images.shape[1:3]
        pad = [math.ceil((largest_frame - 1.0) * size) for size in sizes]
        images = tf.pad(images, [[0, 0], *([p, p] for p in pad), [0, 0]], "REFLECT")
        last = tf.constant([size - 1 for size in sizes] * 2, tf.float32)
        padded_last = tf.constant(
            [size + 2 * p - 1 for size, p in zip(sizes, pad)] * 2, tf.float32
        )
        boxes = (boxes * last + tf.constant(pad * 2, tf.float32)) / padded_last
    return tf.image.crop_and_resize(
        images, boxes, tf.range(tf.shape(images)[0]), output_size
    )


def _turned_frames(images, boxes, angles, size=None):
    """Each image's square frame `boxes` (as `_framed` takes them), turned by `angles`
    (radians) about its centre, resampled to `size` (None: the image's size) in one
    bilinear pass; pixels outside the image are the image mirrored."""
    top, left, _, right = tf.unstack(boxes, axis=1)
    last = tf.cast(tf.shape(images)[1], tf.float32) - 1.0
    output_shape = tf.shape(images)[1:3] if size is None else tf.constant([size, size])
    output_last = tf.cast(output_shape[0], tf.float32) - 1.0
    side = right - left  # The frame's side, a fraction of the image's (square images).
    middle = output_last / 2.0
    # An output pixel (x, y) is read at the frame's centre plus its offset from the output's
    # centre, scaled by the frame's side (in the image's pixels) and turned by the angle.
    centre_x = (left + side / 2.0) * last
    centre_y = (top + side / 2.0) * last
    scale = side * last / output_last
    cos, sin = scale * tf.cos(angles), scale * tf.sin(angles)
    transforms = tf.stack(
        [
            cos, -sin, centre_x - (cos - sin) * middle,
            sin, cos, centre_y - (sin + cos) * middle,
            tf.zeros_like(cos), tf.zeros_like(cos),
        ],
        axis=1,
    )  # fmt: skip
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transforms,
        output_shape=output_shape,
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="REFLECT",
    )
