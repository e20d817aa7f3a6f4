"""The UTKFace data module: find the images, read their labels, build `tf.data` pipelines.

UTKFace's aligned&cropped faces are 200x200 RGB JPEGs whose name carries the labels:
`[age]_[gender]_[race]_[date&time].jpg.chip.jpg` (gender 0 male, 1 female; race 0 White,
1 Black, 2 Asian, 3 Indian, 4 Others). A few real names are malformed; `parse_name` reads them.

    python utk_data.py summary                      # the archive next to the repository
    python utk_data.py summary --data ~/UTKFace --plot summary.png

Typical use:

    folder = locate()                               # a folder, an archive or a URL
    records, skipped = load_records(folder)
    train, val, test = split_records(records)
    augmented = augmentation.Augmentation()         # the training augmentation
    train_dataset = make_dataset(
        train, image_size=96, batch_size=64, training=True, augmentation=augmented
    )
"""

import argparse
import collections
import errno
import hashlib
import os
import re
import shlex
import stat
import struct
import sys
import warnings
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np

import archives

# TensorFlow is imported lazily (see `_tf`) so that name parsing, record loading and the
# summary command start in a fraction of a second.

# The full aligned&cropped set (23,708 images, folder `UTKFace/` inside) re-uploaded to the
# Hugging Face hub, at a fixed revision so that its content cannot change under us; the
# authors' Google Drive link is dead. Its SHA-256 is not known: see README.md.
DEFAULT_URL = (
    "https://huggingface.co/datasets/py97/UTKFace-Cropped/resolve/"
    "e80f21fb21fa3631380c3cb634b79be3ac2f4cba/UTKFace.tar.gz"
)
# The default mirror holds 23,708 faces; far fewer means a wrong or truncated download.
MIN_MIRROR_IMAGES = 20_000
# Where else UTKFace can come from, for the error messages.
ALTERNATIVES = (
    "download UTKFace yourself (the Kaggle dataset jangedoo/utkface-new, or the "
    "UTKFace.tar.gz of the Hugging Face dataset py97/UTKFace-Cropped) and pass the folder "
    "or archive with --data PATH or the UTKFACE_DATA environment variable"
)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
MAX_AGE = 116
GENDERS = ("male", "female")
RACES = ("White", "Black", "Asian", "Indian", "Others")
# Beyond this an image is refused as a bomb, before it is decoded.
MAX_PIXELS = 40_000_000  # per image, read from its header
# The age groups of reports: 0-9, 10-19, ..., 70-79, and 80 and over.
AGE_BINS = [(low, low + 9) for low in range(0, 80, 10)] + [(80, MAX_AGE)]


def age_bin_name(low, high):
    """ "30-39", or "80+" for the last, open-ended group."""
    return f"{low}+" if high == MAX_AGE else f"{low}-{high}"


def age_bin_masks(ages):
    """{bin name: boolean mask of the ages in it} for every bin of AGE_BINS."""
    ages = np.asarray(ages)
    return {
        age_bin_name(low, high): (ages >= low) & (ages <= high)
        for low, high in AGE_BINS
    }


class Label(NamedTuple):
    """The labels in a UTKFace file name; gender and race are None when missing."""

    age: int
    gender: Optional[int]
    race: Optional[int]


class Record(NamedTuple):
    """One usable image: its path and labels."""

    path: Path
    age: int
    gender: Optional[int]
    race: Optional[int]


# ---------------------------------------------------------------------------------------
# File names
# ---------------------------------------------------------------------------------------


