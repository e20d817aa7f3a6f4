"""Evaluation of a trained age model: its predictions (with test-time augmentation), metrics
by age, gender and race, the median baseline, the per-face predictions file, and the figures.

    metrics = evaluation.read_metrics("runs/cpu")       # what train wrote
    found = evaluation.predict_records(model, test_records, tta=True)
    again = evaluation.evaluate_predictions(found.true, found.predicted, found.groups)

It also owns the files of a run's folder: how they are written (atomically) and read.
"""

import argparse
import csv
import hashlib
import json
import os
import weakref
from pathlib import Path
from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf

import utk_data
from model import age_labels, age_quantiles, ages_from_outputs, model_head, model_inputs

# The files `train` writes into a run's folder, beside model.keras and the checkpoint.
METRICS = "metrics.json"
HISTORY = "history.json"
# Every run writes its test predictions here: a row per test face.
PREDICTIONS = "test_predictions.csv"
# Test-time augmentation (TTA) predicts each face as it is and zoomed in on its centre, by
# the ends and the middle of the training augmentation's zooms (crops of 88-100 % of the
# side), each view also mirrored, and averages the six ages. The three zooms were chosen on
# the validation faces (bench/bench_tta.py); a run's metrics.json records the zooms it used.
TTA_ZOOMS = (1.0, 0.94, 0.88)
# The prediction columns, by whether test-time augmentation averaged the views.
PREDICTION_COLUMNS = {False: "predicted_no_tta", True: "predicted_tta"}
# A model with gender and race inputs given "unknown" for them (Optional task).
UNKNOWN_ATTRIBUTES_COLUMNS = {
    tta: f"{column}_attributes_unknown" for tta, column in PREDICTION_COLUMNS.items()
}
# A run whose readout is widened (fit_widening) also keeps its reported readout before it.
UNWIDENED_COLUMNS = {
    tta: f"{column}_unwidened" for tta, column in PREDICTION_COLUMNS.items()
}
# The quantiles of a classification head's age distribution kept per test face: the 50 %
# and 90 % central intervals, whose calibration the report shows.
INTERVALS = {"50 %": (0.25, 0.75), "90 %": (0.05, 0.95)}

# ---------------------------------------------------------------------------------------
# A run's files
# ---------------------------------------------------------------------------------------


def atomic_write(path, write):
    """Call write(temporary) and rename the file it wrote to `path`: a kill at any moment
    leaves the old file or the new one, never half of one."""
    # The temporary name keeps the suffix: Keras only saves to a name ending in .keras.
    temporary = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    write(temporary)
    with open(temporary, "rb") as file:
        os.fsync(file.fileno())
    os.replace(temporary, path)


def write_json(path, value):
    """Write `value` as indented JSON to `path`, atomically."""

    def write(temporary):
        temporary.write_text(json.dumps(value, indent=2) + "\n")

    atomic_write(Path(path), write)


def read_metrics(folder):
    """The metrics.json of a run's folder (FileNotFoundError, naming it, when missing)."""
    return json.loads((Path(folder) / METRICS).read_text())


def read_history(folder):
    """The history.json of a run's folder, a row per epoch; None when it has none."""
    path = Path(folder) / HISTORY
    return json.loads(path.read_text()) if path.exists() else None


# ---------------------------------------------------------------------------------------
# Predictions
# ---------------------------------------------------------------------------------------


def evaluation_dataset(images, image_size, batch_size):
    """Batches of (images, labels with gender and race) in order, for validation and tests;
    `images` are records or DecodedImages."""
    return utk_data.make_dataset(
        images, image_size, batch_size, False, with_attributes=True
    )


class Predictions(NamedTuple):
    """Predicted ages paired with the records they belong to."""

    records: list  # the records whose image decoded, in order
    true: np.ndarray  # (n,)
    predicted: np.ndarray  # (n,)
    groups: dict  # "gender" and "race" labels, (n,) each


def _mirrored(inputs):
    """The same inputs with every image mirrored left to right."""
    if isinstance(inputs, dict):
        return {**inputs, "image": keras.ops.flip(inputs["image"], axis=2)}
    return keras.ops.flip(inputs, axis=2)


# The compiled predictors of each live model, so that repeated predictions trace once.
_predictors = weakref.WeakKeyDictionary()


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


def _zoomed(inputs, zoom):
    """The same inputs with every image zoomed in on its centre (utk_data.zoom_centre)."""
    if isinstance(inputs, dict):
        return {**inputs, "image": utk_data.zoom_centre(inputs["image"], zoom)}
    return utk_data.zoom_centre(inputs, zoom)


