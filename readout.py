"""What a saved model answers: its file loaded safely, the test-time views of a face, the
widening of the ages, and one function from images to ages that evaluate, predict, the
page and export all use.

    model = readout.load_model("runs/default/model.keras")
    ages = readout.read_ages(model, images, tta=True, widening=model.age_widening)

A face's age is read out as the mean of the ages the model predicts for its views (the face
as it is and zoomed in on its centre, each also mirrored: test-time augmentation, TTA),
then widened away from the middle ages by the model's saved `age_widening`
(EXPERIMENTS.md says why, and what it trades).
"""

import argparse
import weakref
import zipfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from model import ages_from_outputs, model_head, model_inputs

# Test-time augmentation predicts each face as it is and zoomed in on its centre, by the
# ends and the middle of the training augmentation's zooms (crops of 88-100 % of the side),
# each view also mirrored, and averages the six ages. The three zooms were chosen on the
# validation faces (bench/bench_readout.py); a run's metrics.json records the zooms it used.
TTA_ZOOMS = (1.0, 0.94, 0.88)

# ---------------------------------------------------------------------------------------
# Loading a model file
# ---------------------------------------------------------------------------------------


def load_model(path):
    """The age model saved in `path`, loaded in Keras' safe mode (a file that asks to run
    code is refused), or ValueError / FileNotFoundError with one line naming the file.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: no such file (a model.keras that train wrote)"
        )
    if path.is_dir() or path.suffix != ".keras" or not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path}: not a Keras model file (a model.keras that train wrote)"
        )
    _check_members(path)
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as error:  # Keras raises many kinds for a damaged or hostile file.
        reason = " ".join(str(error).split())[:300]
        raise ValueError(f"{path}: not a readable Keras model ({reason})") from None
    if not isinstance(getattr(model, "image_size", None), int):
        raise ValueError(
            f"{path}: a Keras model of another kind ({type(model).__name__}), not an age "
            "model that train wrote (CourseCNN or AgeCNN)"
        )
    return model


def _check_members(path):
    """Refuse (ValueError) a model file whose archive names a path outside itself."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as error:
        raise ValueError(f"{path}: not a readable Keras model ({error})") from None
    for name in names:
        parts = Path(name.replace("\\", "/")).parts
        if name.startswith(("/", "\\")) or ".." in parts or ":" in name:
            raise ValueError(
                f"{path}: not a model file train wrote (it holds a member named "
                f"{name!r}, outside the file)"
            )


# ---------------------------------------------------------------------------------------
# The views of test-time augmentation
# ---------------------------------------------------------------------------------------


def tta_zooms(tta):
    """The zooms of test-time augmentation `tta`: () for False (one image per face),
    TTA_ZOOMS for True, or `tta` itself, a sequence of fractions of the side (1.0: the
    whole image), each view predicted as it is and mirrored."""
    if tta is True:
        return TTA_ZOOMS
    zooms = tuple(float(zoom) for zoom in tta or ())
    if any(not 0.0 < zoom <= 1.0 for zoom in zooms):
        raise ValueError(f"test-time zooms must lie in (0, 1], got {zooms}")
    return zooms


def zoom_matrix(size, side):
    """(size, size) float32 weights that zoom one axis in on the centre as crop_and_resize
    does: the output's pixels sample the central `side` fraction of the input bilinearly.
    """
    start = (1.0 - side) / 2 * (size - 1)
    # Where each output pixel samples the input, as crop_and_resize places its samples.
    where = start + np.arange(size) * side if size > 1 else np.array([start])
    below = np.clip(np.floor(where).astype(int), 0, size - 1)
    above = np.minimum(below + 1, size - 1)
    fraction = where - below
    weights = np.zeros((size, size), np.float32)
    np.add.at(weights, (np.arange(size), below), 1.0 - fraction)
    np.add.at(weights, (np.arange(size), above), fraction)
    return weights


def zoom_centre(images, side):
    """A float batch (n, size, size, channels) zoomed in on its centre: the middle `side`
    fraction of each side, resized back to `size` (as augmentation.augment_batch's crops are,
    so the views look like training images). Written as two matrix products, which every
    converter (TFLite among them) supports."""
    if side == 1.0:
        return images
    size = images.shape[1]
    if size is None or images.shape[2] != size:
        raise ValueError(
            f"zoom_centre needs square images of a known size, got {images.shape}"
        )
    weights = keras.ops.convert_to_tensor(zoom_matrix(size, side), dtype=images.dtype)
    planes = keras.ops.transpose(images, (0, 3, 1, 2))  # (n, channels, size, size)
    planes = keras.ops.matmul(weights, planes)  # the rows zoomed
    planes = keras.ops.matmul(planes, keras.ops.transpose(weights))  # and the columns
    return keras.ops.transpose(planes, (0, 2, 3, 1))  # (n, size, size, channels)


def _with_images(inputs, change):
    """The same model inputs with change(images) for their images."""
    if isinstance(inputs, dict):
        return {**inputs, "image": change(inputs["image"])}
    return change(inputs)


def tta_views(inputs, tta):
    """The views of the inputs that test-time augmentation `tta` averages (see tta_zooms):
    [inputs] without it."""
    views = []
    for zoom in tta_zooms(tta) or (1.0,):
        zoomed = _with_images(inputs, lambda images: zoom_centre(images, zoom))
        mirrored = _with_images(zoomed, lambda images: keras.ops.flip(images, axis=2))
        views += [zoomed, mirrored] if tta else [zoomed]
    return views


# ---------------------------------------------------------------------------------------
# The widening
# ---------------------------------------------------------------------------------------


