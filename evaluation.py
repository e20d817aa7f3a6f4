"""Evaluation of a trained age model: its predictions over datasets (with the test-time
views of readout.py), metrics by age, gender and race, the widening fitted on the
validation faces, the median baseline, the figures, and the `evaluate` and `baseline`
commands.

    found = evaluation.predict_records(model, test_records, tta=True)
    metrics = evaluation.evaluate_predictions(found.true, found.predicted, found.groups)
"""

import json
from pathlib import Path
from typing import NamedTuple

import keras
import numpy as np

import plots
import readout
import runs
import utk_data
from model import age_labels, age_quantiles, model_head, model_inputs
from config import AT_LEAST_ONE
from flags import checked_number
from metrics import balanced_mae, evaluate_predictions, median_baseline
from runs import INTERVALS, PREDICTION_COLUMNS, UNKNOWN_ATTRIBUTES_COLUMNS

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


def predict_dataset(
    model, dataset, with_groups=False, attributes_known=True, tta=False, widening=None
):
    """True and predicted ages, (n,) each, over a dataset of (images, labels).

    With with_groups=True, also a dict of the gender and race labels, (n,) each (empty when
    the dataset has no attributes), from the same single pass over the dataset. A model with
    attribute inputs gets the true gender and race, or "unknown" with attributes_known=False.
    The ages are read out with the views of `tta` and widened by `widening`
    (readout.read_ages).
    """
    predict = readout.age_reader(model, tta, widening)
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


def predict_records(
    model, records, batch_size=64, attributes_known=True, tta=False, widening=None
):
    """Predict the ages of records (or of DecodedImages, decoded before), read out as
    predict_dataset says; a face whose image fails to decode is left out (warned)."""
    decoded = records
    if not isinstance(records, utk_data.DecodedImages):
        decoded = utk_data.decode_records(records, model.image_size)
    dataset = evaluation_dataset(decoded, model.image_size, batch_size)
    true, predicted, groups = predict_dataset(
        model, dataset, True, attributes_known, tta, widening
    )
    return Predictions(decoded.records, true, predicted, groups)


WIDENING_FACTORS = np.round(np.arange(1.0, 1.2001, 0.005), 3)


def fit_widening(true, predicted):
    """The (centre, factor below it, factor above it) of widen_ages that gives these
    predictions (of the validation faces) the lowest balanced_mae: the centre is their
    median, each factor one of WIDENING_FACTORS (the smallest among equals, so 1.0 on a
    side where none helps).

    A network trained with the L1 loss predicts, for each image, the median age of the
    faces that look like it. Old faces are few (about one in nine is 60 or over), so most
    faces that look old are younger than the oldest, and the median it learns for them
    is too young: their predictions are pulled towards the middle ages, and the
    youngest faces' upwards. Widening moves every prediction away from the middle in
    proportion. It costs the many faces near the middle a little and gives the few far
    from it more, in the measure that makes every decade of age count the same. The two
    sides get a factor each: the pull is not the same on both (the old faces are fewer
    than the children, and no age lies below 0)."""
    true = np.asarray(true, np.float64)
    predicted = np.asarray(predicted, np.float64)
    centre = float(np.median(predicted))
    errors = np.array(
        [
            [
                balanced_mae(
                    true, readout.widen_ages(predicted, (centre, below, above))
                )
                for above in WIDENING_FACTORS
            ]
            for below in WIDENING_FACTORS
        ]
    )
    # The first minimum in this order: the smallest factor below, then above.
    i, j = np.unravel_index(int(np.argmin(errors)), errors.shape)
    return centre, float(WIDENING_FACTORS[i]), float(WIDENING_FACTORS[j])


def predict_ages(model, images, batch_size=64, tta=False, widening=None):
    """Predicted ages (n,) for float images in [0, 1] of the model's input size, read out
    with the views of `tta` and widened by `widening` (readout.read_ages); gender and race,
    if the model takes them, unknown."""
    predict = readout.age_reader(model, tta, widening)
    ages = [
        predict(model_inputs(model, images[start : start + batch_size]))
        for start in range(0, len(images), batch_size)
    ]
    return np.concatenate([batch.numpy()[:, 0] for batch in ages])


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
    return {runs.quantile_column(q): found[:, i] for i, q in enumerate(quantiles)}