def tta_views(inputs, tta):
    """The views of the inputs that test-time augmentation `tta` averages (see tta_zooms):
    [inputs] without it."""
    views = []
    for zoom in tta_zooms(tta) or (1.0,):
        zoomed = _zoomed(inputs, zoom)
        views += [zoomed, _mirrored(zoomed)] if tta else [zoomed]
    return views


def age_predictor(model, tta=False):
    """A function from model inputs to ages (batch, 1), compiled: with `tta` (see
    tta_zooms), the mean of the ages predicted for the views of each image; then widened
    by the model's age_widening, when it has one (widen_ages)."""
    compiled = _predictors.setdefault(model, {})
    zooms = tta_zooms(tta)
    if zooms not in compiled:
        compiled[zooms] = _compile_predictor(model, zooms)
    predict = compiled[zooms]
    # The widening is read at each call: train fits it after the predictor was compiled.
    return lambda inputs: widen_ages(
        predict(inputs), getattr(model, "age_widening", None)
    )


def _compile_predictor(model, zooms):
    @tf.function  # A def, not a lambda: autograph cannot read a lambda's source here.
    def predict(inputs):
        ages = [
            ages_from_outputs(model_head(model), model(view, training=False))
            for view in tta_views(inputs, zooms)
        ]
        return tf.add_n(ages) / len(ages)

    return predict


def predict_dataset(
    model, dataset, with_groups=False, attributes_known=True, tta=False
):
    """True and predicted ages, (n,) each, over a dataset of (images, labels).

    With with_groups=True, also a dict of the gender and race labels, (n,) each (empty when
    the dataset has no attributes), from the same single pass over the dataset. A model with
    attribute inputs gets the true gender and race, or "unknown" with attributes_known=False.
    """
    predict = age_predictor(model, tta)
    true, predicted, groups = [], [], {"gender": [], "race": []}
    for images, labels in dataset:
        given = labels if attributes_known and isinstance(labels, dict) else None
        predicted.append(predict(model_inputs(model, images, given)).numpy()[:, 0])
        true.append(age_labels(labels).numpy()[:, 0])
        if isinstance(labels, dict):
            for name in groups:
                groups[name].append(labels[name].numpy())
    ages = np.concatenate(true), np.concatenate(predicted)
    if not with_groups:
        return ages
    return (
        *ages,
        {name: np.concatenate(values) for name, values in groups.items() if values},
    )


def predict_records(model, records, batch_size=64, attributes_known=True, tta=False):
    """Predict the ages of records (or of DecodedImages, decoded before); a face whose image
    fails to decode is left out (warned)."""
    decoded = records
    if not isinstance(records, utk_data.DecodedImages):
        decoded = utk_data.decode_records(records, model.image_size)
    dataset = evaluation_dataset(decoded, model.image_size, batch_size)
    true, predicted, groups = predict_dataset(
        model, dataset, True, attributes_known=attributes_known, tta=tta
    )
    return Predictions(decoded.records, true, predicted, groups)


