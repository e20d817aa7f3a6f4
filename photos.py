"""Ages of the faces in any photo: find each face, frame it as UTKFace frames its aligned
crops, and predict.

    python train_loop.py predict --model runs/default/model.keras photo.jpg my_faces/

    rows, skipped = photos.predict_paths(model, ["photo.jpg"], tta=True, crop="auto")
    picture = photos.predict_picture(model, open("photo.jpg", "rb").read(), tta=True)

OpenCV's Haar frontal-face detector (inside the opencv-python-headless wheel) finds the
faces and their eyes; a square placed from the box and the eyes, as measured on UTKFace's
own frames (`python bench/bench_framing.py`), is what the model sees. A picture that already
is a tight face crop, like UTKFace's, is taken as it is (`crop="auto"`). `predict_picture`
does the same in memory for the bytes of one picture (the page of serve.py). Each age comes
with what the model's own test run measured at that age (`error_table`, `age_notes`).
"""

import csv
import functools
import io
import math
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np
import tensorflow as tf

import runs
import utk_data
from evaluation import predict_ages
from readout import add_tta_argument, load_model, tta_from_arguments

# ---------------------------------------------------------------------------------------
# Reading photos
# ---------------------------------------------------------------------------------------


def read_photo(path):
    """An RGB uint8 array (height, width, 3) of an image file, EXIF rotation applied."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as image:
            return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    except Exception as error:
        raise ValueError(
            f"{path}: not a readable JPEG or PNG image ({error})"
        ) from error


def picture_size(path):
    """The (height, width) of an image file from its header, without decoding its pixels."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            width, height = image.size
    except Exception as error:
        raise ValueError(
            f"{path}: not a readable JPEG or PNG image ({error})"
        ) from error
    return height, width


