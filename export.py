"""A trained age model for other programs, with one input contract for every format:
RGB uint8 face crops (n, side, side, 3) go in, their ages (n,) come out, read out exactly
as `predict --crop none` reads out a face crop (centre square, resized by area as training
resizes, scaled, the test-time views averaged, widened).

    python train_loop.py export --model runs/default/model.keras --format tflite
    python train_loop.py export --model runs/default/model.keras --format onnx
    python train_loop.py export --model runs/default/model.keras --format saved_model

- tflite (LiteRT, phones): a fixed input of --crop-size (default 200, UTKFace's crops and
  `predict`'s framing); built-in ops only (no Select TF ops); --quantize float16 or
  dynamic (int8 weights) for a smaller file.
- onnx (ONNX Runtime and other stacks): the same fixed input (needs tf2onnx to export).
- saved_model (TensorFlow Serving): its default signature takes crops of any size;
  `fixed_size` takes crops of the model's own size.

Each file is then checked on the test faces in its own runtime against the Keras model;
where the data cannot be found the file is written all the same and the check is skipped
(`--check` makes it required).
"""

import argparse
import importlib.util
import os
import shutil
from pathlib import Path

import numpy as np
import tensorflow as tf

import runs
import runtimes
import utk_data
from evaluation import WHOLE_NUMBER, predict_ages
from readout import add_tta_argument, load_model, serving_model, tta_from_arguments

FORMATS = ("saved_model", "tflite", "onnx")
QUANTIZATIONS = ("none", "float16", "dynamic")
SUFFIXES = {"saved_model": "", "tflite": ".tflite", "onnx": ".onnx"}
# The side of the face crops the fixed-size files take: UTKFace's, and predict's framing's.
CROP_SIZE = 200
# The name of the SavedModel's signature of crops of the model's own size.
FIXED_SIZE = "fixed_size"


class AgeServer(tf.Module):
    """The serving functions of a SavedModel: uint8 face crops of any size, or of the
    model's own size, to {"age": (n,)}."""

    def __init__(self, model, tta=True):
        super().__init__()
        self.model = serving_model(model, tta, model.age_widening)
        self.image_size = size = model.image_size
        self.any_size = tf.function(
            self._ages_of_any_size,
            input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, "images")],
        )
        self.fixed_size = tf.function(
            self._ages,
            input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8, "images")],
        )

    def _ages(self, images):
        """{"age": (n,)} of uint8 crops of the model's size."""
        return {"age": self.model(images)}

    def _ages_of_any_size(self, images):
        """{"age": (n,)} of uint8 crops of any size, resized as predict resizes them."""
        size = self.image_size
        resized = utk_data.resize_square(images, size)
        return self._ages(tf.ensure_shape(resized, [None, size, size, 3]))


def export_saved_model(model, folder, tta=True):
    """Write `model` as a SavedModel into `folder`, a new or empty folder or one that holds
    an earlier export and nothing else (replaced); return it."""
    folder = Path(folder)
    _check_saved_model_folder(folder)
    server = AgeServer(model, tta)
    signatures = {"serving_default": server.any_size, FIXED_SIZE: server.fixed_size}
    # Written beside it, then moved in: an interrupted export leaves the old one whole.
    written = folder.with_name(f".tmp-{os.getpid()}-{folder.name}")
    tf.saved_model.save(server, str(written), signatures=signatures)
    if folder.exists():
        shutil.rmtree(folder)  # An export, or empty: _check_saved_model_folder said so.
    os.replace(written, folder)
    return folder


# What tf.saved_model.save writes into a SavedModel's folder.
SAVED_MODEL_ENTRIES = {"saved_model.pb", "fingerprint.pb", "variables", "assets"}


def _check_saved_model_folder(folder):
    """Refuse (ValueError) an --out that export may not replace: a file, or a folder that
    holds anything but an earlier export's files."""
    if not folder.exists():
        return
    if not folder.is_dir():
        raise ValueError(f"--out {folder}: a file; a SavedModel is written as a folder")
    entries = {entry.name for entry in folder.iterdir()}
    if entries - SAVED_MODEL_ENTRIES or (entries and "saved_model.pb" not in entries):
        raise ValueError(
            f"--out {folder}: a folder that holds other files; export writes a SavedModel "
            "only into a new or empty folder, or over an earlier export"
        )