def _parse(file_name):
    """Return (Label, None) or (None, reason) for a file name."""
    name = Path(file_name).name
    # The labels stand before the first dot or space: this also reads
    # `..._20170116220224657 .jpg.chip.jpg` and `..._20170116232725357jpg.chip.jpg`.
    stem = re.split(r"[.\s]", name, maxsplit=1)[0]
    fields = stem.split("_")
    if not re.fullmatch(r"\d{1,3}", fields[0]):
        return None, "no age in file name"
    age = int(fields[0])
    if age > MAX_AGE:
        return None, f"age {age} out of range 0..{MAX_AGE}"
    # Gender and race are the short numeric fields after the age; the timestamp (16 to 18
    # digits in the real set) ends them. A missing race field leaves one short field.
    short = []
    for field in fields[1:3]:
        if not re.fullmatch(r"\d{1,2}", field):
            break
        short.append(int(field))
    gender = short[0] if len(short) > 0 and short[0] in (0, 1) else None
    race = short[1] if len(short) > 1 and 0 <= short[1] < len(RACES) else None
    return Label(age, gender, race), None


def parse_name(file_name):
    """Read (age, gender, race) from a UTKFace file name; None when it has no valid age."""
    return _parse(file_name)[0]


# ---------------------------------------------------------------------------------------
# Finding the data
# ---------------------------------------------------------------------------------------


def _is_url(source):
    return isinstance(source, str) and re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", source)


def _default_cache_dir():
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "datasets"


def _has_images(folder):
    return any(
        entry.is_file() and entry.name.lower().endswith(IMAGE_SUFFIXES)
        for entry in os.scandir(folder)
    )


def _image_folder(folder):
    """Return the folder holding the images: `folder` itself or its UTKFace subfolder."""
    folder = Path(folder)
    if _has_images(folder):
        return folder
    subfolders = sorted(path for path in folder.iterdir() if path.is_dir())
    # Kaggle's copy also holds `crop_part1/` and `utkface_aligned_cropped/` (the same faces
    # again): take `UTKFace/` only, so that no face is read twice.
    for subfolder in subfolders:
        if subfolder.name.lower() == "utkface":
            return _image_folder(subfolder)
    with_images = [path for path in subfolders if _has_images(path)]
    if len(with_images) == 1:
        return with_images[0]
    raise FileNotFoundError(
        f"{folder}: no images here, and no single image subfolder to use "
        f"(subfolders: {[path.name for path in subfolders] or 'none'}); "
        "point at the folder that holds the .jpg files"
    )


def _count_labelled(folder):
    """The number of image files in `folder` whose name carries an age."""
    return sum(
        1
        for entry in os.scandir(folder)
        if entry.name.lower().endswith(IMAGE_SUFFIXES) and parse_name(entry.name)
    )


def locate(source=None, file_hash=None, cache_dir=None, download_dir=None):
    """Return the folder of UTKFace images from a folder, an archive or a URL (see README).

    Archives are extracted into `cache_dir`; a URL is downloaded into `download_dir` (by
    default `cache_dir`), e.g. a Google Drive folder that outlives a Colab runtime.
    """
    if source is None:
        source = os.environ.get("UTKFACE_DATA") or DEFAULT_URL
    cache_dir = Path(cache_dir) if cache_dir else _default_cache_dir()
    path = source
    if _is_url(source):
        path = archives.download(
            str(source), file_hash, Path(download_dir or cache_dir), ALTERNATIVES
        )
    path = Path(path).expanduser()
    if not path.exists():
        link = path.is_symlink()
        what = "is a dangling link or a link loop" if link else "does not exist"
        raise FileNotFoundError(f"UTKFace data not found: {path} {what}")
    if path.is_dir():
        folder = _image_folder(path)
    elif archives.is_archive(path) and path.is_file():
        try:
            folder = _image_folder(archives.extract_once(path, cache_dir))
        except ValueError as error:
            if not _is_url(source):
                raise
            raise ValueError(
                f"{error}. It was downloaded from {source}: delete it "
                f"(rm {shlex.quote(str(path))}) and run again"
            ) from None
    else:
        raise ValueError(
            f"{path}: expected a folder, a .tar.gz/.tgz/.tar/.zip archive or a URL"
        )
    if source == DEFAULT_URL:
        count = _count_labelled(folder)
        if count < MIN_MIRROR_IMAGES:
            raise ValueError(
                f"{DEFAULT_URL} gave only {count:,} UTKFace images in {folder} (expected "
                f"about 23,708): the download is incomplete or the mirror changed. "
                f"Delete the download (rm {shlex.quote(str(path))}) and try again, or "
                f"{ALTERNATIVES}"
            )
    return folder