def _orientation(path):
    """The EXIF orientation tag of an image file (1, upright, when it has none)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return int(image.getexif().get(0x0112, 1))
    except Exception as error:
        raise ValueError(
            f"{path}: not a readable JPEG or PNG image ({error})"
        ) from error


def read_images(paths, image_size):
    """Decode image files for prediction, in parallel, as the training images are decoded;
    a photo that its EXIF tag says to turn is read upright by `read_photo`.

    Returns float32 images (n, size, size, 3) in [0, 1], the n paths that decoded, and
    [(path, reason)] for the files that could not be read: a bad file is reported, never fatal.
    """
    readable, turned, failed = [], set(), []
    for path in map(str, paths):
        try:
            if _orientation(path) != 1:
                turned.add(path)
            readable.append(path)
        except ValueError as error:
            failed.append((path, str(error).split(": ", 1)[-1]))
    plain = [path for path in readable if path not in turned]
    images = {}
    if plain:
        # Decoded in full, as any other program decodes them: the exported models, fed
        # the same pixels, give the same ages.
        indices, decoded, missing = utk_data.decode_files(
            plain, image_size, scaled=False
        )
        images.update(zip((plain[index] for index in indices), decoded))
        failed += [
            (plain[index], "could not decode the image (corrupt data)")
            for index in missing
        ]
    for path in turned:
        images[path] = utk_data.resize_square(read_photo(path), image_size)
    readable = [path for path in readable if path in images]
    stacked = (
        tf.stack([images[path] for path in readable])
        if readable
        else (tf.zeros((0, image_size, image_size, 3), tf.uint8))
    )
    return tf.cast(stacked, tf.float32) / 255.0, readable, failed


# ---------------------------------------------------------------------------------------
# Finding a face and framing it as UTKFace's aligned crops are framed
# ---------------------------------------------------------------------------------------

# How the box of OpenCV's Haar frontal-face detector sits inside UTKFace's own 200x200
# frames: the frame's side over the box's side, and the frame's centre minus the box's
# centre, in box sides (x to the right, y down): the medians over the training faces it
# found, measured by `python bench/bench_framing.py` (EXPERIMENTS.md). UTKFace's frames
# are about the detector's box, moved down by a twelfth of it.
FRAME_SCALE = 0.995
FRAME_SHIFT = (0.007, 0.082)


# The same for the eyes found inside the box (OpenCV's eye cascade that also finds eyes
# behind glasses): the frame's side over the distance between the eyes' centres, and the
# frame's centre minus the eyes' midpoint, in eye distances. UTKFace aligned its faces by
# their landmarks, so the eyes say where the frame is as well as the box does, and their
# errors are only loosely related: the mean of the two estimates is closer than either.
EYE_SCALE = 2.50
EYE_SHIFT = (0.028, 0.518)
EYE_CASCADE = "haarcascade_eye_tree_eyeglasses.xml"


# The frame used is this much tighter than the measured one: of the zooms tried, it
# predicted the validation faces of the pictures test best (bench/bench_predict.py pictures
# --split val, EXPERIMENTS.md).
FRAME_ZOOM = 0.945

# A picture whose largest face box spans at least this much of its shorter side is already
# a tight face crop: in UTKFace's own frames the detector's boxes span most of the side
# (EXPERIMENTS.md).
TIGHT_CROP = 0.6

# Pictures this small and about square are taken as crops already: the detector misses
# about half of UTKFace's faces in their own tight frames.
SMALL_PICTURE = 256

# Frames around the estimated one, as (scale, downward shift in frame sides), within the
# spread of the measurement: averaging their predictions evens out a frame that sits off.
FRAME_VARIANTS = ((1.0, 0.0), (0.92, 0.0), (1.08, 0.0), (1.0, -0.03), (1.0, 0.03))


CASCADE = "haarcascade_frontalface_default.xml"


class Face(NamedTuple):
    """A face found in a picture: the detector's box, its eyes (when both were found) and
    the square framed around it as UTKFace frames its faces."""

    box: tuple  # (x, y, width, height) in pixels
    frame: tuple  # (x, y, side) in pixels; may reach outside the picture
    eyes: Optional[tuple] = None  # ((x, y) of the eye on the left, (x, y) on the right)


# A cascade classifier keeps its working buffers in itself while it searches (OpenCV's
# detectMultiScale is not const, opencv/opencv#4287), so threads must not share one: each
# thread loads its own, which takes about 20 ms.
_cascades = threading.local()


def _cascade(name):
    """This thread's OpenCV cascade classifier of the file `name`."""
    import cv2

    loaded = _cascades.__dict__
    if name not in loaded:
        loaded[name] = cv2.CascadeClassifier(cv2.data.haarcascades + name)
    return loaded[name]


def find_faces(image, use_eyes=True):
    """Frontal faces in an RGB uint8 image, largest first, each framed as UTKFace's (from
    its box and, with `use_eyes`, from its eyes when both are found)."""
    gray = gray_image(image)
    smallest = max(24, min(gray.shape) // 16)
    boxes = _cascade(CASCADE).detectMultiScale(
        gray, scaleFactor=1.1, minNeighbors=5, minSize=(smallest, smallest)
    )
    boxes = sorted((tuple(map(int, box)) for box in boxes), key=lambda b: -b[2] * b[3])
    faces = []
    for box in boxes:
        eyes = find_eyes(gray, box) if use_eyes else None
        faces.append(Face(box, frame_of(box, eyes=eyes), eyes))
    return faces


def gray_image(image):
    """The grayscale (height, width) uint8 version of an RGB image, as OpenCV wants it."""
    import cv2

    return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)


