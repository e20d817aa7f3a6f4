"""Would a monotone recalibration of the age output, fitted on the validation split, help?

    python bench/bench_recalibration.py --model runs/cpu/model.keras
    python bench/bench_recalibration.py --model runs/cpu/model.keras --tta --bins 30

A model trained on UTKFace pulls its predictions towards the middle ages: the mean signed
error (predicted - true) is positive for the young and negative for the old. A monotone map
of the predicted age, fitted on the validation split and applied to the test split, is the
cheapest remedy one could keep inside a model. Two are fitted here:

- "isotonic": the validation faces sorted by predicted age and cut into `--bins` groups of
  equal size; in each, the median predicted and the median true age; the true medians
  made non-decreasing (pool-adjacent-violators on the medians), then joined linearly (and
  extended flat beyond the first and last group);
- "stretch": true ~ a + b * predicted by least absolute deviations (a grid over b, the
  median residual for a), a map that widens the predicted range.

It prints the test MAE and the signed error by age bin before and after each map. No
model is changed.
"""

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# devices first: it sets TensorFlow's environment (oneDNN) before the import.
import devices  # noqa: E402
import train_loop  # noqa: E402
import evaluation  # noqa: E402

import numpy as np  # noqa: E402


def pool_adjacent_violators(values, weights):
    """The non-decreasing sequence closest to `values` (weighted least squares)."""
    blocks = []  # [value, weight, length]
    for value, weight in zip(values, weights):
        blocks.append([value, weight, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            value, weight, length = blocks.pop()
            previous = blocks[-1]
            total = previous[1] + weight
            previous[0] = (previous[0] * previous[1] + value * weight) / total
            previous[1], previous[2] = total, previous[2] + length
    return np.concatenate([np.full(length, value) for value, _, length in blocks])


def fit_isotonic(predicted, true, bins):
    """(knots, values) of a non-decreasing piecewise-linear map predicted -> true."""
    order = np.argsort(predicted)
    groups = np.array_split(order, bins)
    knots = np.array([np.median(predicted[group]) for group in groups])
    medians = np.array([np.median(true[group]) for group in groups])
    values = pool_adjacent_violators(medians, [len(group) for group in groups])
    return knots, values


def fit_stretch(predicted, true):
    """(a, b) of true ~ a + b * predicted by least absolute deviations."""
    best = None
    for slope in np.linspace(0.8, 1.4, 121):
        intercept = np.median(true - slope * predicted)
        error = np.abs(true - intercept - slope * predicted).mean()
        if best is None or error < best[0]:
            best = (error, intercept, slope)
    return best[1], best[2]


def report(name, true, predicted):
    """One line: MAE and the signed error of each age bin."""
    bins = evaluation.mae_by_age(true, predicted)
    signed = "  ".join(
        f"{label} {row['mean_error']:+.1f}"
        for label, row in bins.items()
        if row["count"]
    )
    mae = np.abs(predicted - true).mean()
    print(f"{name:<22} MAE {mae:.3f}   signed error by age: {signed}")


def main(argv=None):
    """Fit the maps on the validation predictions; report the test split."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="a model.keras file")
    parser.add_argument("--data", help="folder, archive or URL (default: see README)")
    parser.add_argument(
        "--tta", action="store_true", help="average over the test-time views"
    )
    parser.add_argument(
        "--bins", type=int, default=20, help="groups of the isotonic map"
    )
    arguments = parser.parse_args(argv)
    model = evaluation.load_keras_model(arguments.model)
    _, val, test = train_loop.prepare_data(train_loop.TrainConfig(data=arguments.data))
    found = {}
    for split, records in (("validation", val), ("test", test)):
        predictions = evaluation.predict_records(model, records, tta=arguments.tta)
        found[split] = (predictions.true, predictions.predicted)
    print("=== bench_recalibration ===")
    print("machine:", devices.describe_machine())
    print(f"model {arguments.model}, TTA {arguments.tta}")
    knots, values = fit_isotonic(*found["validation"][::-1], arguments.bins)
    intercept, slope = fit_stretch(*found["validation"][::-1])
    print(
        f"stretch fitted on validation: true = {intercept:.2f} + {slope:.3f} * predicted"
    )
    for split in ("validation", "test"):
        true, predicted = found[split]
        print(f"--- {split} split ({len(true):,} faces; maps fitted on validation)")
        report("as predicted", true, predicted)
        report("isotonic map", true, np.interp(predicted, knots, values))
        report("stretch map", true, np.maximum(intercept + slope * predicted, 0.0))


if __name__ == "__main__":
    main()
