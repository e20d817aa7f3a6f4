"""Which map of the predicted ages, fitted on the validation split, serves the faces best?

    python bench/bench_recalibration.py --model runs/default/model.keras
    python bench/bench_recalibration.py --model runs/default/model.keras \
        runs/default_seed1/model.keras runs/default_seed2/model.keras

A model trained on UTKFace pulls its predictions towards the middle ages: the mean signed
error (predicted - true) is positive for the young and negative for the old. A map of the
predicted age, fitted on the validation split and applied to the test split, is the
cheapest remedy one can keep inside a model. Each model is read out with its test-time
views (`--tta-zooms`, or `--no-tta`) and without the widening it may carry; then four maps
are fitted on its validation faces:

- "isotonic": the validation faces sorted by predicted age and cut into `--bins` groups of
  equal size; in each, the median predicted and the median true age; the true medians
  made non-decreasing (pool-adjacent-violators on the medians), then joined linearly (and
  extended flat beyond the first and last group);
- "least absolute deviations": true ~ a + b * predicted (a grid over b, the median
  residual for a);
- "bias correction": predicted ~ a + b * true by least squares, inverted, (predicted -
  a) / b, as brain-age studies remove the age-dependent bias (A.-M. G. de Lange, J. H.
  Cole, "Commentary: Correction procedures in brain-age prediction", NeuroImage:
  Clinical, 2020);
- "widening" (what `train` fits and saves in the model, evaluation.fit_widening): every
  age moved away from the median prediction by the factor that gives the lowest MAE
  averaged over the age bins (the balanced MAE).

It prints, for each map, the test MAE of all faces, the balanced MAE, and the MAE and mean
signed error of the faces aged 60 and over, averaged over the models, then each model's
signed error by age bin. No model is changed.
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


def fit_bias_correction(predicted, true):
    """(a, b) of predicted ~ a + b * true by least squares."""
    slope, intercept = np.polyfit(true, predicted, 1)
    return intercept, slope


def fitted_maps(true, predicted, bins):
    """{name: function from predicted ages to mapped ages}, each fitted on (true,
    predicted) of the validation faces."""
    knots, values = fit_isotonic(predicted, true, bins)
    intercept, slope = fit_stretch(predicted, true)
    offset, scale = fit_bias_correction(predicted, true)
    widening = evaluation.fit_widening(true, predicted)
    return {
        "as predicted": lambda ages: ages,
        "isotonic": lambda ages: np.interp(ages, knots, values),
        "least absolute deviations": lambda ages: np.maximum(
            intercept + slope * ages, 0.0
        ),
        "bias correction": lambda ages: np.maximum((ages - offset) / scale, 0.0),
        "widening": lambda ages: evaluation.widen_ages(ages, widening),
    }


def summary(true, predicted, oldest=60):
    """(MAE, balanced MAE, MAE and mean signed error of the faces aged `oldest`+)."""
    old = true >= oldest
    return (
        np.abs(predicted - true).mean(),
        evaluation.balanced_mae(true, predicted),
        np.abs(predicted[old] - true[old]).mean(),
        (predicted[old] - true[old]).mean(),
    )


def signed_errors(true, predicted):
    """The mean signed error of each age bin, on one line."""
    bins = evaluation.mae_by_age(true, predicted)
    return "  ".join(
        f"{label} {row['mean_error']:+.1f}"
        for label, row in bins.items()
        if row["count"]
    )


def main(argv=None):
    """Fit the maps on each model's validation predictions; report the test split."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model", required=True, nargs="+", help="model.keras files (one or more)"
    )
    parser.add_argument("--data", help="folder, archive or URL (default: see README)")
    evaluation.add_tta_argument(parser)
    parser.add_argument(
        "--bins", type=int, default=20, help="groups of the isotonic map"
    )
    arguments = parser.parse_args(argv)
    tta = evaluation.tta_from_arguments(arguments)
    _, val, test = train_loop.prepare_data(train_loop.TrainConfig(data=arguments.data))
    print("=== bench_recalibration ===")
    print("machine:", devices.describe_machine())
    print(f"test-time zooms: {evaluation.tta_zooms(tta) if tta else 'none'}")
    rows, details = {}, []
    for path in arguments.model:
        model = evaluation.load_keras_model(path)
        model.age_widening = None  # the network's own readout
        found = {
            split: evaluation.predict_records(model, records, tta=tta)
            for split, records in (("validation", val), ("test", test))
        }
        true, predicted = (np.asarray(x, np.float64) for x in found["test"][1:3])
        maps = fitted_maps(*found["validation"][1:3], arguments.bins)
        centre, factor = evaluation.fit_widening(*found["validation"][1:3])
        details.append(f"{path}: widening around {centre:.2f} by {factor:.3f}")
        for index, (name, apply) in enumerate(maps.items()):
            mapped = apply(predicted)
            rows.setdefault(index, []).append((name, summary(true, mapped)))
            details.append(f"{path}, {name}: {signed_errors(true, mapped)}")
    print(
        f"--- test split ({len(true):,} faces), maps fitted on validation, mean of "
        f"{len(arguments.model)} model(s)"
    )
    print(f"{'map':<28}{'MAE':>7}{'balanced':>10}{'60+ MAE':>9}{'60+ signed':>12}")
    for found in rows.values():
        values = np.mean([numbers for _, numbers in found], axis=0)
        print(f"{found[0][0]:<28}" + "".join(
            f"{value:>{width}.3f}" for value, width in zip(values, (7, 10, 9, 12))
        ))  # fmt: skip
    print("--- signed error (predicted - true) by age bin")
    print("\n".join(details))


if __name__ == "__main__":
    main()
