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
    train_dataset = make_dataset(train, image_size=96, batch_size=64, training=True)
"""

import argparse
import collections
import hashlib
import math
import os
import re
import shutil
import sys
import tarfile
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np

# TensorFlow is imported lazily (see `_tf`) so that name parsing, record loading and the
# summary command start in a fraction of a second.

REPOSITORY_ROOT = Path(__file__).resolve().parent
# Where tests, benchmarks and CI find the archive: `shared/` beside the repository.
SHARED_ARCHIVE = REPOSITORY_ROOT.parent / "shared" / "data" / "UTKFace.tar.gz"
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
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
# The age groups of reports: 0-9, 10-19, ..., 70-79, and 80 and over.
AGE_BINS = [(low, low + 9) for low in range(0, 80, 10)] + [(80, MAX_AGE)]


def age_bin_name(low, high):
    """ "30-39", or "80+" for the last, open-ended group."""
    return f"{low}+" if high == MAX_AGE else f"{low}-{high}"


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


def _is_archive(path):
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _check_member(archive, name, link_target=None):
    """Refuse a member that would land outside the extraction folder."""
    for label, value in (("path", name), ("link target", link_target)):
        if value is None:
            continue
        parts = Path(value.replace("\\", "/")).parts
        if value.startswith(("/", "\\")) or re.match(r"^[a-zA-Z]:", value):
            raise ValueError(f"{archive}: refusing member {name!r}: absolute {label}")
        if ".." in parts:
            raise ValueError(
                f"{archive}: refusing member {name!r}: '..' in its {label}"
            )


def _extract(archive, target):
    """Extract a .tar(.gz) or .zip archive into the new folder `target`, refusing unsafe members."""
    if archive.name.lower().endswith(".zip"):
        with zipfile.ZipFile(archive) as zip_file:
            for info in zip_file.infolist():
                _check_member(archive, info.filename)
                if (info.external_attr >> 16) & 0o170000 == 0o120000:
                    raise ValueError(
                        f"{archive}: refusing member {info.filename!r}: a link"
                    )
            zip_file.extractall(target)
        return
    with tarfile.open(archive) as tar_file:
        for member in tar_file.getmembers():
            link = member.linkname if member.issym() or member.islnk() else None
            _check_member(archive, member.name, link)
        try:
            # The "data" filter also refuses links that leave the target and device files.
            tar_file.extractall(target, filter="data")
        except tarfile.FilterError as error:
            raise ValueError(f"{archive}: refusing member: {error}") from error


def _extract_once(archive, cache_dir):
    """Extract `archive` into the cache (atomically) unless done before; return the folder."""
    stat = archive.stat()
    stem = re.sub(r"(\.tar\.gz|\.tgz|\.tar|\.zip)$", "", archive.name, flags=re.I)
    final = Path(cache_dir) / f"{stem}-{stat.st_size}-extracted"
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    # Extract beside the final folder, then rename: another process sees either nothing or
    # the complete folder, never half of it.
    temporary = Path(tempfile.mkdtemp(prefix=f".{stem}-", dir=final.parent))
    try:
        print(f"Extracting {archive} into {final} ...", flush=True)
        _extract(archive, temporary)
        try:
            os.rename(temporary, final)
        except OSError:
            if not final.is_dir():
                raise
            # Another process finished first: use its folder.
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return final


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


def _download(url, file_hash, download_dir):
    """Download `url` into `download_dir` once; a failure names the URL and what else to do."""
    import keras

    file_name = Path(url.split("?")[0]).name or "UTKFace.tar.gz"
    try:
        # `get_file` downloads once into the folder and checks the hash when one is known;
        # extraction is ours, since `get_file` only skips unsafe members.
        return keras.utils.get_file(
            fname=file_name,
            origin=url,
            file_hash=file_hash,
            cache_dir=str(download_dir.parent),
            cache_subdir=download_dir.name,
        )
    except ValueError as error:  # The download does not match `file_hash`.
        raise ValueError(f"{url}: {error}") from None
    except Exception as error:  # `get_file` raises a bare Exception on network errors.
        raise FileNotFoundError(
            f"could not download UTKFace from {url}: {error}. "
            f"Check the network, or {ALTERNATIVES}"
        ) from None


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
        if os.environ.get("UTKFACE_DATA"):
            source = os.environ["UTKFACE_DATA"]
        elif SHARED_ARCHIVE.is_file():
            source = SHARED_ARCHIVE
        else:
            source = DEFAULT_URL
    cache_dir = Path(cache_dir) if cache_dir else _default_cache_dir()
    path = source
    if _is_url(source):
        path = _download(str(source), file_hash, Path(download_dir or cache_dir))
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"UTKFace data not found: {path} does not exist")
    if path.is_dir():
        folder = _image_folder(path)
    elif _is_archive(path):
        folder = _image_folder(_extract_once(path, cache_dir))
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
                f"Delete {path} and try again, or {ALTERNATIVES}"
            )
    return folder


# ---------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"IEND\xaeB`\x82"


def _content_problem(path, size):
    """Cheap check of an image file's framing; return a reason, or None when it looks whole."""
    if size == 0:
        return "empty file"
    descriptor = os.open(path, os.O_RDONLY)
    try:
        head = os.pread(descriptor, 8, 0)
        tail = os.pread(descriptor, 1024, max(0, size - 1024))
    finally:
        os.close(descriptor)
    if head.startswith(b"\xff\xd8\xff"):
        # A whole JPEG ends with the end-of-image marker (some writers pad after it); 0xFFD9
        # cannot occur inside the entropy-coded data, so this costs no decode.
        return None if b"\xff\xd9" in tail else "truncated JPEG (no end marker)"
    if head == _PNG_SIGNATURE:
        return None if _PNG_END in tail[-64:] else "truncated PNG (no IEND chunk)"
    return "not a JPEG or PNG file"