def widen_ages(ages, widening):
    """The ages moved away from the centre of `widening`, (centre, factor below it, factor
    above it), each side by its own factor, and kept at 0 or above:
    max(0, centre + factor * (age - centre)). `ages` as they are for None. For NumPy
    arrays and tensors alike."""
    if widening is None:
        return ages
    centre, below, above = widening
    if isinstance(ages, np.ndarray):
        factor = np.where(ages < centre, below, above)
        return np.maximum(centre + factor * (ages - centre), 0.0).astype(ages.dtype)
    factor = keras.ops.where(
        ages < centre,
        keras.ops.cast(below, ages.dtype),
        keras.ops.cast(above, ages.dtype),
    )
    return keras.ops.maximum(centre + factor * (ages - centre), 0.0)


# ---------------------------------------------------------------------------------------
# From images to ages
# ---------------------------------------------------------------------------------------


def read_ages(model, inputs, tta=False, widening=None):
    """Ages (batch, 1) of model inputs (float images in [0, 1] of the model's size, with
    gender and race for a model that takes them): the mean of the ages of their views
    (tta_views), widened by `widening` (widen_ages). Symbolic or eager alike."""
    ages = [
        ages_from_outputs(model_head(model), model(view, training=False))
        for view in tta_views(inputs, tta)
    ]
    total = ages[0]
    for more in ages[1:]:
        total = total + more
    return widen_ages(total / len(ages), widening)


# The compiled readers of each live model, so that repeated predictions trace once.
_readers = weakref.WeakKeyDictionary()


def age_reader(model, tta=False, widening=None):
    """read_ages of `model` with these views and widening, compiled into a TensorFlow graph
    (once per model, views and widening)."""
    zooms = tta_zooms(tta)
    widening = None if widening is None else tuple(widening)
    key = (zooms, widening)
    compiled = _readers.setdefault(model, {})
    if key not in compiled:

        @tf.function  # A def, not a lambda: autograph cannot read a lambda's source here.
        def read(inputs):
            return read_ages(model, inputs, zooms, widening)

        compiled[key] = read
    return compiled[key]


def area_matrix(size, side):
    """(size, side) float32 weights that resize one axis of `side` pixels to `size` as
    tf.image.resize(method="area") does: each output pixel the mean of the input pixels
    under it, a pixel partly under it counting by the part."""
    weights = np.zeros((size, side), np.float64)
    scale = side / size
    for row in range(size):
        low, high = row * scale, (row + 1) * scale
        for column in range(int(np.floor(low)), min(side, int(np.ceil(high)))):
            weights[row, column] = min(high, column + 1) - max(low, column)
    return (weights / scale).astype(np.float32)


def resized_as_predict(images, size):
    """uint8 face crops (n, side, side, 3) of a known side, as floats (n, size, size, 3)
    resized as utk_data.resize_square resizes them (by area, rounded to whole levels),
    written as two matrix products, which every converter supports."""
    side = images.shape[1]
    if side == size:
        return keras.ops.cast(images, "float32")
    weights = keras.ops.convert_to_tensor(area_matrix(size, side))
    planes = keras.ops.transpose(keras.ops.cast(images, "float32"), (0, 3, 1, 2))
    planes = keras.ops.matmul(weights, planes)  # (n, 3, size, side): the rows
    planes = keras.ops.matmul(planes, keras.ops.transpose(weights))  # and the columns
    return keras.ops.round(keras.ops.transpose(planes, (0, 2, 3, 1)))


class _Readout(keras.layers.Layer):
    """read_ages of uint8 face crops, as one layer: its constants (the zooms' and the
    resize's weights) are made inside its call, so an exported graph holds them."""

    def __init__(self, model, tta, widening, **kwargs):
        super().__init__(**kwargs)
        self.model, self.tta, self.widening = model, tta, widening

    def call(self, images):
        scaled = resized_as_predict(images, self.model.image_size) / 255.0
        inputs = model_inputs(self.model, scaled)
        ages = read_ages(self.model, inputs, self.tta, self.widening)  # (n, 1)
        return keras.ops.reshape(ages, (-1,))


def serving_model(model, tta=True, widening=None, crop_size=None):
    """A Keras model from uint8 RGB face crops (n, side, side, 3) to their ages (n,):
    resized as `predict` resizes them (side: crop_size, or the model's own size by
    default), scaled as in training, gender and race "unknown" for a model that takes
    them, then read_ages."""
    side = crop_size or model.image_size
    images = keras.Input((side, side, 3), dtype="uint8", name="images")
    ages = _Readout(model, tta, widening, name="readout")(images)
    return keras.Model(images, ages, name="age_server")


# ---------------------------------------------------------------------------------------
# The flags of the commands that read out a model
# ---------------------------------------------------------------------------------------


def _zoom(text):
    """A --tta-zooms value: a fraction of the side in (0, 1]."""
    try:
        zoom = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 < zoom <= 1.0:
        raise argparse.ArgumentTypeError(f"must lie in (0, 1], got {text}")
    return zoom


def add_tta_argument(parser):
    """The `--tta/--no-tta` switch of the commands that predict (on by default) and the
    `--tta-zooms` of its views; read them with tta_from_arguments."""
    parser.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="average each face's age over its views: as it is and zoomed in on its "
        "centre, each also mirrored (default: on)",
    )
    parser.add_argument(
        "--tta-zooms",
        type=_zoom,
        nargs="+",
        default=TTA_ZOOMS,
        metavar="FRACTION",
        help="the views' zooms, the fraction of the side kept around the centre "
        f"(default: {' '.join(map(str, TTA_ZOOMS))}; 1.0 alone: the mirror image only)",
    )


def tta_from_arguments(arguments):
    """The `tta` of read_ages and its kin that add_tta_argument's flags ask for."""
    return tta_zooms(arguments.tta_zooms) if arguments.tta else False