class Readouts(NamedTuple):
    """A model's predictions of the validation and test faces, each face alone and averaged
    over the views of test-time augmentation (readout.TTA_ZOOMS): {column of PREDICTION_COLUMNS
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
                column: found._replace(
                    predicted=readout.widen_ages(found.predicted, widening)
                )
                for column, found in columns.items()
            }

        quantiles = {
            column: readout.widen_ages(ages, widening)
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


def save_figures(model_path, true, predicted, folder):
    """Save the evaluation plot, and the learning curve of the run beside the model."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    plots.plot_evaluation(true, predicted, folder / "evaluation.png")
    history = runs.read_history(Path(model_path).parent)
    if history is not None:
        plots.plot_history(history, folder / "learning_curve.png")
    print(f"saved figures in {folder}")


# ---------------------------------------------------------------------------------------
# The `evaluate` and `baseline` commands of train_loop.py
# ---------------------------------------------------------------------------------------

# A --limit: a whole number of 1 or more.
WHOLE_NUMBER = checked_number(int, AT_LEAST_ONE)
# The splits `evaluate` reads out, in the order utk_data.load_splits returns them.
SPLITS = ("train", "val", "test")


def add_data_argument(parser):
    """The --data flag of the commands that read UTKFace."""
    parser.add_argument("--data", help="folder, archive or URL of UTKFace")


def add_evaluate_arguments(parser):
    """The arguments of `python train_loop.py evaluate`."""
    parser.add_argument("--model", required=True, help="a model.keras file")
    add_data_argument(parser)
    parser.add_argument(
        "--limit", type=WHOLE_NUMBER, help="as given to train (quick runs)"
    )
    parser.add_argument(
        "--split",
        choices=SPLITS,
        default="test",
        help="the faces to evaluate: train (not augmented), val or test (default: test)",
    )
    parser.add_argument(
        "--unknown-attributes",
        action="store_true",
        help="give a model trained with --attribute-inputs 'unknown' gender and race, "
        "as for a new photo, instead of the true labels",
    )
    parser.add_argument(
        "--figures", help="save evaluation.png (and learning_curve.png) in this folder"
    )
    parser.add_argument(
        "--predictions",
        help=f"write a CSV row per face here, with and without test-time augmentation "
        f"(as train writes {runs.PREDICTIONS} for the test faces)",
    )
    readout.add_tta_argument(parser)


def evaluate_command(arguments, parser):
    """`evaluate`: the metrics of a saved model on a split (the test split by default), as
    JSON."""
    model = readout.load_model(arguments.model)
    if arguments.unknown_attributes and not getattr(model, "attribute_inputs", False):
        parser.error(f"{arguments.model} has no gender and race inputs")
    splits = utk_data.load_splits(arguments.data, arguments.limit)
    faces = splits[SPLITS.index(arguments.split)]
    faces = utk_data.decode_records(faces, model.image_size)  # once for both readouts
    known = not arguments.unknown_attributes
    views = readout.tta_zooms(arguments.tta_zooms)
    readouts = {  # Both readouts, as train writes them; the asked-for one first.
        PREDICTION_COLUMNS[tta]: predict_records(
            model,
            faces,
            attributes_known=known,
            tta=views if tta else False,
            widening=model.age_widening,
        )
        for tta in (arguments.tta, not arguments.tta)
    }
    found = readouts[PREDICTION_COLUMNS[arguments.tta]]
    print(
        json.dumps(
            evaluate_predictions(found.true, found.predicted, found.groups), indent=2
        )
    )
    if arguments.predictions:
        runs.write_predictions(arguments.predictions, dict(sorted(readouts.items())))
    if arguments.figures:
        save_figures(arguments.model, found.true, found.predicted, arguments.figures)
    return 0


def baseline_command(arguments, parser):
    """`baseline`: the median predictor's test metrics, as JSON."""
    train_records, _, test = utk_data.load_splits(arguments.data)
    print(json.dumps(median_baseline(train_records, test), indent=2))
    return 0
