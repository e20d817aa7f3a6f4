"""A trained age model for other programs: a SavedModel (TensorFlow Serving,
`tf.saved_model.load`) or a TFLite file (phones), each checked against the Keras model.

    python train_loop.py export --model runs/cpu/model.keras --format saved_model
    python train_loop.py export --model runs/cpu/model.keras --format tflite --quantize float16

The SavedModel's default signature takes a batch of RGB uint8 face images of any size
(`images`: (n, height, width, 3)), crops each to its centre square and resizes it to the
model's input as training did, and returns their ages (`age`: (n,) float32); a second
signature, `fixed_size`, takes images of the model's own size, as the TFLite file does (a
phone app resizes the face itself). Both average each face's age over the views of
test-time augmentation (the face as it is and zoomed in on its centre, each also mirrored),
as `predict` does, unless exported with `--no-tta`.
"""

import shutil
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

import utk_data
from evaluation import add_tta_argument, load_keras_model, predict_ages, tta_views
from evaluation import tta_from_arguments, widen_ages
from model import ages_from_outputs, model_inputs

FORMATS = ("saved_model", "tflite")
QUANTIZATIONS = ("none", "float16", "dynamic")
# The name of the signature of images of the model's own size.
FIXED_SIZE = "fixed_size"


def serving_model(model, tta=True):
    """A Keras model from uint8 face images of `model`'s size (n, size, size, 3) to their
    ages (n,): scaled as in training, gender and race "unknown" for a model that takes
    them, each face's age averaged over the views of test-time augmentation `tta`
    (evaluation.tta_zooms), then widened as the model's readout is (its age_widening).
    """
    size = model.image_size
    images = keras.Input((size, size, 3), dtype="uint8", name="images")
    scaled = keras.ops.cast(images, "float32") / 255.0
    ages = [
        ages_from_outputs(model, model(model_inputs(model, view)))
        for view in tta_views(scaled, tta)
    ]
    ages = keras.ops.mean(keras.ops.stack(ages), axis=0)  # (n, 1)
    ages = widen_ages(ages, getattr(model, "age_widening", None))
    return keras.Model(images, keras.ops.reshape(ages, (-1,)), name="age_server")


class AgeServer(tf.Module):
    """The serving functions of a SavedModel: uint8 face images of any size, or of the
    model's own size, to {"age": (n,)}."""

    def __init__(self, model, tta=True):
        super().__init__()
        self.model = serving_model(model, tta)
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
    """Write `model` as a SavedModel into `folder` (replaced if it exists); return it."""
    folder = Path(folder)
    server = AgeServer(model, tta)
    signatures = {"serving_default": server.any_size, FIXED_SIZE: server.fixed_size}
    if folder.exists():
        shutil.rmtree(folder)
    tf.saved_model.save(server, str(folder), signatures=signatures)
    return folder


def export_tflite(model, path, quantize="none", tta=True):
    """Convert `model` (with its scaling and test-time views, see serving_model) into a
    TFLite file at `path`: with `quantize` "float16" the weights are stored as float16,
    with "dynamic" as int8 (the activations stay float); return the path. (Converted from
    the Keras graph: TensorFlow 2.21's converter reads Keras 3 variables wrongly from a
    SavedModel or a tf.function, and the file then gives NaN.)"""
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize must be one of {QUANTIZATIONS}, got {quantize!r}")
    converter = tf.lite.TFLiteConverter.from_keras_model(serving_model(model, tta))
    if quantize != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    Path(path).write_bytes(converter.convert())
    return Path(path)


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
    model = load_keras_model(model_path)
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
    keras_ages = predict_ages(model, images.astype(np.float32) / 255.0, tta=tta)
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
