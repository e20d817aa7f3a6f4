"""A trained age model for other programs: a SavedModel (TensorFlow Serving,
`tf.saved_model.load`) or a TFLite file (phones), each checked against the Keras model.

    python train_loop.py export --model runs/default/model.keras --format saved_model
    python train_loop.py export --model runs/default/model.keras --format tflite --quantize float16

The SavedModel's default signature takes a batch of RGB uint8 face images of any size
(`images`: (n, height, width, 3)), crops each to its centre square and resizes it to the
model's input as training did, and returns their ages (`age`: (n,) float32); a second
signature, `fixed_size`, takes images of the model's own size, as the TFLite file does (a
phone app resizes the face itself). Both average each face's age over the views of
test-time augmentation (the face as it is and zoomed in on its centre, each also mirrored),
as `predict` does, unless exported with `--no-tta`.
"""

import os
import shutil
from pathlib import Path

import numpy as np
import tensorflow as tf

import runs
import utk_data
from evaluation import predict_ages
from readout import add_tta_argument, load_model, serving_model, tta_from_arguments

FORMATS = ("saved_model", "tflite")
QUANTIZATIONS = ("none", "float16", "dynamic")
# The name of the signature of images of the model's own size.
FIXED_SIZE = "fixed_size"


class AgeServer(tf.Module):
    """The serving functions of a SavedModel: uint8 face images of any size, or of the
    model's own size, to {"age": (n,)}."""

    def __init__(self, model, tta=True):
        super().__init__()
        self.model = serving_model(model, tta, model.age_widening)
        self.image_size = model.image_size
        size = self.image_size
        self.any_size = tf.function(
            self._ages_of_any_size,
            input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, "images")],
        )
        self.fixed_size = tf.function(
            self._ages,
            input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8, "images")],
        )

    def _ages(self, images):
        """{"age": (n,)} of uint8 images of the model's size."""
        return {"age": self.model(images)}

    def _ages_of_any_size(self, images):
        """{"age": (n,)} of uint8 images of any size, resized as in training."""
        return self._ages(utk_data.resize_square(images, self.image_size))


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


def _check_tflite_path(path):
    """Refuse (ValueError) an --out that export may not write: a folder, or an existing
    file that is not a TFLite file."""
    if path.is_dir():
        raise ValueError(f"--out {path}: a folder; give the .tflite file to write")
    if path.exists() and path.suffix != ".tflite":
        raise ValueError(
            f"--out {path}: an existing file that is not a .tflite file; export replaces "
            "only an earlier export"
        )


def export_tflite(model, path, quantize="none", tta=True):
    """Convert `model` (with its scaling and test-time views, see serving_model) into a
    TFLite file at `path`: with `quantize` "float16" the weights are stored as float16,
    with "dynamic" as int8 (the activations stay float); return the path. (Converted from
    the Keras graph: TensorFlow 2.21's converter reads Keras 3 variables wrongly from a
    SavedModel or a tf.function, and the file then gives NaN.)"""
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize must be one of {QUANTIZATIONS}, got {quantize!r}")
    converter = tf.lite.TFLiteConverter.from_keras_model(
        serving_model(model, tta, model.age_widening)
    )
    if quantize != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    path = Path(path)
    _check_tflite_path(path)
    contents = converter.convert()
    runs.atomic_write(path, lambda temporary: temporary.write_bytes(contents))
    return path


def saved_model_ages(folder, images, batch_size=64):
    """Ages (n,) that a SavedModel's default signature gives for uint8 images."""
    serve = tf.saved_model.load(str(folder)).signatures["serving_default"]
    return np.concatenate(
        [
            serve(images=tf.constant(images[start : start + batch_size]))["age"].numpy()
            for start in range(0, len(images), batch_size)
        ]
    )


def tflite_ages(path, images):
    """Ages (n,) that a TFLite file gives for uint8 images of its input size, one image at
    a time as a phone app would run it."""
    interpreter = tf.lite.Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    given, found = (
        interpreter.get_input_details()[0],
        interpreter.get_output_details()[0],
    )
    ages = []
    for image in images:
        interpreter.set_tensor(given["index"], np.asarray(image)[None])
        interpreter.invoke()
        ages.append(float(interpreter.get_tensor(found["index"]).reshape(-1)[0]))
    return np.array(ages)


def _size_mb(path):
    path = Path(path)
    files = path.rglob("*") if path.is_dir() else [path]
    return sum(file.stat().st_size for file in files if file.is_file()) / 1e6


def export_model(model_path, form, out=None, quantize="none", tta=True):
    """Export a model.keras as a SavedModel folder or a TFLite file (see the module's
    docstring); return (the Keras model, the path written)."""
    if form not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {form!r}")
    model = load_model(model_path)
    if form == "saved_model":
        out = Path(out or Path(model_path).with_name("saved_model"))
        return model, export_saved_model(model, out, tta)
    suffix = "" if quantize == "none" else f"_{quantize}"
    out = Path(out or Path(model_path).with_name(f"model{suffix}.tflite"))
    return model, export_tflite(model, out, quantize, tta)


def compare_on_test_faces(model, path, form, data=None, limit=None, tta=True):
    """{"keras_mae", "exported_mae", "faces"} of the Keras model and of its export on the
    test split (the faces decoded as in training, at the model's size)."""
    _, _, test = utk_data.load_splits(data, limit)
    decoded = utk_data.decode_records(test, model.image_size)
    images = decoded.images.numpy()
    true = np.array([record.age for record in decoded.records], np.float64)
    keras_ages = predict_ages(
        model, images.astype(np.float32) / 255.0, tta=tta, widening=model.age_widening
    )
    exported = saved_model_ages if form == "saved_model" else tflite_ages
    exported_ages = exported(path, images)
    return {
        "keras_mae": float(np.abs(keras_ages - true).mean()),
        "exported_mae": float(np.abs(exported_ages - true).mean()),
        "largest_difference": float(np.abs(exported_ages - keras_ages).max()),
        "faces": int(true.size),
    }


# ---------------------------------------------------------------------------------------
# The `export` command of train_loop.py
# ---------------------------------------------------------------------------------------


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
        "--out",
        help="the folder or file to write (default: saved_model/ or model.tflite beside "
        "the model)",
    )
    parser.add_argument("--data", help="folder, archive or URL of UTKFace (the check)")
    parser.add_argument("--limit", type=int, help="as given to train")
    add_tta_argument(parser)


def export_command(arguments, parser):
    """`export`: write the model in another format; print its size and its test MAE beside
    the Keras model's."""
    if arguments.form == "saved_model" and arguments.quantize != "none":
        parser.error("--quantize is for --format tflite")
    model, path = export_model(
        arguments.model,
        arguments.form,
        arguments.out,
        arguments.quantize,
        tta_from_arguments(arguments),
    )
    print(f"wrote {path} ({_size_mb(path):.1f} MB)")
    found = compare_on_test_faces(
        model,
        path,
        arguments.form,
        arguments.data,
        arguments.limit,
        tta_from_arguments(arguments),
    )
    print(
        f"test MAE on {found['faces']:,} faces: Keras model {found['keras_mae']:.3f}, "
        f"{arguments.form} {found['exported_mae']:.3f} "
        f"({found['exported_mae'] - found['keras_mae']:+.3f}); largest difference of a "
        f"face's age {found['largest_difference']:.3f} years"
    )
    return 0
