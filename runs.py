"""Every file of a run's folder: their names, how they are written (atomically) and read.

    runs.read_metrics("runs/default")["test_mae"]      # what train wrote
    runs.run_predictions("runs/default").predicted     # the test faces' ages

A run's folder holds model.keras (the best model), checkpoint.npz (everything a resume
needs), history.json (a row per epoch), metrics.json (the test metrics, the settings, the
command and the machine), test_predictions.csv (a row per test face) and logs/
(TensorBoard's curves). Nothing here imports TensorFlow but the curves, which load it when
they are written.
"""

import csv
import dataclasses
import hashlib
import json
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np

try:  # Not on Windows: a run folder there is used unlocked.
    import fcntl
except ImportError:
    fcntl = None

# The files `train` writes into a run's folder.
MODEL = "model.keras"
CHECKPOINT = "checkpoint.npz"
METRICS = "metrics.json"
HISTORY = "history.json"
# Every run writes its test predictions here: a row per test face.
PREDICTIONS = "test_predictions.csv"

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
# Writing and reading
# ---------------------------------------------------------------------------------------


def atomic_write(path, write):
    """Call write(temporary) and rename the file it wrote to `path`: a kill at any moment
    leaves the old file or the new one, never half of one. A failed write (a full disk)
    removes its temporary file and raises OSError naming `path`."""
    path = Path(path)
    # The temporary name keeps the suffix: Keras only saves to a name ending in .keras.
    temporary = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        write(temporary)
        with open(temporary, "rb") as file:
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        if isinstance(error, OSError) and not isinstance(error, FileNotFoundError):
            raise OSError(
                f"{path} could not be written ({error.strerror or error}); the file "
                "there before is kept"
            ) from None
        raise


def save_model(folder, model):
    """Save `model` as the run's model.keras, atomically."""
    atomic_write(Path(folder) / MODEL, model.save)