# ---------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"IEND\xaeB`\x82"


def _jpeg_shape(descriptor):
    """(height, width) from a JPEG's frame header, found by walking its marker segments;
    None when they break off before one (the decoder then judges the file)."""
    offset = 2
    for _ in range(10_000):
        segment = os.pread(descriptor, 9, offset)
        if len(segment) < 9 or segment[0] != 0xFF or segment[1] == 0xDA:
            return None  # broken off, or the image data starts with no frame header
        marker, length = struct.unpack(">xBH", segment[:4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return struct.unpack(">HH", segment[5:9])
        offset += 1 if marker == 0xFF else 2 + length  # a fill byte, or a segment
    return None


def _content_problem(descriptor, size):
    """Cheap check of an image file's framing and pixel count, from its header and tail
    without decoding it; return a reason, or None when it looks whole."""
    if size == 0:
        return "empty file"
    head = os.pread(descriptor, 24, 0)
    tail = os.pread(descriptor, 1024, max(0, size - 1024))
    if head.startswith(b"\xff\xd8\xff"):
        # A whole JPEG ends with the end-of-image marker (some writers pad after it); 0xFFD9
        # cannot occur inside the entropy-coded data, so this costs no decode.
        if b"\xff\xd9" not in tail:
            return "truncated JPEG (no end marker)"
        shape = _jpeg_shape(descriptor)
    elif head.startswith(_PNG_SIGNATURE):
        if _PNG_END not in tail[-64:]:
            return "truncated PNG (no IEND chunk)"
        shape = struct.unpack(">II", head[16:24])[::-1]  # IHDR: width, height
    else:
        return "not a JPEG or PNG file"
    if shape and shape[0] * shape[1] > MAX_PIXELS:
        return f"over {MAX_PIXELS:,} pixels ({shape[1]}x{shape[0]})"
    return None


def _shown(path):
    """A path as text that prints anywhere: the bytes of a non-UTF-8 name as \\x escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _file_problem(path, content=True):
    """Why the entry at `path` is not a regular file or (with `content`) not a whole JPEG or
    PNG file within MAX_PIXELS; None when it is."""
    try:
        # Non-blocking, as opening a FIFO would block otherwise.
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as error:
        if error.errno == errno.ENOENT and path.is_symlink():
            return "dangling symbolic link"
        loop = error.errno == errno.ELOOP
        return "symbolic link loop" if loop else f"cannot be read ({error.strerror})"
    try:
        status = os.fstat(descriptor)
        if stat.S_ISDIR(status.st_mode):
            return "a folder, not an image file"
        if not stat.S_ISREG(status.st_mode):
            return "not a regular file (a FIFO, socket or device)"
        return _content_problem(descriptor, status.st_size) if content else None
    except OSError as error:
        return f"cannot be read ({error.strerror})"
    finally:
        os.close(descriptor)


def entry_problem(path):
    """Why the entry at `path` cannot be read as an image file (a name that is not UTF-8,
    a folder, a broken or looping link, a FIFO, no permission), its content unread; None
    when it can be read."""
    if _shown(path) != str(path):
        return "file name is not valid UTF-8"
    return _file_problem(Path(path), content=False)


def _examine(path):
    """(Label, None) for a usable image file, or (None, why not) for any other entry."""
    if _shown(path.name) != path.name:
        return None, "file name is not valid UTF-8"
    label, reason = _parse(path.name)
    reason = _file_problem(path, content=reason is None) or reason
    return (None, reason) if reason else (label, None)


def load_records(folder, verbose=True):
    """Read every entry of `folder`: (records of usable images, [(path, reason)] of the
    rest, be they files, folders, links or FIFOs)."""
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"UTKFace folder not found: {_shown(folder)}")
    if not folder.is_dir():
        raise NotADirectoryError(f"not a folder: {_shown(folder)}")
    if _shown(folder) != str(folder):
        raise ValueError(f"{_shown(folder)}: the folder's path is not valid UTF-8")
    records, skipped = [], []
    for entry in sorted(os.scandir(folder), key=lambda entry: entry.name):
        path = Path(entry.path)
        label, reason = _examine(path)
        if reason is None:
            records.append(Record(path, *label))
        else:
            skipped.append((path, reason))
    if not records:
        example = [f", e.g. {_shown(path.name)}: {why}" for path, why in skipped[:1]]
        raise ValueError(
            f"{folder}: no usable images ({len(skipped)} file(s) skipped"
            + "".join(example)
            + ")"
        )
    if verbose:
        print(_summary_line(folder, records, skipped))
    return records, skipped


def _summary_line(folder, records, skipped):
    reasons = collections.Counter(reason for _, reason in skipped)
    details = ", ".join(f"{count} {reason}" for reason, count in reasons.most_common())
    line = f"{folder}: {len(records):,} images used, {len(skipped):,} skipped"
    return line + (f" ({details})" if details else "")


def stable_hash(text):
    """A 64-bit number for a text that, unlike hash(), is the same in every process."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def split_records(records, val_fraction=0.1, test_fraction=0.1, seed=0):
    """Split records into (train, val, test) by a hash of each file name."""
    if not (
        0 <= val_fraction and 0 <= test_fraction and val_fraction + test_fraction < 1
    ):
        raise ValueError(
            "val_fraction and test_fraction must be >= 0 with a sum below 1"
        )
    train, val, test = [], [], []
    for record in records:
        # A hash of the name alone: a file keeps its split whatever else is added or removed.
        position = stable_hash(f"{seed}:{Path(record.path).name}") / 2**64
        if position < test_fraction:
            test.append(record)
        elif position < test_fraction + val_fraction:
            val.append(record)
        else:
            train.append(record)
    return train, val, test


def _hash_order(records):
    return sorted(records, key=lambda record: stable_hash(Path(record.path).name))


def load_splits(source=None, limit=None):
    """Locate, read and split the records: (train, val, test); with `limit`, that many
    training images and an eighth as many of each other split, for quick runs."""
    folder = locate(source)
    records, _ = load_records(folder)
    train, val, test = split_records(records)
    if limit:
        # File names start with the age, so a limit takes a hash-ordered sample, not the
        # first names in sorted order (which would be the youngest faces).
        small = max(1, limit // 8)
        train, val, test = (
            _hash_order(part)[:size]
            for part, size in ((train, limit), (val, small), (test, small))
        )
    for name, part in (("train", train), ("val", val), ("test", test)):
        if not part:
            raise ValueError(
                f"the {name} split is empty ({len(records)} images in {folder}): "
                "use more images or a larger --limit"
            )
    return train, val, test


# ---------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------


def _tf():
    import tensorflow as tf

    return tf


def _header_pixels(contents):
    """The pixel count in a JPEG's or PNG's header (0 for other formats), read without
    decoding the image."""
    tf = _tf()
    jpeg = lambda: tf.io.extract_jpeg_shape(contents, tf.int64)[:2]  # noqa: E731
    # A PNG's IHDR chunk: width and height, big-endian int32, in bytes 16-23.
    ihdr = lambda: tf.strings.substr(contents, 16, 8)  # noqa: E731
    png = lambda: tf.cast(  # noqa: E731
        tf.io.decode_raw(ihdr(), tf.int32, little_endian=False), tf.int64
    )
    is_png = tf.strings.substr(contents, 0, 8) == _PNG_SIGNATURE
    branches = [(tf.io.is_jpeg(contents), jpeg), (is_png, png)]
    return tf.reduce_prod(tf.case(branches, default=lambda: tf.zeros([2], tf.int64)))


def decode_and_resize(contents, image_size, scaled=True):
    """Decode JPEG/PNG bytes to an RGB uint8 (image_size, image_size, 3) tensor; an image
    over MAX_PIXELS is an error before it is decoded. `scaled`: a large JPEG is decoded at
    a fraction of its size in the DCT, as training does for speed; False: in full, as any
    other program decodes it (what `predict` and the exported models see)."""
    tf = _tf()

    def decode_jpeg(ratio):
        # Decoding at 1/ratio of the size (done in the DCT) is much cheaper than decoding
        # in full and shrinking afterwards.
        return lambda: tf.io.decode_jpeg(
            contents, channels=3, ratio=ratio, dct_method="INTEGER_FAST"
        )

    def decode_jpeg_scaled():
        shape = tf.io.extract_jpeg_shape(contents)
        smaller_side = tf.minimum(shape[0], shape[1])
        branches = [(smaller_side >= image_size * r, decode_jpeg(r)) for r in (8, 4, 2)]
        return tf.case(branches, default=decode_jpeg(1), exclusive=False)

    def decode_other():
        # Grayscale becomes RGB and an alpha channel is dropped (channels=3).
        return tf.io.decode_image(contents, channels=3, expand_animations=False)

    limit = tf.constant(MAX_PIXELS, tf.int64)
    too_many = f"image over {MAX_PIXELS:,} pixels (utk_data.MAX_PIXELS)"
    check = tf.debugging.assert_less_equal(_header_pixels(contents), limit, too_many)
    with tf.control_dependencies([check]):
        decode_jpeg_as_asked = decode_jpeg_scaled if scaled else decode_other
        image = tf.cond(tf.io.is_jpeg(contents), decode_jpeg_as_asked, decode_other)
    image.set_shape([None, None, 3])
    return resize_square(image, image_size)


def resize_square(image, image_size):
    """Centre-crop an RGB image (height, width, 3), or a batch of them (n, height, width,
    3), to a square and resize it to uint8 (image_size, image_size, 3) (or a batch)."""
    tf = _tf()
    shape = tf.shape(image)
    height, width = shape[-3], shape[-2]
    side = tf.minimum(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    image = image[..., top : top + side, left : left + side, :]

    def shrink():
        # "area" averages the pixels under each output pixel: antialiased like PIL's
        # reductions, and about a quarter of the cost of antialiased bilinear here.
        resized = tf.image.resize(image, (image_size, image_size), method="area")
        return tf.cast(tf.round(resized), tf.uint8)

    return tf.cond(side == image_size, lambda: tf.cast(image, tf.uint8), shrink)


def load_images(paths, image_size):
    """Float32 images (n, size, size, 3) in [0, 1] of UTKFace's files, decoded as for
    training; a file that cannot be decoded is a ValueError that names it. (Photos from a
    camera, which may need an EXIF turn, are read by photos.read_images.)"""
    tf = _tf()
    paths = [str(path) for path in paths]
    _, images, missing = decode_files(paths, image_size)
    if len(missing):
        path = paths[missing[0]]
        raise ValueError(f"{path}: could not decode the image ({_not_decoded(path)})")
    return tf.cast(images, tf.float32) / 255.0


# ---------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------


class DecodedImages(NamedTuple):
    """Images decoded once and kept in memory, with the records they belong to."""

    images: object  # tf.Tensor (n, size, size, 3) uint8
    records: list  # the records whose images decoded, aligned with `images`
    image_size: int


def _decode_file(path, image_size, scaled=True):
    return decode_and_resize(_tf().io.read_file(path), image_size, scaled)


def _not_decoded(path):
    """Why an image file did not decode: what its header says, else corrupt data."""
    return _file_problem(Path(path)) or "corrupt image data"


def decode_files(paths, image_size, scaled=True):
    """Decode and resize image files in parallel (decode_and_resize): (indices of those
    that decoded, their uint8 images (n, size, size, 3), indices of those that failed); a
    file that fails is left out, not fatal."""
    tf = _tf()
    dataset = tf.data.Dataset.from_tensor_slices((tf.range(len(paths)), list(paths)))
    dataset = dataset.map(
        lambda index, path: (index, _decode_file(path, image_size, scaled)),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    dataset = dataset.ignore_errors().batch(256).prefetch(tf.data.AUTOTUNE)
    batches = list(dataset)
    if not batches:
        empty = tf.zeros((0, image_size, image_size, 3), tf.uint8)
        return np.zeros(0, np.int64), empty, np.arange(len(paths))
    indices = tf.concat([indices for indices, _ in batches], 0).numpy()
    images = tf.concat([images for _, images in batches], 0)  # (n, size, size, 3)
    return indices, images, np.setdiff1d(np.arange(len(paths)), indices)


def decode_records(records, image_size):
    """Decode and resize every image once, in parallel; warn about the files that fail.

    The result holds the images in memory (about 1 GB for 17,000 faces at 128 px) for as long
    as it is referenced: pass it to `make_dataset` for every epoch, and drop it to free them.
    """
    paths = [str(record.path) for record in records]
    # A file that passed the cheap check in `load_records` may still be corrupt inside:
    # it is left out here, and named below from the indices that did not arrive.
    indices, images, missing = decode_files(paths, image_size)
    if not len(indices):
        raise ValueError(
            f"no image could be decoded, e.g. {paths[0]} ({_not_decoded(paths[0])})"
        )
    failed = [paths[index] for index in missing]
    if failed:
        message = f"{len(failed)} image(s) could not be decoded and are left out: " + (
            ", ".join(f"{path} ({_not_decoded(path)})" for path in failed[:10])
        )
        warnings.warn(message + (" ..." if len(failed) > 10 else ""), stacklevel=2)
    kept = [records[index] for index in indices]
    return DecodedImages(images, kept, image_size)


def _labels(records, with_attributes):
    """Label arrays for records: ages (n, 1) float32, and gender/race int32 with -1 = missing."""
    ages = np.array([[record.age] for record in records], np.float32).reshape(-1, 1)
    if not with_attributes:
        return ages
    missing = lambda value: -1 if value is None else value  # noqa: E731
    return {
        "age": ages,
        "gender": np.array([missing(record.gender) for record in records], np.int32),
        "race": np.array([missing(record.race) for record in records], np.int32),
    }


def _batch_seed(seed, epoch, batch_number):
    """A stateless seed that depends only on (seed, epoch, batch number)."""
    tf = _tf()
    base = tf.constant([seed, 0x5EED], tf.int64)
    return tf.random.experimental.stateless_fold_in(
        tf.random.experimental.stateless_fold_in(base, epoch), batch_number
    )


def steps_per_epoch(num_images, batch_size):
    """Training batches per epoch: the last partial batch is dropped when there is a full one."""
    return max(1, num_images // batch_size)


def _index_batches(count, batch_size, training, seed, start_epoch, epochs):
    """(epoch, batch number, indices) of every batch: shuffled per epoch when training."""
    tf = _tf()
    if not training:
        batches = tf.data.Dataset.range(count).batch(batch_size)
        return batches.map(lambda indices: (tf.constant(0, tf.int64), 0, indices))
    drop_remainder = count >= batch_size

    def epoch_batches(epoch):
        order = tf.argsort(
            tf.random.stateless_uniform([count], _batch_seed(seed, epoch, -1))
        )
        batches = tf.data.Dataset.from_tensor_slices(order)
        batches = batches.batch(batch_size, drop_remainder=drop_remainder)
        return batches.enumerate().map(lambda number, indices: (epoch, number, indices))

    epoch_numbers = (
        tf.data.Dataset.range(start_epoch, epochs)
        if epochs is not None
        else tf.data.Dataset.counter(start_epoch)
    )
    return epoch_numbers.flat_map(epoch_batches)


def _in_memory(records, image_size, cache):
    """The DecodedImages a dataset gathers its batches from, or None to read the files."""
    if not isinstance(records, DecodedImages):
        return decode_records(records, image_size) if cache else None
    if records.image_size != image_size:
        raise ValueError(
            f"make_dataset: images decoded at {records.image_size} px, "
            f"{image_size} px asked for"
        )
    return records


def make_dataset(
    records,
    image_size,
    batch_size,
    training,
    augmentation=None,
    cache=True,
    with_attributes=False,
    seed=0,
    start_epoch=0,
    epochs=None,
    raw=False,
):
    """A `tf.data.Dataset` of (images float32 [0, 1], ages (batch, 1)) batches.

    `records` is a list of Records, or `DecodedImages` from `decode_records` to reuse images
    decoded before (across epochs, resumes and datasets). With `cache` the images are
    decoded once into memory, held by the dataset; without, each batch is read from disk.
    With `training`, the dataset runs from `start_epoch` up to `epochs` (for ever when None),
    each epoch a permutation of the images and an augmentation that depend only on (`seed`,
    epoch): a run resumed at epoch k sees what an uninterrupted one sees. The training
    images are augmented as `augmentation` (an augmentation.Augmentation) says, or not at
    all when it is None.

    With `raw`, the batches are (uint8 images, labels, augmentation seeds (batch, 2), every
    row the batch's seed): the pipeline only gathers them, and `augmentation.prepare_batch`
    scales and augments them where the model runs (inside the compiled train step, on a GPU
    when there is one) to the same images.
    """
    import augmentation as augmenting  # Here, not above: it imports TensorFlow (`_tf`).

    tf = _tf()
    if augmentation is not None and not training:
        raise ValueError("augmentation is for the training set only (training=False)")
    if not records:
        raise ValueError("make_dataset: no records")
    decoded = _in_memory(records, image_size, cache)
    records = decoded.records if decoded is not None else records
    labels = _labels(records, with_attributes)
    batches = _index_batches(
        len(records), batch_size, training, seed, start_epoch, epochs
    )
    if decoded is not None:
        batches = _gather_cached(batches, decoded.images)
    else:
        batches = _decode_streaming(batches, records, image_size, batch_size)

    def to_example(epoch, number, indices, images):
        targets = tf.nest.map_structure(lambda array: tf.gather(array, indices), labels)
        batch_seed = _batch_seed(seed, epoch, number)
        if raw:
            # A row per image, so that a tf.distribute strategy, which splits every part
            # of a batch between its replicas, gives each replica the batch's seed.
            seeds = tf.tile(batch_seed[None], [tf.shape(images)[0], 1])
            return images, targets, seeds
        return augmenting.prepare_batch(images, batch_seed, augmentation), targets

    dataset = batches.map(to_example, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def _gather_cached(batches, images):
    """Each batch's images (batch, size, size, 3) uint8, gathered from `images` in memory."""
    tf = _tf()
    return batches.map(
        lambda epoch, number, indices: (
            epoch,
            number,
            indices,
            tf.gather(images, indices),
        )
    )


def _decode_streaming(batches, records, image_size, batch_size):
    """Decode the images of each batch from their files (`cache=False`), image by image."""
    tf = _tf()
    paths = tf.constant([str(record.path) for record in records])

    def spread(epoch, number, indices):
        count = tf.shape(indices)[0]
        return tf.data.Dataset.from_tensor_slices(
            (tf.fill([count], epoch), tf.fill([count], number), indices)
        )

    def decode(epoch, number, index):
        return epoch, number, index, _decode_file(paths[index], image_size)

    images = batches.flat_map(spread).map(decode, num_parallel_calls=tf.data.AUTOTUNE)
    # Without the cache no pass has checked that every file decodes: a corrupt one is
    # dropped with a logged warning that says why, and its batch is one image short.
    images = images.ignore_errors(log_warning=True).batch(batch_size)
    return images.map(
        lambda epoch, number, indices, batch: (epoch[0], number[0], indices, batch)
    )


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------


def describe(records, skipped):
    """A text report: counts, age, gender and race distributions, skipped files."""
    ages = np.array([record.age for record in records])
    lines = [
        f"images used: {len(records):,}   skipped: {len(skipped):,}",
        f"age: min {ages.min()}, median {np.median(ages):g}, mean {ages.mean():.1f}, "
        f"max {ages.max()}",
        "age bins: "
        + ", ".join(
            f"{name}: {inside.sum():,}" for name, inside in age_bin_masks(ages).items()
        ),
    ]
    for field, names in (("gender", GENDERS), ("race", RACES)):
        counts = collections.Counter(getattr(record, field) for record in records)
        parts = [f"{name}: {counts[index]:,}" for index, name in enumerate(names)]
        lines.append(f"{field}: " + ", ".join(parts) + f", missing: {counts[None]:,}")
        means = [
            f"{name} {np.mean([r.age for r in records if getattr(r, field) == index]):.1f}"
            for index, name in enumerate(names)
            if counts[index]
        ]
        lines.append(f"mean age by {field}: " + ", ".join(means))
    train, val, test = split_records(records)
    lines.append(f"split: train {len(train):,}, val {len(val):,}, test {len(test):,}")
    for path, reason in skipped:
        lines.append(f"skipped {_shown(path)}: {reason}")
    return "\n".join(lines)


def plot_summary(records, file_name=None, samples=16, seed=0):
    """An age histogram and (samples > 0) a grid of sample faces labelled with their ages."""
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(seed)
    count = min(samples, len(records))
    chosen = [records[i] for i in rng.choice(len(records), count, replace=False)]
    columns = 8
    rows = -(-len(chosen) // columns)
    figure = plt.figure(figsize=(columns * 1.3, 2.6 + rows * 1.5))
    grid = figure.add_gridspec(rows + 2, columns)
    histogram = figure.add_subplot(grid[:2, :])
    histogram.hist([record.age for record in records], bins=range(0, MAX_AGE + 2))
    histogram.set_xlabel("age (years)")
    histogram.set_ylabel("images")
    if chosen:
        images = load_images([record.path for record in chosen], 100).numpy()
        for index, (record, image) in enumerate(zip(chosen, images)):
            axes = figure.add_subplot(grid[2 + index // columns, index % columns])
            axes.imshow(image)
            axes.set_title(f"{record.age}", fontsize=9)
            axes.axis("off")
    figure.tight_layout()
    if file_name:
        figure.savefig(file_name, dpi=100)
    return figure


def main(argv=None):
    """The `summary` command line: a user's error is one line on stderr and status 1."""
    parser = argparse.ArgumentParser(description="UTKFace data summary.")
    commands = parser.add_subparsers(dest="command", required=True)
    summary = commands.add_parser(
        "summary", help="counts, distributions, skipped files"
    )
    summary.add_argument("--data", help="folder, archive or URL (default: see README)")
    summary.add_argument("--plot", help="save an age histogram and sample faces here")
    summary.add_argument(
        "--histogram", help="save the age histogram alone (no faces) here"
    )
    arguments = parser.parse_args(argv)
    try:
        records, skipped = load_records(locate(arguments.data))
        print(describe(records, skipped))
        for file_name, samples in ((arguments.plot, 16), (arguments.histogram, 0)):
            if file_name:
                import matplotlib

                matplotlib.use("Agg")
                plot_summary(records, file_name, samples=samples)
                print(f"saved {file_name}")
    except (OSError, ValueError) as error:
        print("error: " + " ".join(str(error).split()), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