def _check_file_path(path, suffix):
    """Refuse (ValueError) an --out that export may not write: a folder, an existing
    file that is not a `suffix` file, or a name without `suffix` (Keras' writers need
    it)."""
    if path.is_dir():
        raise ValueError(f"--out {path}: a folder; give the {suffix} file to write")
    if path.exists() and path.suffix != suffix:
        raise ValueError(
            f"--out {path}: an existing file that is not a {suffix} file; export "
            "replaces only an earlier export"
        )
    if path.suffix != suffix:
        raise ValueError(f"--out {path}: the file's name must end in {suffix}")


def _export_file(model, path, form, tta, crop_size, **options):
    """Write `model`, read out as `predict` reads it out (readout.serving_model) for uint8
    crops of crop_size, through Keras' export in `form` ("litert" or "onnx"), atomically
    at `path`; return the path."""
    path = Path(path)
    _check_file_path(path, {"litert": ".tflite", "onnx": ".onnx"}[form])
    served = serving_model(model, tta, model.age_widening, crop_size)
    signature = [
        tf.TensorSpec((None, crop_size, crop_size, 3), tf.uint8, name="images")
    ]

    def write(temporary):
        served.export(
            str(temporary),
            format=form,
            verbose=False,
            input_signature=signature,
            **options,
        )

    runs.atomic_write(path, write)
    return path


def export_tflite(model, path, quantize="none", tta=True, crop_size=CROP_SIZE):
    """Write `model` as a LiteRT file of built-in ops only (_export_file): with `quantize`
    "float16" the weights are stored as float16, with "dynamic" as int8 (the activations
    stay float)."""
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize must be one of {QUANTIZATIONS}, got {quantize!r}")
    options = {"target_spec": {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]}}
    if quantize != "none":
        options["optimizations"] = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        options["target_spec"]["supported_types"] = [tf.float16]
    return _export_file(model, path, "litert", tta, crop_size, **options)


def export_onnx(model, path, tta=True, crop_size=CROP_SIZE):
    """Write `model` as an ONNX file (_export_file). Needs tf2onnx."""
    if importlib.util.find_spec("tf2onnx") is None:
        raise ValueError(
            "--format onnx needs the tf2onnx package: pip install -r requirements-dev.txt"
        )
    return _export_file(model, path, "onnx", tta, crop_size)


def saved_model_ages(folder, images, batch_size=64):
    """Ages (n,) that a SavedModel's default signature gives for uint8 crops."""
    serve = tf.saved_model.load(str(folder)).signatures["serving_default"]
    return np.concatenate(
        [
            serve(images=tf.constant(images[start : start + batch_size]))["age"].numpy()
            for start in range(0, len(images), batch_size)
        ]
    )


def _size_mb(path):
    path = Path(path)
    files = path.rglob("*") if path.is_dir() else [path]
    return sum(file.stat().st_size for file in files if file.is_file()) / 1e6


def export_model(model_path, form, out=None, quantize="none", tta=True, crop_size=None):
    """Export a model.keras in `form` (see the module's docstring); return (the Keras
    model, the path written)."""
    if form not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {form!r}")
    model = load_model(model_path)
    suffix = "" if quantize == "none" else f"_{quantize}"
    name = "saved_model" if form == "saved_model" else f"model{suffix}{SUFFIXES[form]}"
    out = Path(out or Path(model_path).with_name(name))
    if form == "saved_model":
        return model, export_saved_model(model, out, tta)
    if form == "onnx":
        return model, export_onnx(model, out, tta, crop_size or CROP_SIZE)
    return model, export_tflite(model, out, quantize, tta, crop_size or CROP_SIZE)


def test_face_crops(data=None, limit=None, crop_size=CROP_SIZE):
    """(uint8 crops (n, crop_size, crop_size, 3), their true ages (n,)) of the test split,
    decoded in full as predict decodes them."""
    _, _, test = utk_data.load_splits(data, limit)
    paths = [str(record.path) for record in test]
    indices, images, _ = utk_data.decode_files(paths, crop_size, scaled=False)
    return images.numpy(), np.array([test[i].age for i in indices], np.float64)