def make_run_folder(out):
    """The run folder `out`, made if it is missing (ValueError when it names a file)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: a file, not a folder for a run")
    out.mkdir(parents=True, exist_ok=True)
    return out


# The lock file of a run's folder while a `train` works in it.
LOCK = ".lock"


@contextmanager
def lock(out, holder=True):
    """Hold the run folder `out` for one `train` at a time (ValueError when another holds
    it), and remove the temporary files a killed run left there. The operating system
    releases the lock when its process ends, even by `kill -9`; a folder on a file system
    without locks (some network drives) is used unlocked. `holder` False (a worker that
    writes no files): nothing is held."""
    if not holder:
        yield
        return
    with open(Path(out) / LOCK, "a") as file:
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(
                f"--out {out}: another train is running in this folder; wait for it to "
                "end, or choose another --out"
            ) from None
        except (OSError, AttributeError):  # No locks here: go on without one.
            pass
        _remove_temporaries(out)
        yield


def _remove_temporaries(out):
    """Remove the temporary files (atomic_write's) of runs that were killed mid-write."""
    for temporary in Path(out).glob(".tmp-*"):
        if temporary.is_file():
            temporary.unlink()


def write_json(path, value):
    """Write `value` as indented JSON to `path`, atomically."""

    def write(temporary):
        temporary.write_text(json.dumps(value, indent=2) + "\n")

    atomic_write(Path(path), write)


def read_metrics(folder):
    """The metrics.json of a run's folder (FileNotFoundError, naming it, when missing;
    ValueError, naming it, when it is not a JSON object)."""
    path = Path(folder) / METRICS
    try:
        metrics = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a metrics file ({_reason(error)})") from None
    if not isinstance(metrics, dict):
        raise ValueError(f"{path}: not a metrics file (no JSON object)")
    return metrics


def read_history(folder):
    """The history.json of a run's folder, a row per epoch; None when it has none."""
    path = Path(folder) / HISTORY
    return json.loads(path.read_text()) if path.exists() else None


# ---------------------------------------------------------------------------------------
# Predictions
# ---------------------------------------------------------------------------------------


class Progress(NamedTuple):
    """Where a run stands, derived from its history."""

    epochs_run: int
    best_epoch: Optional[int]
    best_val_mae: Optional[float]
    bad_epochs: int  # epochs since the best one
    train_seconds: float
    finished: bool


def progress(history, config):
    """The run's progress from its history: best epoch, patience used, finished or not.
    Epochs without a validation (progressive resizing's, on smaller images) count
    towards the epochs run, and neither as the best nor against the patience."""
    validated = [row for row in history if row["val_mae"] is not None]
    seconds = sum(row["seconds"] for row in history)
    if not validated:
        return Progress(
            len(history), None, None, 0, seconds, len(history) >= config.epochs
        )
    best = min(validated, key=lambda row: row["val_mae"])  # The first of equal ones.
    bad_epochs = len(history) - best["epoch"]
    return Progress(
        epochs_run=len(history),
        best_epoch=best["epoch"],
        best_val_mae=best["val_mae"],
        bad_epochs=bad_epochs,
        train_seconds=seconds,
        finished=len(history) >= config.epochs or bad_epochs >= config.patience,
    )


# ---------------------------------------------------------------------------------------
# Checkpoints: one .npz file written atomically, holding every model and optimizer variable
# (the dropout seed-generator states among them) by name, and the config and history.
# ---------------------------------------------------------------------------------------


def _variable_names(model, optimizer, average=None):
    """{checkpoint name: variable} of the model and the optimizer.

    A name is the variable's path, e.g. "model/stage1_block1/conv1/kernel", with the names
    that Keras numbers per process (the model's "age_cnn_1", the optimizer's "adam_w_2",
    "seed_generator_3") replaced by their role, so that the same model built in another
    process, or after another model, has the same names.
    """
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    roles = [(model.name, "model"), (optimizer.name, "optimizer")]
    roles.append((inner.name, "inner_optimizer"))
    names = {}
    for role, variables in (("model", model.variables), ("", optimizer.variables)):
        for variable in variables:
            path = re.sub(r"seed_generator_\d+", "seed_generator", variable.path)
            for name, stand_in in roles:
                path = re.sub(rf"(?<![\w]){re.escape(name)}(?=[/_])", stand_in, path)
            if role and not path.startswith(role + "/"):
                path = f"{role}/{path}"  # A seed generator's state, say.
            # Two unnamed objects of one kind (two dropout layers) keep their order.
            unique, count = path, 1
            while unique in names:
                count += 1
                unique = f"{path}#{count}"
            names[unique] = variable
    if average is not None:
        model_names = {id(variable): name for name, variable in names.items()}
        for mean, variable in zip(average.averages, average.variables):
            names["average/" + model_names[id(variable)]] = mean
        names["average/updates"] = average.updates
    return names


def save_checkpoint(folder, model, optimizer, config, history, average=None):
    """Save model, optimizer, weight average, config and history, so that a kill at any
    moment keeps the last good checkpoint."""
    arrays = {
        name: variable.numpy()
        for name, variable in _variable_names(model, optimizer, average).items()
    }
    state = {"config": dataclasses.asdict(config), "history": history}
    arrays["state"] = np.array(json.dumps(state))

    def write(path):
        with open(path, "wb") as file:
            np.savez(file, **arrays)

    atomic_write(Path(folder) / CHECKPOINT, write)


class Checkpoint(NamedTuple):
    """A checkpoint file read into memory."""

    path: Path
    config: dict  # the TrainConfig of the run, as a dict
    history: list  # one dict per finished epoch
    arrays: dict  # {name: array} of every variable


def read_checkpoint(folder):
    """The checkpoint in `folder`, or None when there is none."""
    path = Path(folder) / CHECKPOINT
    if not path.exists():
        return None
    try:
        # allow_pickle=False: an array that is a pickled object is refused, never run.
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
        state = json.loads(str(arrays.pop("state")))
        checkpoint = Checkpoint(path, state["config"], state["history"], arrays)
    except Exception as error:  # NumPy and zipfile raise many kinds for a damaged file.
        raise ValueError(
            f"{path}: not a readable checkpoint ({_reason(error)}); remove it to start "
            "the run again, or choose another --out"
        ) from None
    if not isinstance(checkpoint.config, dict) or not isinstance(
        checkpoint.history, list
    ):
        raise ValueError(f"{path}: not a checkpoint that train wrote")
    return checkpoint


def _reason(error):
    """An exception as a short phrase for a one-line message."""
    text = " ".join(str(error).split())[:200]
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def restore_checkpoint(checkpoint, model, optimizer, average=None):
    """Assign a checkpoint's variables to model, optimizer (and weight average), refusing
    any mismatch."""
    variables = _variable_names(model, optimizer, average)
    wanted = {name: tuple(variable.shape) for name, variable in variables.items()}
    saved = {name: array.shape for name, array in checkpoint.arrays.items()}
    if wanted != saved:
        different = sorted(
            name
            for name in wanted.keys() | saved.keys()
            if wanted.get(name) != saved.get(name)
        )
        raise ValueError(
            f"{checkpoint.path} was saved from another model or optimizer: "
            f"{len(different)} variable(s) differ in name or shape, e.g. "
            f"{', '.join(different[:3])}. Resume it with the command that started it, "
            "or choose another --out"
        )
    for name, variable in variables.items():
        variable.assign(checkpoint.arrays[name])


# ---------------------------------------------------------------------------------------
# The per-face predictions file
# ---------------------------------------------------------------------------------------


def quantile_column(quantile):
    """The predictions file's column of a quantile: "q05" for 0.05."""
    return f"q{round(quantile * 100):02d}"


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


class AlignedPredictions(NamedTuple):
    """Several runs' predictions of the same test faces, the faces in one order."""

    true: np.ndarray  # (faces,) ages
    predicted: np.ndarray  # (runs, faces)
    gender: np.ndarray  # (faces,) 0 male, 1 female, NaN unknown


def aligned_predictions(folders, column=None):
    """The AlignedPredictions of finished runs (run_predictions of each, `column` as
    there); ValueError, naming the folder, unless every run predicted the same faces."""
    found = [run_predictions(folder, column) for folder in folders]
    first = found[0]
    order = np.argsort(first.face)
    predicted = []
    for folder, other in zip(folders, found):
        other_order = np.argsort(other.face)  # sorted once, to compare and to reorder
        if not np.array_equal(other.face[other_order], first.face[order]):
            raise ValueError(
                f"{folder}: its test faces are not those of {folders[0]}: the runs must "
                "share one split"
            )
        predicted.append(other.predicted[other_order])
    return AlignedPredictions(
        first.true[order], np.stack(predicted), first.gender[order]
    )


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
        import tensorflow as tf

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
        import tensorflow as tf

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
        import tensorflow as tf

        with self.writer.as_default():
            for step, loss in step_losses.items():
                tf.summary.scalar(STEP_LOSS, loss, step=step)
            for name, tag in CURVES.items():
                if row.get(name) is not None:  # not validated: no validation curves
                    tf.summary.scalar(tag, row[name], step=row["epoch"])
        self.writer.flush()