def load_keras_model(path):
    """The Keras model saved in `path`, or a clear error: FileNotFoundError when there is no
    such file, ValueError when it is not a Keras model file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: no such file (a model.keras that train wrote)"
        )
    if path.is_dir() or path.suffix != ".keras":
        raise ValueError(
            f"{path}: not a Keras model file (a model.keras that train wrote)"
        )
    try:
        return keras.models.load_model(path)
    except Exception as error:  # Keras raises several kinds for a damaged file.
        raise ValueError(f"{path}: not a readable Keras model ({error})") from None


# The factors fit_widening tries: 1.0 (no widening) to 1.2, in steps of 0.005.
WIDENING_FACTORS = np.round(np.arange(1.0, 1.2001, 0.005), 3)


def widen_ages(ages, widening):
    """The ages moved away from the centre of `widening`, (centre, factor), by its factor,
    and kept at 0 or above: max(0, centre + factor * (age - centre)). `ages` as they are
    for None. For NumPy arrays and tensors alike."""
    if widening is None:
        return ages
    centre, factor = widening
    if isinstance(ages, np.ndarray):
        return np.maximum(centre + factor * (ages - centre), 0.0).astype(ages.dtype)
    return keras.ops.maximum(centre + factor * (ages - centre), 0.0)


def fit_widening(true, predicted):
    """The (centre, factor) of widen_ages that gives these predictions (of the validation
    faces) the lowest balanced_mae: the centre is their median, the factor the best of
    WIDENING_FACTORS (the smallest among equals, so 1.0 when none helps).

    A network trained with the L1 loss predicts, for each image, the median age of the
    faces that look like it. Old faces are few (about one in nine is 60 or over), so most
    faces that look old are younger than the oldest, and the median it learns for them
    is too young: their predictions are pulled towards the middle ages, and the
    youngest faces' upwards. Widening moves every prediction away from the middle in
    proportion. It costs the many faces near the middle a little and gives the few far
    from it more, in the measure that makes every decade of age count the same."""
    true = np.asarray(true, np.float64)
    predicted = np.asarray(predicted, np.float64)
    centre = float(np.median(predicted))
    errors = [
        balanced_mae(true, widen_ages(predicted, (centre, factor)))
        for factor in WIDENING_FACTORS
    ]
    return centre, float(WIDENING_FACTORS[int(np.argmin(errors))])


def predict_ages(model, images, batch_size=64, tta=False):
    """Predicted ages (n,) for float images in [0, 1] of the model's input size (with `tta`,
    averaged over their views, see tta_zooms); gender and race, if the model takes them,
    unknown."""
    predict = age_predictor(model, tta)
    ages = [
        predict(model_inputs(model, images[start : start + batch_size]))
        for start in range(0, len(images), batch_size)
    ]
    return np.concatenate([batch.numpy()[:, 0] for batch in ages])


def quantile_column(quantile):
    """The predictions file's column of a quantile: "q05" for 0.05."""
    return f"q{round(quantile * 100):02d}"


def predict_quantiles(model, images, batch_size=64):
    """{"q05", "q25", "q75", "q95": (faces,) ages} of a classification head's predicted
    distribution for DecodedImages (each image alone, not averaged with its mirror)."""
    quantiles = sorted({q for bounds in INTERVALS.values() for q in bounds})
    found = []
    for batch, labels in evaluation_dataset(images, model.image_size, batch_size):
        inputs = model_inputs(
            model, batch, labels
        )  # true gender and race, if it takes them
        logits = model(inputs, training=False)["logits"]
        found.append(keras.ops.convert_to_numpy(age_quantiles(logits, quantiles)))
    found = np.concatenate(found)
    return {quantile_column(q): found[:, i] for i, q in enumerate(quantiles)}


class Readouts(NamedTuple):
    """A model's predictions of the validation and test faces, each face alone and averaged
    over the views of test-time augmentation (TTA_ZOOMS): {column of PREDICTION_COLUMNS
    (and, for a model with gender and race inputs, of UNKNOWN_ATTRIBUTES_COLUMNS on the
    test faces): Predictions}."""

    val: dict
    test: dict
    tta: bool  # which readout the run reports: with test-time augmentation or without
    quantiles: dict  # a classification head's test quantiles (predict_quantiles), or {}

    @property
    def reported(self):
        """The test Predictions of the readout the run reports."""
        return self.test[PREDICTION_COLUMNS[self.tta]]

    @property
    def reported_val(self):
        """The validation Predictions of the readout the run reports."""
        return self.val[PREDICTION_COLUMNS[self.tta]]

    def widened(self, widening):
        """The same readouts, every predicted age widened (widen_ages) by `widening`, as
        a model with that age_widening predicts them; a classification head's quantiles
        too (a map that keeps the order of ages keeps them quantiles)."""

        def widen(columns):
            return {
                column: found._replace(predicted=widen_ages(found.predicted, widening))
                for column, found in columns.items()
            }

        quantiles = {
            column: widen_ages(ages, widening)
            for column, ages in self.quantiles.items()
        }
        return self._replace(
            val=widen(self.val), test=widen(self.test), quantiles=quantiles
        )

    def maes(self):
        """{"val_mae_no_tta", "val_mae_tta", "test_mae_no_tta", "test_mae_tta"} and, for a
        model with gender and race inputs, "test_mae_attributes_unknown" (the reported
        readout given both unknown)."""
        maes = {}
        for split, columns in (("val", self.val), ("test", self.test)):
            for tta, column in PREDICTION_COLUMNS.items():
                found = columns[column]
                name = f"{split}_mae_{'tta' if tta else 'no_tta'}"
                maes[name] = evaluate_predictions(found.true, found.predicted)["mae"]
        unknown = self.test.get(UNKNOWN_ATTRIBUTES_COLUMNS[self.tta])
        if unknown is not None:
            maes["test_mae_attributes_unknown"] = evaluate_predictions(
                unknown.true, unknown.predicted
            )["mae"]
        return maes