def load_records(folder, verbose=True):
    """Read every file of `folder`: (records of usable images, [(path, reason)] of the rest)."""
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"UTKFace folder not found: {folder}")
    if not folder.is_dir():
        raise NotADirectoryError(f"not a folder: {folder}")
    records, skipped = [], []
    for entry in sorted(os.scandir(folder), key=lambda entry: entry.name):
        if not entry.is_file():
            continue
        path = Path(entry.path)
        label, reason = _parse(entry.name)
        if reason is None:
            reason = _content_problem(path, entry.stat().st_size)
        if reason is None:
            records.append(Record(path, *label))
        else:
            skipped.append((path, reason))
    if not records:
        raise ValueError(
            f"{folder}: no usable images ({len(skipped)} file(s) skipped"
            + (f", e.g. {skipped[0][0].name}: {skipped[0][1]}" if skipped else "")
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


# ---------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------


def _tf():
    import tensorflow as tf

    return tf


def decode_and_resize(contents, image_size):
    """Decode JPEG/PNG bytes to an RGB uint8 (image_size, image_size, 3) tensor."""
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

    image = tf.cond(tf.io.is_jpeg(contents), decode_jpeg_scaled, decode_other)
    image.set_shape([None, None, 3])
    return resize_square(image, image_size)


def resize_square(image, image_size):
    """Centre-crop an RGB image to a square and resize it to uint8 (image_size, image_size, 3)."""
    tf = _tf()
    shape = tf.shape(image)
    side = tf.minimum(shape[0], shape[1])
    top, left = (shape[0] - side) // 2, (shape[1] - side) // 2
    image = image[top : top + side, left : left + side]

    def shrink():
        # "area" averages the pixels under each output pixel: antialiased like PIL's
        # reductions, and about a quarter of the cost of antialiased bilinear here.
        resized = tf.image.resize(image, (image_size, image_size), method="area")
        return tf.cast(tf.round(resized), tf.uint8)

    return tf.cond(side == image_size, lambda: tf.cast(image, tf.uint8), shrink)


def _exif_rotation(path):
    """Return the EXIF orientation tag of an image file (1 when absent)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return int(image.getexif().get(0x0112, 1))
    except Exception as error:
        raise ValueError(
            f"{path}: not a readable JPEG or PNG image ({error})"
        ) from error


def _apply_orientation(image, orientation):
    """Turn an image as its EXIF orientation tag says (what PIL's `exif_transpose` does)."""
    tf = _tf()
    transforms = {
        2: tf.image.flip_left_right,
        3: lambda image: tf.image.rot90(image, 2),
        4: tf.image.flip_up_down,
        5: tf.image.transpose,
        6: lambda image: tf.image.rot90(image, 3),  # rot90 turns counter-clockwise.
        7: lambda image: tf.image.rot90(tf.image.transpose(image), 2),
        8: lambda image: tf.image.rot90(image, 1),
    }
    return transforms[orientation](image) if orientation in transforms else image


def read_images(paths, image_size):
    """Decode image files for prediction as in training, in parallel, EXIF rotation applied.

    Returns float32 images (n, size, size, 3) in [0, 1], the n paths that decoded, and
    [(path, reason)] for the files that could not be read: a bad file is reported, never fatal.
    """
    tf = _tf()
    readable, orientations, failed = [], [], []
    for path in map(str, paths):
        try:
            orientations.append(_exif_rotation(path))
            readable.append(path)
        except ValueError as error:
            failed.append((path, str(error).split(": ", 1)[-1]))
    images = tf.zeros((0, image_size, image_size, 3), tf.uint8)
    if readable:
        indices, images, missing = _decode_paths(readable, image_size)
        for index in missing:
            failed.append(
                (readable[index], "could not decode the image (corrupt data)")
            )
        readable = [readable[index] for index in indices]
        orientations = [orientations[index] for index in indices]
        if any(turn != 1 for turn in orientations):
            # Cropping and resizing to a square commute with these turns and flips.
            images = tf.stack(
                [_apply_orientation(im, turn) for im, turn in zip(images, orientations)]
            )
    return tf.cast(images, tf.float32) / 255.0, readable, failed


def load_images(paths, image_size):
    """Decode image files as `read_images` does; a file that cannot be read is a ValueError."""
    images, _, failed = read_images(paths, image_size)
    if failed:
        path, reason = failed[0]
        raise ValueError(f"{path}: {reason}")
    return images


# ---------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------


class DecodedImages(NamedTuple):
    """Images decoded once and kept in memory, with the records they belong to."""

    images: object  # tf.Tensor (n, size, size, 3) uint8
    records: list  # the records whose images decoded, aligned with `images`
    image_size: int


def _decode_file(path, image_size):
    return decode_and_resize(_tf().io.read_file(path), image_size)


def _decode_paths(paths, image_size):
    """Decode and resize image files in parallel: (indices of those that decoded, their
    uint8 images (n, size, size, 3), indices of those that failed); a file that fails is
    left out, not fatal."""
    tf = _tf()
    dataset = tf.data.Dataset.from_tensor_slices((tf.range(len(paths)), list(paths)))
    dataset = dataset.map(
        lambda index, path: (index, _decode_file(path, image_size)),
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
    indices, images, missing = _decode_paths(paths, image_size)
    if not len(indices):
        raise ValueError(
            f"no image could be decoded, e.g. {paths[0]} (corrupt image data)"
        )
    failed = [paths[index] for index in missing]
    if failed:
        message = f"{len(failed)} image(s) could not be decoded and are left out: " + (
            ", ".join(f"{path} (corrupt image data)" for path in failed[:10])
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


def augment_batch(images, seed):
    """Randomly flip, crop/shift, brighten and contrast a float batch in [0, 1]."""
    tf = _tf()
    batch, height, width = tf.shape(images)[0], tf.shape(images)[1], tf.shape(images)[2]
    seeds = tf.random.experimental.stateless_split(seed, 6)
    uniform = lambda index, low, high: tf.random.stateless_uniform(  # noqa: E731
        [batch], seeds[index], low, high
    )
    flip = uniform(0, 0.0, 1.0) < 0.5
    images = tf.where(flip[:, None, None, None], tf.reverse(images, axis=[2]), images)
    # A crop of 88-100 % of the side anywhere inside the image: a small zoom and shift of
    # the aligned face, without black borders.
    side = uniform(1, 0.88, 1.0)
    top = uniform(2, 0.0, 1.0) * (1.0 - side)
    left = uniform(3, 0.0, 1.0) * (1.0 - side)
    boxes = tf.stack([top, left, top + side, left + side], axis=1)
    images = tf.image.crop_and_resize(
        images, boxes, tf.range(batch), tf.stack([height, width])
    )
    brightness = uniform(4, -0.1, 0.1)[:, None, None, None]
    contrast = uniform(5, 0.8, 1.2)[:, None, None, None]
    mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
    images = (images - mean) * contrast + mean + brightness
    return tf.clip_by_value(images, 0.0, 1.0)


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
    augment=None,
    cache=True,
    with_attributes=False,
    seed=0,
    start_epoch=0,
    epochs=None,
):
    """A `tf.data.Dataset` of (images float32 [0, 1], ages (batch, 1)) batches.

    `records` is a list of Records, or `DecodedImages` from `decode_records` to reuse images
    decoded before (across epochs, resumes and datasets). With `cache` the images are
    decoded once into memory, held by the dataset; without, each batch is read from disk.
    With `training`, the dataset runs from `start_epoch` up to `epochs` (for ever when None),
    each epoch a permutation of the images and an augmentation that depend only on (`seed`,
    epoch): a run resumed at epoch k sees what an uninterrupted one sees.
    """
    tf = _tf()
    augment = training if augment is None else augment
    if augment and not training:
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
        images = decoded.images
        batches = batches.map(
            lambda epoch, number, indices: (
                epoch,
                number,
                indices,
                tf.gather(images, indices),
            )
        )
    else:
        batches = _decode_streaming(batches, records, image_size, batch_size)

    def to_example(epoch, number, indices, images):
        images = tf.cast(images, tf.float32) / 255.0  # (batch, size, size, 3)
        if augment:
            images = augment_batch(images, _batch_seed(seed, epoch, number))
        targets = tf.nest.map_structure(lambda array: tf.gather(array, indices), labels)
        return images, targets

    dataset = batches.map(to_example, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


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
# Faces in photos: find a face and frame it as UTKFace's aligned crops are framed
# ---------------------------------------------------------------------------------------

# How the box of OpenCV's Haar frontal-face detector sits inside UTKFace's own 200x200
# frames: the frame's side over the box's side, and the frame's centre minus the box's
# centre, in box sides (x to the right, y down). Measured by `python utk_data.py framing`
# (README): the medians over the training faces it found.
# On 372 faces found of 400 (seed 0): the scale's median is 0.995 (10-90 %: 0.90 to 1.10),
# the shifts' 0.007 (-0.01 to 0.03, x) and 0.082 (0.06 to 0.11, y): UTKFace's frames are
# about the detector's box, moved down by a twelfth of it.
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
# predicted the validation faces of the pictures test best (bench/bench_pictures.py
# --split val, README).
FRAME_ZOOM = 0.945
# A picture whose largest face box spans at least this much of its shorter side is already
# a tight face crop. In UTKFace's own frames the detector finds a face in 204 of 372, with a
# box of 0.83 of the side (median; 5 % below 0.70).
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


_cascades = {}


def _cascade(name):
    import cv2

    if name not in _cascades:
        _cascades[name] = cv2.CascadeClassifier(cv2.data.haarcascades + name)
    return _cascades[name]


def find_faces(image, use_eyes=True):
    """Frontal faces in an RGB uint8 image, largest first, each framed as UTKFace's (from
    its box and, with `use_eyes`, from its eyes when both are found)."""
    gray = _gray(image)
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


def _gray(image):
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


def is_tight_crop(image, faces):
    """True when a picture already is a face crop like UTKFace's: a small, about square
    picture, or one whose largest face fills most of it."""
    height, width = image.shape[:2]
    if max(height, width) <= SMALL_PICTURE and 0.8 <= width / height <= 1.25:
        return True
    return bool(faces) and faces[0].box[2] >= TIGHT_CROP * min(height, width)


def _framing(records, seed=0, use_eyes=True):
    """Where the detector's box, and the eyes found in it, sit in UTKFace frames: per face
    found in a larger canvas, a dict of the frame's side over the box's side ("scale") and
    its centre's shift in box sides ("shift_x", "shift_y"); the same over the distance
    between the eyes ("eye_scale", "eye_shift_x", "eye_shift_y", when both were found); the
    error of the frame `frame_of` estimates ("error": side over the true side,
    "error_x"/"error_y": centre shift in true sides); and "span", the box side over the
    frame side when the detector finds the face in the 200x200 frame itself, or None."""
    rng = np.random.default_rng(seed)
    rows = []
    for record in records:
        face = read_photo(record.path)
        size = face.shape[0]
        canvas = rng.integers(90, 166, (3 * size, 3 * size, 3), dtype=np.uint8)
        left, top = (int(v) for v in rng.integers(0, 2 * size, 2))
        canvas[top : top + size, left : left + size] = face
        inside = [
            found
            for found in find_faces(canvas, use_eyes)
            if left <= found.box[0] + found.box[2] / 2 < left + size
            and top <= found.box[1] + found.box[3] / 2 < top + size
        ]
        if not inside:
            continue
        (x, y, width, height), frame, eyes = inside[0]
        centre_x, centre_y = left + size / 2, top + size / 2
        if not use_eyes:  # The eyes are looked for all the same, for their own rows.
            eyes = find_eyes(_gray(canvas), (x, y, width, height))
        row = {
            "scale": size / width,
            "shift_x": (centre_x - x - width / 2) / width,
            "shift_y": (centre_y - y - height / 2) / width,
            "error": frame[2] / size,
            "error_x": (frame[0] + frame[2] / 2 - centre_x) / size,
            "error_y": (frame[1] + frame[2] / 2 - centre_y) / size,
        }
        if eyes is not None:
            distance = math.dist(*eyes)
            row["eye_scale"] = size / distance
            row["eye_shift_x"] = (centre_x - (eyes[0][0] + eyes[1][0]) / 2) / distance
            row["eye_shift_y"] = (centre_y - (eyes[0][1] + eyes[1][1]) / 2) / distance
        in_frame = find_faces(face, use_eyes=False)
        row["span"] = in_frame[0].box[2] / size if in_frame else None
        rows.append(row)
    return rows


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
            f"{age_bin_name(low, high)}: {np.sum((ages >= low) & (ages <= high)):,}"
            for low, high in AGE_BINS
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
        lines.append(f"skipped {path}: {reason}")
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


def framing_command(arguments):
    """Print the medians and spreads of the framing measurement (FRAME_SCALE and so on)."""
    records, _ = load_records(locate(arguments.data), verbose=False)
    train, _, _ = split_records(records)
    chosen = [train[i] for i in np.random.default_rng(0).permutation(len(train))]
    rows = _framing(chosen[: arguments.images], use_eyes=not arguments.no_eyes)
    print(f"faces found in a 3x canvas: {len(rows)} of {arguments.images}")
    with_eyes = [row for row in rows if "eye_scale" in row]
    print(f"both eyes found in {len(with_eyes)} of them")
    names = {
        "scale": "frame side / box side",
        "shift_x": "centre shift x (box sides)",
        "shift_y": "centre shift y (box sides)",
        "eye_scale": "frame side / eye distance",
        "eye_shift_x": "centre shift x from the eyes (eye distances)",
        "eye_shift_y": "centre shift y from the eyes (eye distances)",
        "error": f"frame_of's side / true side (zoom {FRAME_ZOOM} included)",
        "error_x": "frame_of's centre - true centre, x (true sides)",
        "error_y": "frame_of's centre - true centre, y (true sides)",
    }
    for key, name in names.items():
        values = np.array([row[key] for row in rows if key in row])
        low, median, high = np.percentile(values, [10, 50, 90])
        print(f"{name}: median {median:.3f} (10-90 %: {low:.3f} to {high:.3f})")
    errors = np.log(np.array([row["error"] for row in rows]) / FRAME_ZOOM)
    print(
        "frame_of's side, mean |log(side / (zoom * true side))|: "
        f"{np.abs(errors).mean():.4f}"
    )
    spans = np.array([row["span"] for row in rows if row["span"] is not None])
    low, median = np.percentile(spans, [5, 50])
    print(
        f"found in the 200x200 frame itself: {len(spans)} of {len(rows)}; box side / frame "
        f"side: median {median:.3f}, 5 % below {low:.3f}"
    )
    return 0


def main(argv=None):
    """The `summary` and `framing` command line."""
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
    framing = commands.add_parser(
        "framing", help="measure how the face detector's box sits in UTKFace's frames"
    )
    framing.add_argument("--data", help="folder, archive or URL (default: see README)")
    framing.add_argument("--images", type=int, default=400, help="training faces")
    framing.add_argument(
        "--no-eyes", action="store_true", help="frame from the box alone"
    )
    arguments = parser.parse_args(argv)
    if arguments.command == "framing":
        return framing_command(arguments)
    records, skipped = load_records(locate(arguments.data))
    print(describe(records, skipped))
    for file_name, samples in ((arguments.plot, 16), (arguments.histogram, 0)):
        if file_name:
            import matplotlib

            matplotlib.use("Agg")
            plot_summary(records, file_name, samples=samples)
            print(f"saved {file_name}")


if __name__ == "__main__":
    sys.exit(main())
