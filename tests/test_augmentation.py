"""Tests of the training augmentation: frames, turns, tones, and the settings' defaults."""

import numpy as np
import tensorflow as tf

import augmentation
from augmentation import Augmentation, augment_batch


def test_frames_larger_than_the_image_show_it_smaller_with_a_mirrored_border():
    # A ramp from left to right (the brightness and contrast keep it one: they scale it
    # by a positive factor, and clip nothing here).
    size, batch = 40, 64
    ramp = np.broadcast_to(
        np.linspace(0.35, 0.65, size, dtype=np.float32), (size, size)
    )
    images = tf.constant(np.stack([ramp] * 3, axis=-1)[None].repeat(batch, axis=0))
    seed = tf.constant([3, 4], tf.int64)
    # 1.0 is the augmentation as it was: crops inside the image.
    crops = augment_batch(images, seed).numpy()
    np.testing.assert_array_equal(
        crops, augment_batch(images, seed, Augmentation(largest_frame=1.0)).numpy()
    )
    larger = augment_batch(images, seed, Augmentation(largest_frame=1.4)).numpy()

    def turns(batch):
        """Whether each image's middle row rises and falls: a mirrored border."""
        steps = np.diff(batch[:, size // 2, :, 0], axis=1)
        return (steps > 1e-4).any(axis=1) & (steps < -1e-4).any(axis=1)

    # The frames' sides, drawn as augment_batch draws them.
    sides = tf.random.stateless_uniform(
        [batch], tf.random.experimental.stateless_split(seed, 6)[1], 0.88, 1.4
    ).numpy()
    assert not turns(crops).any()
    assert (turns(larger) <= (sides > 1.0)).all()  # only frames larger than the image
    assert turns(larger)[sides > 1.05].all()  # and every one clearly larger
    assert 0.6 < (sides > 1.05).mean() < 0.9
    # Mirrored, not black: no pixel darker than the ramp's darkest could become.
    assert larger.min() > 0.02 and larger.max() <= 1.0


def _flipped_first(images, seed, settings, size=None):
    """augment_batch's frames as they were made: each image drawn for a flip reversed,
    then framed by its box (the same draws)."""
    batch = images.shape[0]
    uniform = augmentation._uniform(
        tf.random.experimental.stateless_split(seed, 6), batch
    )
    flip = uniform(0, 0.0, 1.0) < 0.5
    images = tf.where(flip[:, None, None, None], tf.reverse(images, axis=[2]), images)
    side = uniform(1, 0.88, settings.largest_frame)
    if size is not None:
        side = side * (size / images.shape[1])
    top = uniform(2, 0.0, 1.0) * (1.0 - side)
    left = uniform(3, 0.0, 1.0) * (1.0 - side)
    boxes = tf.stack([top, left, top + side, left + side], axis=1)
    return augmentation._framed(images, boxes, settings.largest_frame, size)


def test_a_flipped_face_is_framed_as_if_reversed_first():
    rng = np.random.default_rng(2)
    images = tf.constant(rng.uniform(0.3, 0.7, (32, 24, 24, 3)).astype(np.float32))
    seed = tf.constant([5, 6], tf.int64)
    for settings, size in (
        (Augmentation(), None),
        (Augmentation(largest_frame=1.3), None),
        (Augmentation(), 16),
    ):
        draw = augmentation._uniform(
            tf.random.experimental.stateless_split(seed, 6), 32
        )  # the brightness and contrast, drawn as augment_batch draws them
        brightness = draw(4, -0.1, 0.1)[:, None, None, None]
        contrast = draw(5, 0.8, 1.2)[:, None, None, None]
        expected = _flipped_first(images, seed, settings, size)
        mean = tf.reduce_mean(expected, axis=[1, 2, 3], keepdims=True)
        expected = tf.clip_by_value(
            (expected - mean) * contrast + mean + brightness, 0, 1
        )
        found = augment_batch(images, seed, settings, size)
        np.testing.assert_allclose(found.numpy(), expected.numpy(), atol=1e-5)
    # Both ways held: some faces of the batch are flipped and some are not.
    flips = draw(0, 0.0, 1.0).numpy() < 0.5
    assert 0 < flips.sum() < 32


def test_turned_frames_are_the_crops_turned_about_their_centre():
    rng = np.random.default_rng(0)
    images = tf.constant(rng.uniform(0.5, 1.0, (6, 24, 24, 3)).astype(np.float32))
    seed = tf.constant([3, 4], tf.int64)
    # Turned by almost nothing, the frames are the crops (one bilinear resampling each),
    # and the draws without the turn are those of a run without it.
    crops = augment_batch(images, seed).numpy()
    barely = augment_batch(images, seed, Augmentation(rotation=1e-4)).numpy()
    np.testing.assert_allclose(barely, crops, atol=1e-4)
    turned = augment_batch(images, seed, Augmentation(rotation=30.0)).numpy()
    assert np.abs(turned - crops).mean() > 0.02
    # The whole image turned a quarter: numpy's rot90 (the turn's sign and centre).
    whole = tf.constant([[0.0, 0.0, 1.0, 1.0]] * 6)
    quarter = augmentation._turned_frames(
        images, whole, tf.fill([6], np.pi / 2)
    ).numpy()
    np.testing.assert_allclose(
        quarter, np.rot90(images.numpy(), 1, axes=(1, 2)), atol=1e-5
    )
    # A frame turned and larger than the image: its corners mirrored, never black.
    larger = tf.constant([[-0.2, -0.2, 1.2, 1.2]] * 6)
    wide = augmentation._turned_frames(images, larger, tf.fill([6], 0.6)).numpy()
    assert wide.min() >= 0.5 - 1e-6 and wide.max() <= 1.0 + 1e-6


def test_erasing_fills_one_rectangle_of_some_faces_with_noise():
    size, batch = 32, 200
    images = tf.fill((batch, size, size, 3), 0.5)
    seed = tf.constant([3, 4], tf.int64)
    plain = augment_batch(images, seed).numpy()
    erased = augment_batch(images, seed, Augmentation(erasing=0.5)).numpy()
    changed = (np.abs(erased - plain) > 1e-6).any(axis=-1)  # (batch, size, size)
    hit = changed.any(axis=(1, 2))
    assert 0.35 < hit.mean() < 0.65  # about half the faces, the others untouched
    for mask in changed[hit]:
        rows, columns = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
        # One rectangle: every pixel between its first and last row and column is noise
        # (but for the few that noise happens to leave near their value).
        box = mask[rows[0] : rows[-1] + 1, columns[0] : columns[-1] + 1]
        assert box.mean() > 0.95
        assert 0.01 < box.size / size**2 < 0.45
    # Its own seed: the frames, flips and colours of the faces not erased are unchanged.
    np.testing.assert_array_equal(erased[~hit], plain[~hit])
    assert erased.min() >= 0.0 and erased.max() <= 1.0


def test_each_tone_operation_changes_the_chosen_faces_alone():
    images = tf.random.stateless_uniform((2, 16, 16, 3), (5, 6), 0.2, 0.7)
    chosen = tf.constant([1.0, 0.0])[:, None, None, None]
    full = tf.fill((2, 1, 1, 1), 1.0)  # the largest amount, magnitude 1
    least = -full

    def run(operation, amounts):
        changed = operation(images, amounts, chosen).numpy()
        # The face that did not choose the operation keeps its tones.
        np.testing.assert_allclose(changed[1], images[1].numpy(), atol=1e-6)
        return changed[0]

    stretched = run(augmentation._autocontrast, full)
    np.testing.assert_allclose(stretched.min(axis=(0, 1)), 0.0, atol=1e-6)
    np.testing.assert_allclose(stretched.max(axis=(0, 1)), 1.0, atol=1e-6)
    # The amount 1 sets the threshold to 0: every value inverted.
    np.testing.assert_allclose(
        run(augmentation._solarized, full), 1.0 - images[0].numpy(), atol=1e-6
    )
    # The amount 1 clears four bits: 16 levels.
    levels = run(augmentation._posterized, full) * 255.0 / 16.0
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-3)
    grey = run(augmentation._coloured, least)  # no colour left
    np.testing.assert_allclose(grey[..., 0], grey[..., 2], atol=1e-6)
    assert np.abs(images[0, ..., 0] - images[0, ..., 2]).max() > 0.1
    blurred = run(augmentation._sharpened, least)  # the smoothed face
    assert (
        np.abs(np.diff(blurred, axis=0)).mean()
        < 0.6 * np.abs(np.diff(images[0].numpy(), axis=0)).mean()
    )
    # A flat face has nothing to sharpen.
    flat = tf.fill((1, 8, 8, 3), 0.4)
    np.testing.assert_allclose(
        augmentation._sharpened(flat, full[:1], chosen[:1]).numpy(), 0.4, atol=1e-6
    )


def test_rand_augment_tones_each_face_on_its_own_as_its_seed_says():
    size, batch = 24, 300
    images = tf.random.stateless_uniform((batch, size, size, 3), (7, 8), 0.1, 0.9)
    seed = tf.constant([3, 4], tf.int64)
    toned = augmentation._rand_augmented(images, seed, 0.5).numpy()
    np.testing.assert_array_equal(
        toned, augmentation._rand_augmented(images, seed, 0.5).numpy()
    )
    assert toned.min() >= 0.0 and toned.max() <= 1.0
    other = augmentation._rand_augmented(images, tf.constant([3, 5], tf.int64), 0.5)
    assert not np.allclose(toned, other.numpy())
    # The identity (or a solarize or posterize too weak to change a value) twice in a
    # row: a few faces keep their tones (about 1 in 17); the others change.
    kept = np.abs(toned - images.numpy()).max(axis=(1, 2, 3)) < 1e-5
    assert 0 < kept.sum() < 0.1 * batch
    # In augment_batch, the frames and flips are those without it (its own seed).
    ramp = np.linspace(0.2, 0.8, size, dtype=np.float32)
    ramps = tf.constant(
        np.broadcast_to(ramp[None, None, :, None], (batch, size, size, 3))
    )
    plain = augment_batch(ramps, seed).numpy()
    with_tones = augment_batch(ramps, seed, Augmentation(rand_augment=0.5)).numpy()
    rising = np.diff(plain[:, size // 2, :, 0], axis=1).mean(axis=1) > 0
    assert 0.3 < rising.mean() < 0.7  # flipped or not at random
    # Solarizing may invert part of a face; its darkest and brightest ends stay where
    # the flip put them on most faces.
    toned_rising = with_tones[:, size // 2, -1, 0] > with_tones[:, size // 2, 0, 0]
    assert (toned_rising == rising).mean() > 0.8


def test_a_config_gives_its_augmentation_or_none():
    import config

    settings = dict(
        out="unused", preset="cpu", largest_frame=1.1, rotation=5.0, erasing=0.25,
        rand_augment=0.4,
    )  # fmt: skip
    resolved = config.resolve_config(config.TrainConfig(**settings))
    assert resolved.augmentation == Augmentation(1.1, 5.0, 0.25, rand_augment=0.4)
    off = config.resolve_config(config.TrainConfig(**settings, augment=False))
    assert off.augmentation is None
    course = config.resolve_config(config.TrainConfig(out="unused", arch="course_cnn"))
    assert course.augmentation is None  # the course trains on the faces as they are


def test_smaller_images_show_the_same_frames_resized():
    # A smooth picture, so that resizing hardly changes it: a frame drawn at a smaller
    # size must be the full-size frame, resized, whatever the framing.
    side, small = 48, 32
    rows, columns = np.mgrid[0:side, 0:side] / (side - 1)
    picture = np.stack([columns, rows, columns * rows], axis=-1) * 255
    images = tf.constant(picture[None].repeat(8, axis=0).astype(np.uint8))
    seed = tf.constant([5, 6], tf.int64)
    for settings in (
        Augmentation(),
        Augmentation(largest_frame=1.2),
        Augmentation(rotation=15.0),
        None,
    ):
        full = augmentation.prepare_batch(images, seed, settings)
        smaller = augmentation.prepare_batch(images, seed, settings, small, "resized")
        assert smaller.shape == (8, small, small, 3)
        resized = tf.image.resize(full, [small, small])
        assert np.abs(resized - smaller).max() < 0.02, settings
        # Their own side is no resizing at all.
        same = augmentation.prepare_batch(images, seed, settings, side, "resized")
        np.testing.assert_array_equal(same, full)
    # Frames that differ from image to image: the check above compares unlike frames
    # unless the draws are the same at both sizes.
    framed = augmentation.prepare_batch(images, seed, Augmentation())
    assert np.abs(framed[0] - framed[1]).max() > 0.05


def test_cropped_smaller_images_keep_the_faces_scale():
    # A ramp from left to right: its step from pixel to pixel is the scale at which a
    # view shows the picture (each image's contrast scales it alike in every view).
    side, small = 48, 32
    ramp = np.broadcast_to(np.linspace(0, 255, side), (side, side))
    images = tf.constant(
        np.stack([ramp] * 3, axis=-1)[None].repeat(16, axis=0).astype(np.uint8)
    )
    seed = tf.constant([7, 8], tf.int64)
    settings = Augmentation()

    def steps(view, size=None):
        batch = augmentation.prepare_batch(images, seed, settings, size, view).numpy()
        middle = batch[:, batch.shape[1] // 2, 4:-4, 0]  # clear of clipped ends
        return np.abs(np.diff(middle, axis=1)).mean(axis=1)

    full = steps("resized")
    # Cropped: the same scale as at full size, the frame size / side as large (the
    # pixel grid's ends make the ratio (side - 1) / side * small / (small - 1)).
    grid = (side - 1) / side * small / (small - 1)
    np.testing.assert_allclose(steps("cropped", small) / full, grid, rtol=0.02)
    # Resized: the face side / small times smaller.
    resized = steps("resized", small) / full
    np.testing.assert_allclose(resized, (side - 1) / (small - 1), rtol=0.02)
    # Without an augmentation, the middle of the image.
    middle = augmentation.prepare_batch(images, seed, None, small, "cropped")
    offset = (side - small) // 2
    np.testing.assert_array_equal(
        middle, images[:, offset : offset + small, offset : offset + small] / 255
    )