def find_eyes(gray, box):
    """The centres ((x, y) left, (x, y) right) of the two eyes in the upper part of a face
    box of a grayscale image, or None unless one is found on each side at a plausible
    distance and tilt."""
    x, y, width, height = box
    upper = gray[y : y + round(0.6 * height), x : x + width]
    found = _cascade(EYE_CASCADE).detectMultiScale(
        upper,
        scaleFactor=1.05,
        minNeighbors=3,
        minSize=(width // 10, width // 10),
        maxSize=(width // 3, width // 3),
    )
    sides = ([], [])
    for ex, ey, ew, eh in (map(int, eye) for eye in found):
        centre = (x + ex + ew / 2, y + ey + eh / 2)
        sides[int(centre[0] >= x + width / 2)].append((ew, centre))
    if not all(sides):
        return None
    left, right = (max(side)[1] for side in sides)  # The largest on each side.
    distance = math.dist(left, right)
    tilt = abs(right[1] - left[1])
    if not 0.25 * width <= distance <= 0.6 * width or tilt > 0.25 * distance:
        return None
    return left, right


def frame_of(box, scale=1.0, shift=0.0, eyes=None):
    """The square (x, y, side) that frames a face as UTKFace's crops do: from its box or,
    with its `eyes`, from the mean of the box's and the eyes' estimates (`scale` times
    larger and `shift` frame sides lower, for the variants of FRAME_VARIANTS)."""
    x, y, width, height = box
    side = FRAME_SCALE * width
    centre_x = x + width / 2 + FRAME_SHIFT[0] * width
    centre_y = y + height / 2 + FRAME_SHIFT[1] * width
    if eyes is not None:
        (left_x, left_y), (right_x, right_y) = eyes
        distance = math.dist(*eyes)
        # The geometric mean of the sides, the mean of the centres.
        side = math.sqrt(side * EYE_SCALE * distance)
        centre_x = (centre_x + (left_x + right_x) / 2 + EYE_SHIFT[0] * distance) / 2
        centre_y = (centre_y + (left_y + right_y) / 2 + EYE_SHIFT[1] * distance) / 2
    side *= FRAME_ZOOM * scale
    centre_y += shift * side
    return (round(centre_x - side / 2), round(centre_y - side / 2), round(side))


def frame_variants(face):
    """The frames of FRAME_VARIANTS around a Face, whose predictions `predict` averages:
    the estimated frame varies from face to face by about that much."""
    return [
        frame_of(face.box, scale, shift, face.eyes) for scale, shift in FRAME_VARIANTS
    ]


def crop_frame(image, frame):
    """The square `frame` of an image; where it leaves the picture, the border repeats."""
    x, y, side = frame
    height, width = image.shape[:2]
    pad = max(0, -x, -y, x + side - width, y + side - height)
    if pad:
        image = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    return image[y + pad : y + pad + side, x + pad : x + pad + side]


def is_small_square(height, width):
    """True for a picture small and about square enough to be a face crop as it is."""
    return max(height, width) <= SMALL_PICTURE and 0.8 <= width / height <= 1.25


def is_tight_crop(image, faces):
    """True when a picture already is a face crop like UTKFace's: a small, about square
    picture, or one whose largest face fills most of it."""
    height, width = image.shape[:2]
    if is_small_square(height, width):
        return True
    return bool(faces) and faces[0].box[2] >= TIGHT_CROP * min(height, width)


# ---------------------------------------------------------------------------------------
# Predicting the ages in image files
# ---------------------------------------------------------------------------------------

# Files decoded and predicted at a time: bounds the memory a large folder takes.
PREDICT_CHUNK = 512


def _image_files(sources):
    """Expand files and folders into (files, skipped [(path, reason)]): every entry that
    is not an image file is counted with its reason, none dropped silently."""
    files, skipped = [], []
    for source in map(Path, sources):
        if source.is_dir():
            try:
                entries = sorted(source.iterdir())
            except OSError as error:
                skipped.append((source, f"cannot list the folder ({error.strerror})"))
                continue
            for path in entries:
                problem = utk_data.entry_problem(path)
                if problem:
                    skipped.append((path, problem))
                elif path.suffix.lower() in utk_data.IMAGE_SUFFIXES:
                    files.append(path)
                else:
                    skipped.append((path, "not a .jpg/.jpeg/.png file"))
        else:
            problem = utk_data.entry_problem(source)
            (skipped.append((source, problem)) if problem else files.append(source))
    return files, skipped


# Cells a spreadsheet would run as a formula when they begin with one of these.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _safe_cell(text):
    """A CSV cell that a spreadsheet shows as text: a leading ' before a formula's start."""
    return f"'{text}" if text.startswith(FORMULA_STARTS) else text


# How `predict` frames a picture: "auto" finds the face unless the picture already is a
# tight face crop, "face" always looks for faces, "none" takes every picture as it is.
CROPS = ("auto", "face", "none")


class PhotoAge(NamedTuple):
    """One row of `predict`: a face of a picture, or a picture without a face."""

    path: str
    age: Optional[float]  # None when no face was found
    crop: str  # "as is", "face" or "no face found"
    box: Optional[tuple] = None  # (x, y, width, height) of the face found
    frame: Optional[tuple] = None  # (x, y, side): the square the model saw (the middle
    # one of the frames whose predictions are averaged)
    eyes: Optional[tuple] = None  # the eyes found in the face's box (None: not found)


def _predict_as_is(model, paths, batch_size, tta):
    """Predictions of pictures taken as they are, decoded in parallel, in chunks."""
    rows, skipped = [], []
    for start in range(0, len(paths), PREDICT_CHUNK):
        chunk = paths[start : start + PREDICT_CHUNK]
        images, readable, failed = read_images(chunk, model.image_size)
        skipped += failed
        if readable:
            ages = predict_ages(model, images, batch_size, tta, model.age_widening)
            rows += [PhotoAge(p, float(a), "as is") for p, a in zip(readable, ages)]
    return rows, skipped


def _cpu_count():
    """The processor cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@contextmanager
def _opencv_threads(count):
    """Run the block with OpenCV's own thread pool set to `count` threads."""
    import cv2

    before = cv2.getNumThreads()
    cv2.setNumThreads(count)
    try:
        yield
    finally:
        cv2.setNumThreads(before)


def _face_crops(picture, face, image_size):
    """The crops (variants, size, size, 3) of a face's frames, resized for the model."""
    crops = [
        utk_data.resize_square(crop_frame(picture, frame), image_size)
        for frame in frame_variants(face)
    ]
    return tf.stack(crops)


def _reason(error):
    """Why a file could not be read, from the ValueError that `read_photo` raised."""
    return str(error).split(": ", 1)[-1]


class Sorting(NamedTuple):
    """How a picture is predicted: taken as it is (a face crop), by the faces found in it
    (none, when none was), or skipped because it cannot be read."""

    as_is: bool = False
    faces: tuple = ()  # ((Face, its crops (variants, size, size, 3)), ...)
    skipped: Optional[str] = None  # why, for a picture that cannot be read


def _sort_by_size(path):
    """Sorting(as_is=True) for a small, about square picture, a skipped Sorting for a file
    whose header cannot be read, None for a picture that must be searched."""
    # Such a picture is a face crop whatever the detector says, and its header tells: it
    # is neither decoded here nor searched. The test holds whichever way EXIF turns the
    # picture, so its tag need not be read.
    try:
        return Sorting(as_is=True) if is_small_square(*picture_size(path)) else None
    except ValueError as error:
        return Sorting(skipped=_reason(error))


def _search_picture(path, crop, image_size):
    """The Sorting of a picture after a search for its faces."""
    try:
        picture = read_photo(path)
    except ValueError as error:
        return Sorting(skipped=_reason(error))
    found = find_faces(picture)
    if crop == "auto" and is_tight_crop(picture, found):
        return Sorting(as_is=True)
    crops = [_face_crops(picture, face, image_size) for face in found]
    return Sorting(faces=tuple(zip(found, crops)))


def _search_pictures(paths, crop, image_size):
    """`_search_picture` of each picture, in order, a thread per core."""
    search = functools.partial(_search_picture, crop=crop, image_size=image_size)
    threads = min(_cpu_count(), len(paths))
    if threads <= 1:
        return list(map(search, paths))
    # OpenCV's detector releases the GIL and would spread each search over every core
    # too: a thread of its own per picture keeps the cores from being oversubscribed.
    with _opencv_threads(1), ThreadPoolExecutor(threads) as pool:
        return list(pool.map(search, paths))


def _sort_pictures(paths, crop, image_size):
    """How each picture is predicted, in order (see `_search_picture`): face crops known
    from their size first, the others searched. A picture taken as it is is decoded again
    by `_predict_as_is`, so that it predicts exactly as with crop "none"."""
    sorted_pictures = [
        _sort_by_size(path) if crop == "auto" else None for path in paths
    ]
    unsorted = [index for index, how in enumerate(sorted_pictures) if how is None]
    searched = _search_pictures([paths[index] for index in unsorted], crop, image_size)
    for index, how in zip(unsorted, searched):
        sorted_pictures[index] = how
    return sorted_pictures


def _predict_faces(model, faces, batch_size, tta):
    """[PhotoAge] of [(path, Face, its crops)]: the mean over each face's frames."""
    if not faces:
        return []
    images = tf.cast(tf.concat([crops for _, _, crops in faces], 0), tf.float32)
    ages = predict_ages(model, images / 255.0, batch_size, tta, model.age_widening)
    ages = ages.reshape(len(faces), -1).mean(axis=1)
    return [
        PhotoAge(path, float(age), "face", face.box, face.frame, face.eyes)
        for (path, face, _), age in zip(faces, ages)
    ]


def predict_paths(model, paths, batch_size=64, tta=False, crop="none"):
    """[PhotoAge] of image files, in their order, and [(path, reason)] of unreadable ones.

    With crop "face" (or "auto", for pictures that are not face crops already), each face
    found is framed as UTKFace frames its faces and predicted; a picture without a face gets
    a row without an age. Pictures taken as they are decode in parallel, in batches.
    """
    if crop not in CROPS:
        raise ValueError(f"crop must be one of {CROPS}, got {crop!r}")
    paths = list(paths)
    if crop == "none":
        return _predict_as_is(model, paths, batch_size, tta)
    as_is, faces, rows, skipped = [], [], [], []
    # A chunk of pictures at a time, and their faces predicted as soon as a chunk of them
    # is ready: the memory stays bounded however large the folder.
    for start in range(0, len(paths), PREDICT_CHUNK):
        chunk = paths[start : start + PREDICT_CHUNK]
        for path, how in zip(chunk, _sort_pictures(chunk, crop, model.image_size)):
            if how.skipped:
                skipped.append((path, how.skipped))
            elif how.as_is:
                as_is.append(path)
            elif not how.faces:
                rows.append(PhotoAge(path, None, "no face found"))
            else:
                faces += [(path, face, crops) for face, crops in how.faces]
        while len(faces) >= PREDICT_CHUNK:
            rows += _predict_faces(model, faces[:PREDICT_CHUNK], batch_size, tta)
            del faces[:PREDICT_CHUNK]
    rows += _predict_faces(model, faces, batch_size, tta)
    found, failed = _predict_as_is(model, as_is, batch_size, tta)
    order = {path: index for index, path in enumerate(paths)}
    return sorted(rows + found, key=lambda row: order[row.path]), skipped + failed


# ---------------------------------------------------------------------------------------
# Predicting the ages in one picture held in memory (the page of serve.py)
# ---------------------------------------------------------------------------------------

# A picture sent as bytes is refused above this many pixels, read from its header before
# any pixel is decoded (a decompression bomb), as utk_data refuses a training image.
MAX_PIXELS = utk_data.MAX_PIXELS
# The kinds of picture read from bytes: those `predict` reads from files.
PICTURE_FORMATS = ("JPEG", "PNG")
# EXIF orientations that turn a picture by a quarter: its upright width is its height.
QUARTER_TURNS = (5, 6, 7, 8)


class PictureTooLarge(ValueError):
    """A picture whose header declares more than MAX_PIXELS pixels."""


class PictureAges(NamedTuple):
    """The ages of one picture held in memory, and its upright size in pixels."""

    rows: list  # [PhotoAge], as predict_paths gives them for a file of the same bytes
    height: int
    width: int


def _picture_header(contents):
    """The (height, width) of a JPEG or PNG picture's bytes, upright (after its EXIF
    turn), and its EXIF orientation, from the header alone: no pixel is decoded."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(contents)) as image:
            kind, (width, height) = image.format, image.size
            orientation = int(image.getexif().get(0x0112, 1))
    except Image.DecompressionBombError as error:
        raise PictureTooLarge(f"far too many pixels ({error})") from None
    except Image.UnidentifiedImageError:
        raise ValueError("not a JPEG or PNG image (no known kind of image)") from None
    except Exception as error:  # PIL raises many kinds for bytes that are no picture.
        raise ValueError(f"not a readable JPEG or PNG image ({error})") from None
    if kind not in PICTURE_FORMATS:
        raise ValueError(f"a {kind} image: only JPEG and PNG pictures are read")
    if height * width > MAX_PIXELS:
        raise PictureTooLarge(
            f"{width}x{height} pixels, over the limit of {MAX_PIXELS:,} (photos.MAX_PIXELS)"
        )
    if orientation in QUARTER_TURNS:
        height, width = width, height
    return height, width, orientation


def _read_as_is(contents, orientation, image_size):
    """A picture's bytes as `read_images` reads its file to take it as it is: a float32
    batch (1, size, size, 3) in [0, 1]."""
    if orientation != 1:
        image = utk_data.resize_square(read_photo(io.BytesIO(contents)), image_size)
    else:
        try:  # Decoded in full, as read_images decodes a file.
            contents = tf.constant(contents)
            image = utk_data.decode_and_resize(contents, image_size, scaled=False)
        except tf.errors.OpError:
            raise ValueError("could not decode the image (corrupt data)") from None
    return tf.cast(image[tf.newaxis], tf.float32) / 255.0


def predict_picture(model, contents, tta=False, crop="auto", batch_size=64, name=""):
    """The PictureAges of one JPEG or PNG picture given as its file's bytes, in memory:
    the rows that predict_paths gives for a file of them (the same sorting, framing and
    readout), each with the path `name`. A ValueError says why the picture cannot be read;
    a PictureTooLarge is one over MAX_PIXELS, refused from its header before decoding.
    """
    if crop not in CROPS:
        raise ValueError(f"crop must be one of {CROPS}, got {crop!r}")
    height, width, orientation = _picture_header(contents)
    if crop == "none" or (crop == "auto" and is_small_square(height, width)):
        how = Sorting(as_is=True)
    else:
        how = _search_picture(io.BytesIO(contents), crop, model.image_size)
    if how.skipped:
        raise ValueError(how.skipped)
    if how.as_is:
        images = _read_as_is(contents, orientation, model.image_size)
        age = predict_ages(model, images, batch_size, tta, model.age_widening)[0]
        rows = [PhotoAge(name, float(age), "as is")]
    elif how.faces:
        found = [(name, face, crops) for face, crops in how.faces]
        rows = _predict_faces(model, found, batch_size, tta)
    else:
        rows = [PhotoAge(name, None, "no face found")]
    return PictureAges(rows, height, width)


# ---------------------------------------------------------------------------------------
# What the model's own test run measured at each age, and where it is known to be weak
# ---------------------------------------------------------------------------------------


class AgeError(NamedTuple):
    """How far off a model was on the test faces it put in one range of ages: what to
    expect of a new face it puts there."""

    ages: str  # the range of predicted ages, "30-39" (utk_data.AGE_BINS)
    faces: int  # the test faces predicted in that range
    mae: float  # their mean absolute error, in years
    within: float  # 3 in 4 of them were off by at most this many years
    low: float  # the true age minus the predicted one: 1 in 8 of them below this,
    high: float  # 1 in 8 above this, so 3 in 4 in between


class ErrorTable(NamedTuple):
    """A model's AgeErrors by range of predicted ages, and where they come from (or why
    there are none)."""

    rows: dict  # {range name: AgeError}; empty when the test run is not known
    source: str


def age_range(age):
    """The name of the range of utk_data.AGE_BINS that an age falls in: "30-39", "80+"."""
    low, high = [bin for bin in utk_data.AGE_BINS if bin[0] <= max(age, 0.0)][-1]
    return utk_data.age_bin_name(low, high)


def errors_by_age(true, predicted):
    """{range name: AgeError} of test faces' true and predicted ages, by predicted age."""
    true, predicted = np.asarray(true, float), np.asarray(predicted, float)
    known = np.isfinite(true) & np.isfinite(predicted)
    true, predicted = true[known], predicted[known]
    names = np.array([age_range(age) for age in predicted])
    rows = {}
    for low, high in utk_data.AGE_BINS:
        name = utk_data.age_bin_name(low, high)
        errors = (true - predicted)[names == name]
        if len(errors):
            low_error, high_error = np.quantile(errors, [0.125, 0.875])
            within = np.quantile(np.abs(errors), 0.75)
            mae = np.abs(errors).mean()
            measured = (mae, within, low_error, high_error)
            rows[name] = AgeError(
                name, len(errors), *(round(float(v), 2) for v in measured)
            )
    return rows


def error_table(model_path, tta=False):
    """The ErrorTable of the test run beside a model (the test_predictions.csv that train
    wrote into its folder), for the readout of `tta`; empty, saying why, when the file is
    missing or cannot be read."""
    folder = Path(model_path).parent
    column = runs.PREDICTION_COLUMNS[bool(tta)]
    try:
        found = runs.run_predictions(folder, column)
    except FileNotFoundError:
        return ErrorTable(
            {},
            f"no {runs.PREDICTIONS} beside the model, so its errors at each age are "
            f"unknown (`python train_loop.py evaluate --model {model_path} --predictions "
            f"{folder / runs.PREDICTIONS}` writes it)",
        )
    except (ValueError, OSError, KeyError, csv.Error) as error:
        reason = " ".join(str(error).split())[:200]
        return ErrorTable({}, f"the errors at each age are unknown ({reason})")
    rows = errors_by_age(found.true, found.predicted)
    faces = sum(row.faces for row in rows.values())
    return ErrorTable(
        rows, f"the {faces:,} test faces of {runs.PREDICTIONS} beside the model"
    )


# Where the model is known to be weak, a warning beside the age (the measurements behind
# each threshold: EXPERIMENTS.md, "Honest ages on the page"). Predicted ages below CHILD:
# a few years off is a large error for a child. From OLD: UTKFace has few such faces, and
# they are predicted too young. A face narrower than SMALL_FACE pixels holds less than the
# model's smallest tested input. No eyes found: the face may be turned, tilted or covered,
# and was framed from its box alone.
CHILD = 13
OLD = 70
SMALL_FACE = 32


class AgeNotes(NamedTuple):
    """What goes with an age: the error measured at that age, the warnings, and both in a
    sentence ("about 34, usually within ±5 years at this age")."""

    error: Optional[AgeError]
    warnings: tuple
    text: str


def age_notes(age, table, side=None, eyes_found=None):
    """The AgeNotes of a face predicted `age` by a model with this ErrorTable; `side` is
    the face's width in pixels, `eyes_found` whether its eyes were found (None: the picture
    was not searched, as a face crop already)."""
    error = table.rows.get(age_range(age))
    warnings = []
    if age < CHILD:
        warnings.append("a child: a few years off is a large error at this age")
    if age >= OLD:
        warnings.append(
            "over 70: few faces this old to learn from; often guessed too young"
        )
    if side is not None and side < SMALL_FACE:
        warnings.append(f"a small face ({side} pixels wide): less sure")
    if eyes_found is False:
        warnings.append("eyes not found: the face may be turned or covered")
    text = f"about {age:.0f}"
    if error is not None:
        text += f", usually within ±{max(1, round(error.within))} years at this age"
    elif table.rows:
        text += " (no test face was put at this age: its error is unknown)"
    else:
        text += " (its error at this age is unknown)"
    return AgeNotes(error, tuple(warnings), text)


def row_notes(row, table, picture_side=None):
    """The AgeNotes of a PhotoAge with an age: a face found (its box's width, its eyes),
    or a face crop `picture_side` pixels wide (the shorter side), taken as it is."""
    if row.box is not None:
        return age_notes(row.age, table, row.box[2], row.eyes is not None)
    return age_notes(row.age, table, picture_side, None)


# The columns of `predict`'s CSV: the face, then what the test run measured at its age
# (AgeError's fields) and the warnings, "; " between them.
PREDICT_COLUMNS = ("path", "predicted_age", "crop", "x", "y", "width", "height")
NOTES_COLUMNS = (
    "test_ages",
    "test_faces",
    "test_mae",
    "test_within_3_in_4",
    "test_error_low",
    "test_error_high",
    "warnings",
)


def _notes_cells(row, table):
    """The NOTES_COLUMNS cells of a row of `predict` (empty for a row without an age)."""
    if row.age is None:
        return [""] * len(NOTES_COLUMNS)
    try:
        side = None if row.box else min(picture_size(row.path))
    except ValueError:  # Gone since it was read: the warning of its size is left out.
        side = None
    notes = row_notes(row, table, side)
    error = notes.error
    measured = (
        [error.ages, error.faces, *(f"{value:.1f}" for value in error[2:])]
        if error
        else [""] * 6
    )
    return measured + ["; ".join(notes.warnings)]


def predict_files(model_path, sources, out=None, tta=False, crop="auto"):
    """Predict the age of every face in the JPEG/PNG files of `sources`; write a CSV."""
    model = load_model(model_path)
    table = error_table(model_path, tta)
    files, skipped = _image_files(sources)
    rows, failed = predict_paths(model, [str(f) for f in files], tta=tta, crop=crop)
    skipped += failed
    stream = open(out, "w", newline="") if out else sys.stdout
    try:
        writer = csv.writer(stream)
        writer.writerow([*PREDICT_COLUMNS, *NOTES_COLUMNS])
        for row in rows:
            age = "" if row.age is None else f"{row.age:.1f}"
            cells = [_safe_cell(str(row.path)), age, row.crop, *(row.box or ("",) * 4)]
            writer.writerow(cells + _notes_cells(row, table))
    finally:
        if out:
            stream.close()
    print(f"errors at each age: {table.source}", file=sys.stderr)
    for path, reason in skipped:
        name = os.fsencode(path).decode("utf-8", "backslashreplace")
        print(f"skipped {name}: {reason}", file=sys.stderr)
    faces = sum(row.age is not None for row in rows)
    print(
        f"predicted {faces} face(s) in {len(rows)} row(s), skipped {len(skipped)} file(s)",
        file=sys.stderr,
    )
    return rows, skipped


def plot_photo(picture, rows):
    """A picture with the faces found in it boxed, and each face as the model saw it, with
    its predicted age (rows from `predict_paths`)."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    faces = [row for row in rows if row.box]
    figure, axes = plt.subplots(
        1, 1 + len(faces), figsize=(4 + 2.2 * len(faces), 4), squeeze=False
    )
    axes = axes[0]
    axes[0].imshow(picture)
    for row in faces:
        x, y, width, height = row.box
        axes[0].add_patch(
            Rectangle((x, y), width, height, fill=False, color="yellow", lw=2)
        )
    titles = {"face": f"{len(faces)} face(s) found", "no face found": "no face found"}
    if rows and rows[0].crop == "as is":
        titles["as is"] = f"a face crop already: {rows[0].age:.0f} years"
    axes[0].set_title(titles[rows[0].crop] if rows else "could not be read")
    for axis, row in zip(axes[1:], faces):
        axis.imshow(crop_frame(picture, row.frame))
        axis.set_title(f"predicted age: {row.age:.0f}")
    for axis in axes:
        axis.axis("off")
    return figure


# ---------------------------------------------------------------------------------------
# The `predict` command of train_loop.py
# ---------------------------------------------------------------------------------------


def add_predict_arguments(parser):
    """The arguments of `python train_loop.py predict`."""
    parser.add_argument("--model", required=True, help="a model.keras file")
    parser.add_argument(
        "--crop",
        choices=CROPS,
        default="auto",
        help="auto: find and frame the face unless the picture is a face crop already; "
        "face: always find the faces; none: take each picture as it is (default: auto)",
    )
    parser.add_argument("--out", help="CSV file (default: standard output)")
    parser.add_argument("sources", nargs="+", metavar="FILE_OR_FOLDER")
    add_tta_argument(parser)


def predict_command(arguments, parser):
    """`predict`: a CSV of predicted ages; fails only when no image could be read."""
    rows, _ = predict_files(
        arguments.model,
        arguments.sources,
        arguments.out,
        tta_from_arguments(arguments),
        arguments.crop,
    )
    return 0 if any(row.age is not None for row in rows) else 1