def compare_on_test_faces(model, path, form, crops, true, tta=True):
    """{"keras_mae", "exported_mae", "largest_difference", "mean_difference", "faces"} of
    the Keras model read out as predict reads it out, and of its export in its runtime,
    on the same crops."""
    resized = utk_data.resize_square(crops, model.image_size).numpy()
    keras_ages = predict_ages(
        model, resized / 255.0, tta=tta, widening=model.age_widening
    )
    if form == "saved_model":
        exported = saved_model_ages(path, crops)
    else:
        exported = np.concatenate(
            [
                runtimes.file_ages(path, crops[i : i + 64])
                for i in range(0, len(crops), 64)
            ]
        )
    difference = np.abs(exported - keras_ages)
    return {
        "keras_mae": float(np.abs(keras_ages - true).mean()),
        "exported_mae": float(np.abs(exported - true).mean()),
        "largest_difference": float(difference.max()),
        "mean_difference": float(difference.mean()),
        "faces": int(true.size),
    }


# ---------------------------------------------------------------------------------------
# The `export` command of train_loop.py
# ---------------------------------------------------------------------------------------


def _crop_size(text):
    """A --crop-size: a whole number of pixels from 32 to 1024."""
    if not text.isdigit() or not 32 <= int(text) <= 1024:
        raise argparse.ArgumentTypeError(
            f"must be a whole number in 32..1024, got {text}"
        )
    return int(text)


def add_export_arguments(parser):
    """The arguments of `python train_loop.py export`."""
    parser.add_argument("--model", required=True, help="a model.keras file")
    parser.add_argument("--format", required=True, choices=FORMATS, dest="form")
    parser.add_argument(
        "--quantize",
        choices=QUANTIZATIONS,
        default="none",
        help="tflite: float16 or dynamic (int8) weights (default: none, float32)",
    )
    parser.add_argument(
        "--crop-size",
        type=_crop_size,
        metavar="PIXELS",
        help=f"tflite, onnx: the side of the face crops the file takes (default: "
        f"{CROP_SIZE})",
    )
    parser.add_argument(
        "--out",
        help="the folder or file to write (default: saved_model/, model.tflite or "
        "model.onnx beside the model)",
    )
    parser.add_argument("--data", help="folder, archive or URL of UTKFace (the check)")
    parser.add_argument("--limit", type=WHOLE_NUMBER, help="as given to train")
    parser.add_argument(
        "--check",
        action="store_true",
        help="fail when the check on the test faces cannot run (no data)",
    )
    add_tta_argument(parser)


def export_command(arguments, parser):
    """`export`: write the model in another format; print its size and its test MAE beside
    the Keras model's, each run in its own runtime."""
    if arguments.form != "tflite" and arguments.quantize != "none":
        parser.error("--quantize is for --format tflite")
    tta = tta_from_arguments(arguments)
    model, path = export_model(
        arguments.model,
        arguments.form,
        arguments.out,
        arguments.quantize,
        tta,
        arguments.crop_size,
    )
    print(f"wrote {path} ({_size_mb(path):.1f} MB)")
    flex = runtimes.flex_ops(path) if arguments.form == "tflite" else []
    if flex:
        raise ValueError(f"{path} holds Select TF ops: {', '.join(flex)}")
    try:
        crops, true = test_face_crops(
            arguments.data, arguments.limit, arguments.crop_size or CROP_SIZE
        )
    except (FileNotFoundError, ValueError) as error:
        if arguments.check:
            raise
        print(
            f"check skipped: no test faces to check it on ({error}); the file is "
            "written. Run the same command with --data PATH --check to check it."
        )
        return 0
    found = compare_on_test_faces(model, path, arguments.form, crops, true, tta)
    print(
        f"test MAE on {found['faces']:,} faces: Keras model {found['keras_mae']:.3f}, "
        f"{arguments.form} {found['exported_mae']:.3f} "
        f"({found['exported_mae'] - found['keras_mae']:+.3f}); a face's age differs by "
        f"{found['mean_difference']:.3f} years on average, "
        f"{found['largest_difference']:.3f} at most"
    )
    return 0