def predict_readouts(model, images, batch_size=64, unknown_attributes=False):
    """{column: Predictions} of DecodedImages, with and without test-time augmentation;
    with `unknown_attributes`, a model with gender and race inputs also given both unknown.
    """
    columns = {}
    for tta, column in PREDICTION_COLUMNS.items():
        columns[column] = predict_records(model, images, batch_size, tta=tta)
        if unknown_attributes and getattr(model, "attribute_inputs", False):
            columns[UNKNOWN_ATTRIBUTES_COLUMNS[tta]] = predict_records(
                model, images, batch_size, attributes_known=False, tta=tta
            )
    return columns


def read_out(model, val_images, test_images, batch_size=64, tta=False):
    """Readouts of a model on the validation and test faces (DecodedImages)."""
    quantiles = {}
    if model_head(model) == "classification":
        quantiles = predict_quantiles(model, test_images, batch_size)
    return Readouts(
        predict_readouts(model, val_images, batch_size),
        predict_readouts(model, test_images, batch_size, unknown_attributes=True),
        bool(tta),
        quantiles,
    )


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
        type=float,
        nargs="+",
        default=TTA_ZOOMS,
        metavar="FRACTION",
        help="the views' zooms, the fraction of the side kept around the centre "
        f"(default: {' '.join(map(str, TTA_ZOOMS))}; 1.0 alone: the mirror image only)",
    )


def tta_from_arguments(arguments):
    """The `tta` of predict_ages and its kin that add_tta_argument's flags ask for."""
    return tta_zooms(arguments.tta_zooms) if arguments.tta else False


# ---------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------


def _mae_by(true, predicted, masks):
    """{name: {"mae", "mean_error", "count"}} of the faces each boolean mask selects;
    "mean_error" is the mean of predicted - true age: a pull towards the middle ages shows
    as positive errors for the young and negative ones for the old."""
    errors = predicted - true
    return {
        name: {
            "mae": float(np.abs(errors[inside]).mean()) if inside.any() else None,
            "mean_error": float(errors[inside].mean()) if inside.any() else None,
            "count": int(inside.sum()),
        }
        for name, inside in masks.items()
    }


def mae_by_age(true, predicted):
    """MAE and mean signed error per age bin (0-9, ..., 80+):
    {bin: {"mae", "mean_error", "count"}}."""
    return _mae_by(true, predicted, utk_data.age_bin_masks(true))


def balanced_mae(true, predicted):
    """The mean of the MAEs of the age bins (0-9, ..., 80+) that hold faces: the MAE the
    predictions would have on faces with as many in every bin."""
    errors = np.abs(np.asarray(predicted, np.float64) - np.asarray(true, np.float64))
    masks = [mask for mask in utk_data.age_bin_masks(true).values() if mask.any()]
    return float(np.mean([errors[mask].mean() for mask in masks]))


def evaluate_predictions(true, predicted, groups=None):
    """MAE, RMSE, the balanced MAE (balanced_mae) and MAE by age bin (and by gender and
    race, when labelled) of predictions."""
    errors = predicted - true
    result = {
        "mae": float(np.abs(errors).mean()),
        "rmse": float(np.sqrt((errors**2).mean())),
        "balanced_mae": balanced_mae(true, predicted),
        "mae_by_age": mae_by_age(true, predicted),
        "count": int(true.size),
        # Task 2: a linear output can predict negative ages; a ReLU output clips them to 0.
        "negative_predictions": int(np.sum(predicted < 0)),
        "zero_predictions": int(np.sum(predicted == 0)),
    }
    names = {"gender": utk_data.GENDERS, "race": utk_data.RACES}
    for group, labels in (groups or {}).items():
        masks = {name: labels == index for index, name in enumerate(names[group])}
        result[f"mae_by_{group}"] = _mae_by(true, predicted, masks)
    return result


def median_baseline(train_records, test_records):
    """Test MAE and RMSE of predicting the median training age for every face."""
    median = float(np.median([record.age for record in train_records]))
    errors = np.array([record.age for record in test_records], np.float64) - median
    return {
        "median_age": median,
        "mae": float(np.abs(errors).mean()),
        "rmse": float(np.sqrt((errors**2).mean())),
        "count": int(errors.size),
    }


