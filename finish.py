"""After training: the best model of a run read out on the validation and test faces (with
the widening fitted and saved in it), its metrics.json and test predictions written, and
the Run that `train_loop.train` returns."""

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import tensorflow as tf

import devices
import evaluation
import readout
import runs
import utk_data
from config import TrainConfig
from evaluation import Predictions, evaluate_predictions
from runs import progress


@dataclass
class Run:
    """What `train` returns: the best model, its history, metrics and test predictions."""

    model: object
    config: TrainConfig
    history: list
    metrics: dict
    test: Predictions


class Widening(NamedTuple):
    """The widening a run fitted on its validation faces, and its readouts before it."""

    fitted: tuple  # (centre, factor below, factor above), see readout.widen_ages
    unwidened: evaluation.Readouts


def read_out(config, splits):
    """The best model of a run read out on the validation and test faces: (model,
    Readouts, Widening or None). With config.widen, the widening is fitted on the
    validation faces' reported readout (evaluation.fit_widening) and saved in the
    model."""
    out = Path(config.out)
    model = readout.load_model(out / runs.MODEL)
    val, test = (
        utk_data.decode_records(part, config.image_size) for part in splits[1:]
    )
    readouts = evaluation.read_out(model, val, test, config.batch_size, config.tta)
    widening = None
    if config.widen:
        found = readouts.reported_val
        widening = Widening(
            evaluation.fit_widening(found.true, found.predicted), readouts
        )
        # What the model with its widening predicts (the same map, after the views).
        readouts = readouts.widened(widening.fitted)
    fitted = None if widening is None else widening.fitted
    if model.age_widening != fitted:  # A finished run read out again may change it.
        model.age_widening = fitted  # Saved in the model: its readout from now on.
        runs.save_model(out, model)
    return model, readouts, widening


def run_metrics(config, history, splits, readouts, command, strategy, widening=None):
    """The metrics.json of a run: its test metrics (the configured readout), both readouts
    of the validation and test faces, its progress, settings, command and machine (and
    the tf.distribute strategy that trained it). `widening`: a Widening, or None."""
    reported = readouts.reported
    test = evaluate_predictions(reported.true, reported.predicted, reported.groups)
    unwidened = {}
    if widening is not None:
        before = widening.unwidened
        unwidened["age_widening"] = list(widening.fitted)
        for split, found in (("val", before.reported_val), ("test", before.reported)):
            plain = evaluate_predictions(found.true, found.predicted)
            for name in ("mae", "balanced_mae"):
                unwidened[f"{split}_{name}_unwidened"] = plain[name]
    state = progress(history, config)
    without_average = [
        row["val_mae_without_ema"] for row in history if "val_mae_without_ema" in row
    ]
    return {
        "test_mae": test["mae"],
        "test_rmse": test["rmse"],
        "tta": config.tta,
        "tta_zooms": list(readout.tta_zooms(config.tta)),
        "ema": config.ema,
        "precision": config.precision,
        "onednn": devices.onednn_enabled(),
        "cpu_bfloat16_units": devices.bfloat16_units(),
        **readouts.maes(),
        **unwidened,
        "val_mae": state.best_val_mae,
        # With EMA: the best val MAE the trained weights reached without the average.
        "val_mae_without_ema": min(without_average, default=None),
        "best_epoch": state.best_epoch,
        "epochs_run": state.epochs_run,
        "epochs_planned": config.epochs,
        "train_seconds": state.train_seconds,
        "test_images": test["count"],
        "train_images": len(splits[0]),
        "val_images": len(splits[1]),
        "command": command,
        "machine": devices.describe_machine(),
        "strategy": devices.strategy_name(strategy),
        "replicas": strategy.num_replicas_in_sync,
        "tensorflow": tf.__version__,
        "config": dataclasses.asdict(config),
        # By age, gender and race; negative and zero predictions (Task 2).
        **{
            f"test_{key}": value
            for key, value in test.items()
            if key not in ("mae", "rmse", "count")
        },
    }


def finish(config, history, splits, command, strategy):
    """Read out the best model on the test split; write metrics.json and the per-face
    test predictions; print the test MAE (the chief; the other workers return None)."""
    if not devices.is_chief(strategy):
        return None
    out = Path(config.out)
    model, readouts, widening = read_out(config, splits)
    metrics = run_metrics(
        config, history, splits, readouts, command, strategy, widening
    )
    runs.write_json(out / runs.METRICS, metrics)
    extra = dict(readouts.quantiles)
    if widening is not None:  # The reported readout before the widening, beside it.
        column = runs.UNWIDENED_COLUMNS[config.tta]
        extra[column] = widening.unwidened.reported.predicted
    runs.write_predictions(out / runs.PREDICTIONS, readouts.test, extra)
    print(
        f"test MAE {metrics['test_mae']:.3f} years, RMSE {metrics['test_rmse']:.3f} "
        f"(best epoch {metrics['best_epoch']}, {metrics['train_seconds'] / 60:.1f} min "
        "of training)"
    )
    return Run(model, config, history, metrics, readouts.reported)