# ---------------------------------------------------------------------------------------
# The per-face predictions file
# ---------------------------------------------------------------------------------------


def face_id(path):
    """A short, stable name for a face in published results: the first 12 hex digits of
    the SHA-256 of its file name (the name itself holds the date the photo was taken).
    """
    return hashlib.sha256(Path(path).name.encode()).hexdigest()[:12]


def write_predictions(path, readouts, extra=None):
    """Write a CSV row per face: face (face_id), age, gender, race (empty when unknown),
    then one column of predicted ages per entry of `readouts`, {column: Predictions},
    every entry holding the same faces in the same order, and the columns of `extra`,
    {column: (faces,) array} in that order too (such as a head's age quantiles)."""
    columns = {name: found.predicted for name, found in readouts.items()}
    columns.update(extra or {})
    first = next(iter(readouts.values()))
    if any(len(values) != len(first.records) for values in columns.values()):
        raise ValueError("every column must hold the same faces")

    def write(temporary):
        with open(temporary, "w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(["face", "age", "gender", "race", *columns])
            for index, record in enumerate(first.records):
                labels = ["" if label is None else label for label in record[2:4]]
                ages = [f"{values[index]:.4f}" for values in columns.values()]
                writer.writerow([face_id(record.path), record.age, *labels, *ages])

    atomic_write(Path(path), write)


def read_predictions(path):
    """The columns of a predictions CSV: {"face": str array, "age": float array,
    "gender"/"race": float arrays (NaN unknown), and one float array per prediction}."""
    with open(path, newline="") as file:
        rows = list(csv.DictReader(file))
    if not rows:
        raise ValueError(f"{path}: no predictions")
    columns = {"face": np.array([row["face"] for row in rows])}
    for name in rows[0]:
        if name != "face":
            values = [row[name] if row[name] != "" else "nan" for row in rows]
            columns[name] = np.array(values, np.float64)
    return columns


class RunPredictions(NamedTuple):
    """A finished run's test faces, one readout of their predicted ages, from its CSV."""

    face: np.ndarray  # (faces,) face_id strings
    true: np.ndarray  # (faces,) ages
    predicted: np.ndarray  # (faces,)
    gender: np.ndarray  # (faces,) 0 male, 1 female, NaN unknown


def run_predictions(folder, column=None):
    """The RunPredictions of a finished run's test faces, by default of the readout the run
    reports (with test-time augmentation if it used it)."""
    folder = Path(folder)
    if not (folder / PREDICTIONS).exists():
        raise FileNotFoundError(
            f"{folder} has no {PREDICTIONS}; write it with `python train_loop.py "
            f"evaluate --model {folder / 'model.keras'} --predictions "
            f"{folder / PREDICTIONS}`"
        )
    if column is None:
        column = PREDICTION_COLUMNS[bool(read_metrics(folder).get("tta"))]
    table = read_predictions(folder / PREDICTIONS)
    if column not in table:
        raise ValueError(f"{folder / PREDICTIONS} has no column {column}")
    return RunPredictions(table["face"], table["age"], table[column], table["gender"])


# ---------------------------------------------------------------------------------------
# TensorBoard curves
# ---------------------------------------------------------------------------------------

# Under a run's folder: TensorBoard's event files (`tensorboard --logdir RUN/logs`).
LOGS = "logs"
# The training loss is written every LOG_EVERY steps, beside the epochs' scalars.
LOG_EVERY = 20
STEP_LOSS = "train/loss_per_step"
# The history's entries that become TensorBoard scalars, each under its own name.
CURVES = {
    "loss": "train/loss",
    "mae": "train/mae",
    "val_mae": "validation/mae",
    "val_mae_without_ema": "validation/mae_without_average",
    "learning_rate": "train/learning_rate",
    "seconds": "epoch/seconds",
    "images_per_second": "epoch/images_per_second",
}


class Curves:
    """TensorBoard scalars of a run: per epoch the history's entries (CURVES) at the
    epoch's number, and the training loss of every LOG_EVERY-th step at the step's number.
    An epoch is written before its checkpoint; a resumed run first keeps only the curves
    of the epochs its checkpoint holds, so the curves go on with no step twice and none
    missing."""

    def __init__(self, folder, steps_per_epoch, epochs_done=0):
        folder = Path(folder)
        kept = self._written(folder, epochs_done * steps_per_epoch, epochs_done)
        for old in folder.glob("events.out.tfevents.*"):
            old.unlink()
        self.writer = tf.summary.create_file_writer(str(folder))
        with self.writer.as_default():
            for tag, step, value in kept:
                tf.summary.scalar(tag, value, step=step)
        self.writer.flush()

    @staticmethod
    def _written(folder, steps_done, epochs_done):
        """[(tag, step, value)] in the folder's event files of the first `epochs_done`
        epochs (`steps_done` steps)."""
        kept = []
        for path in sorted(folder.glob("events.out.tfevents.*")):
            for event in tf.compat.v1.train.summary_iterator(str(path)):
                for value in event.summary.value:
                    last = steps_done - 1 if value.tag == STEP_LOSS else epochs_done
                    if event.step <= last:
                        number = float(tf.make_ndarray(value.tensor))
                        kept.append((value.tag, event.step, number))
        return kept

    def write(self, row, step_losses):
        """Write an epoch's history row and its steps' losses {step: loss}."""
        with self.writer.as_default():
            for step, loss in step_losses.items():
                tf.summary.scalar(STEP_LOSS, loss, step=step)
            for name, tag in CURVES.items():
                if name in row:
                    tf.summary.scalar(tag, row[name], step=row["epoch"])
        self.writer.flush()


# ---------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------


def save_fig(figure, file_name):
    """Save a figure as every figure of this project is saved."""
    figure.savefig(file_name, dpi=120, bbox_inches="tight")


def plot_history(history, file_name=None):
    """Training and validation MAE per epoch; with an average of the weights, the
    validation MAE of the average and of the weights it averages."""
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    averaged = any(row.get("val_mae_without_ema") is not None for row in history)
    figure, axes = plt.subplots(figsize=(6, 4))
    axes.plot(epochs, [row["mae"] for row in history], label="train MAE (augmented)")
    if averaged:
        axes.plot(
            epochs,
            [row.get("val_mae_without_ema") for row in history],
            label="validation MAE, trained weights",
            alpha=0.6,
        )
    axes.plot(
        epochs,
        [row["val_mae"] for row in history],
        label=(
            "validation MAE, average of the weights" if averaged else "validation MAE"
        ),
    )
    axes.set_xlabel("epoch")
    axes.set_ylabel("MAE (years)")
    axes.legend()
    axes.grid(alpha=0.3)
    if file_name:
        save_fig(figure, file_name)
    return figure


def plot_evaluation(true, predicted, file_name=None):
    """Predicted against true age, and the MAE of each age bin."""
    import matplotlib.pyplot as plt

    figure, (scatter, bars) = plt.subplots(1, 2, figsize=(11, 4.2))
    scatter.scatter(true, predicted, s=4, alpha=0.3)
    scatter.plot([0, utk_data.MAX_AGE], [0, utk_data.MAX_AGE], color="black", lw=1)
    scatter.set_xlabel("true age")
    scatter.set_ylabel("predicted age")
    bins = mae_by_age(true, predicted)
    names = [name for name, row in bins.items() if row["count"]]
    bars.bar(names, [bins[name]["mae"] for name in names])
    bars.set_xlabel("true age")
    bars.set_ylabel("MAE (years)")
    for index, name in enumerate(names):
        bars.annotate(
            f"n={bins[name]['count']}", (index, 0), ha="center", va="bottom", fontsize=7
        )
    figure.tight_layout()
    if file_name:
        save_fig(figure, file_name)
    return figure


def plot_worst(records, true, predicted, count=8, image_size=100):
    """The faces with the largest errors, titled true -> predicted (shown, never saved)."""
    import matplotlib.pyplot as plt

    worst = np.argsort(-np.abs(predicted - true))[:count]
    images = utk_data.load_images([records[i].path for i in worst], image_size).numpy()
    figure, axes = plt.subplots(
        1, len(worst), figsize=(1.6 * len(worst), 2.0), squeeze=False
    )
    for axis, index, image in zip(axes[0], worst, images):
        axis.imshow(image)
        axis.set_title(f"{true[index]:.0f} → {predicted[index]:.0f}", fontsize=9)
        axis.axis("off")
    return figure


def save_figures(model_path, true, predicted, folder):
    """Save the evaluation plot, and the learning curve of the run beside the model."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    plot_evaluation(true, predicted, folder / "evaluation.png")
    history = read_history(Path(model_path).parent)
    if history is not None:
        plot_history(history, folder / "learning_curve.png")
    print(f"saved figures in {folder}")
