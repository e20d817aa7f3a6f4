"""What should a saved model answer? The test-time views to average, and the map of the
predicted ages (the widening among others), each chosen on the validation faces.

    python bench/bench_readout.py views --model runs/default/model.keras \\
        runs/default_seed1/model.keras runs/default_seed2/model.keras
    python bench/bench_readout.py maps --model runs/default/model.keras \\
        runs/default_seed1/model.keras runs/default_seed2/model.keras
    python bench/bench_readout.py maps --model runs/default/model.keras --tta-zooms 1.0

views: training shows the network each face mirrored or not and zoomed in on a crop of
88-100 % of its side, anywhere in the image (augmentation.augment_batch). At test time a
face can be shown the same ways: as it is, zoomed in on its centre (readout.zoom_centre,
the crop the augmentation would make) or on a crop moved off the centre, each view also
mirrored, and the ages averaged. For each model this predicts the validation and test
faces once per view, without the model's widening, and prints the MAE and the mean signed
error (predicted - true) of several sets of views on both splits, the faces aged 60 and
over apart, and the seconds of each set's forward passes; the means over the models add
the test MAE widened as `train` widens it (fitted on the validation faces of the same
views). The set to keep has the lowest mean validation MAE over the models; the test
columns are to be read after that choice, not to make it. A last row moves the mirror
readout by the mean change the preset's zooms make: does their gain come from a shift of
every age alone?

maps: a model trained on UTKFace pulls its predictions towards the middle ages (the mean
signed error is positive for the young, negative for the old). Each model is read out with
the views of `--tta-zooms` (or `--no-tta`), without its widening, and four maps of the
predicted age are fitted on its validation faces, then applied to the test faces:

- isotonic: the validation faces sorted by predicted age and cut into `--bins` groups of
  equal size; the median predicted and true age of each; the true medians made
  non-decreasing (pool-adjacent-violators), joined linearly, flat beyond the ends;
- least absolute deviations: true ~ a + b * predicted (a grid over b, the median
  residual for a);
- bias correction: predicted ~ a + b * true by least squares, inverted, as brain-age
  studies remove the age-dependent bias (A.-M. G. de Lange, J. H. Cole, "Commentary:
  Correction procedures in brain-age prediction", NeuroImage: Clinical, 2020);
- half the bias correction: the mean of the age as predicted and as the bias correction
  maps it;
- widening, what `train` fits and saves (evaluation.fit_widening): every age moved away
  from the median prediction, by a factor on each side, the pair with the lowest balanced
  MAE;
- widening above a knee: only the ages above a knee k moved up, a -> a + g (a - k), the
  pair (k from 30 to 75 years in steps of 2.5, g from 0 to 1 in steps of 0.01) with the
  lowest balanced MAE: the old faces moved without the middle-aged ones.

It prints each map's test MAE, balanced MAE, and the MAE and mean signed error of the faces
aged `--old` (60) and over (the mean over the models), then each model's signed error by
age bin. No model is changed.
"""

import time

import common  # first: the repository's path and TensorFlow's environment

import numpy as np
import tensorflow as tf

import evaluation
import readout
import utk_data
from metrics import balanced_mae, mae_by_age


def centred(*zooms):
    """Views zoomed in on the centre, (zoom, 0, 0) each (1.0: the whole image)."""
    return tuple((zoom, 0.0, 0.0) for zoom in zooms)


def moved(zoom, shift, corners=False):
    """Four views zoomed in by `zoom`, their centre moved by `shift` (a fraction of the
    side) up, down, left and right, or with `corners` towards the four corners."""
    ways = (
        ((-1, -1), (-1, 1), (1, -1), (1, 1))
        if corners
        else ((-1, 0), (1, 0), (0, -1), (0, 1))
    )
    return tuple((zoom, shift * down, shift * right) for down, right in ways)


# The sets of views compared, each view (zoom, shift down, shift right): every view is
# also mirrored, but in the first row, the single image the network is validated on while
# training.
THREE = centred(1.0, 0.94, 0.88)
VIEW_SETS = {
    "one image, no mirror": (),
    "mirror images only (zoom 1.0)": centred(1.0),
    "zoom 0.94 only": centred(0.94),
    "zoom 0.88 only": centred(0.88),
    "zooms 1.0, 0.94": centred(1.0, 0.94),
    "zooms 1.0, 0.94, 0.88": THREE,
    "zooms 1.0, 0.97, 0.94, 0.91, 0.88": centred(1.0, 0.97, 0.94, 0.91, 0.88),
    "three zooms; 0.94 moved 0.015 four ways": THREE + moved(0.94, 0.015),
    "three zooms; 0.94 moved 0.03 four ways": THREE + moved(0.94, 0.03),
    "three zooms; 0.94 moved 0.03 to the corners": THREE + moved(0.94, 0.03, True),
    "three zooms; 0.88 moved 0.03 four ways": THREE + moved(0.88, 0.03),
    "three zooms; 0.88 moved 0.06 four ways": THREE + moved(0.88, 0.06),
    "three zooms; 0.94 and 0.88 moved 0.03 four ways": (
        THREE + moved(0.94, 0.03) + moved(0.88, 0.03)
    ),
}
MIRROR = "mirror images only (zoom 1.0)"
PRESET = next(name for name, v in VIEW_SETS.items() if v == centred(*readout.TTA_ZOOMS))
SHIFTED = "mirror images, shifted as the zooms shift"
CHUNK = 256  # images zoomed at a time

# ---------------------------------------------------------------------------------------
# views
# ---------------------------------------------------------------------------------------


def view_ages(model, images, view, mirror):
    """Ages (n,) the model predicts, without its widening, for uint8 images (n, size,
    size, 3) seen as `view` (zoom, shift down, shift right) and mirrored when `mirror`.
    """
    zoom, down, right = view
    ages = []
    for start in range(0, len(images), CHUNK):
        chunk = tf.cast(images[start : start + CHUNK], tf.float32) / 255.0
        if down == right == 0.0:
            chunk = readout.zoom_centre(chunk, zoom)
        else:
            top, left = (1.0 - zoom) / 2 + down, (1.0 - zoom) / 2 + right
            box = tf.constant([[top, left, top + zoom, left + zoom]] * len(chunk))
            chunk = tf.image.crop_and_resize(
                chunk, box, tf.range(len(chunk)), chunk.shape[1:3]
            )
        if mirror:
            chunk = tf.reverse(chunk, axis=[2])
        ages.append(evaluation.predict_ages(model, chunk))
    return np.concatenate(ages)


def set_readouts(model, decoded):
    """{name of VIEW_SETS: (ages (n,), seconds)}: each view and its mirror averaged (the
    plain image alone for an empty set); the seconds, the sum of its views'."""
    views = {}
    for view in sorted({v for found in VIEW_SETS.values() for v in found} | {THREE[0]}):
        for mirror in (False, True):
            started = time.perf_counter()
            ages = view_ages(model, decoded.images, view, mirror)
            views[view, mirror] = ages, time.perf_counter() - started
    readouts = {}
    for name, found in VIEW_SETS.items():
        keys = [(view, mirror) for view in found for mirror in (False, True)]
        keys = keys or [(THREE[0], False)]
        ages = np.mean([views[key][0] for key in keys], axis=0)
        readouts[name] = ages, sum(views[key][1] for key in keys)
    return readouts


def views(arguments, models, splits):
    """The views part: every set's MAEs, model by model, then their means; the test
    faces also widened as `train` widens them, fitted on the validation faces."""
    names = (*VIEW_SETS, SHIFTED)
    found = {name: {"val": [], "test": [], "widened": []} for name in names}
    for path, model in models:
        print(f"--- {path}")
        readouts, true = {}, {}
        for split, records in splits.items():
            decoded = utk_data.decode_records(records, model.image_size)
            true[split] = np.array([r.age for r in decoded.records], np.float64)
            readouts[split] = set_readouts(model, decoded)
            mirror, zoomed = (readouts[split][name][0] for name in (MIRROR, PRESET))
            shifted = np.maximum(mirror + np.mean(zoomed - mirror), 0.0)
            readouts[split][SHIFTED] = shifted, 0.0
        for split in splits:
            old = true[split] >= arguments.old
            for name, (ages, seconds) in readouts[split].items():
                error, signed = np.abs(ages - true[split]), ages - true[split]
                found[name][split].append(error.mean())
                print(
                    f"{split:>4} | {name:<48} | MAE {error.mean():.3f}, signed "
                    f"{signed.mean():+.2f} | {arguments.old}+ ({old.sum()}) "
                    f"{error[old].mean():.3f}, signed {signed[old].mean():+.2f} | "
                    f"{seconds:4.1f} s"
                )
        for name in names:
            widening = evaluation.fit_widening(true["val"], readouts["val"][name][0])
            widened = readout.widen_ages(readouts["test"][name][0], widening)
            found[name]["widened"].append(np.abs(widened - true["test"]).mean())
    print(
        f"--- mean over {len(models)} model(s); widened: fitted on the validation faces"
    )
    best = min(VIEW_SETS, key=lambda name: np.mean(found[name]["val"]))
    for name, maes in found.items():
        mark = "  <- lowest validation MAE" if name == best else ""
        widened = " ".join(f"{mae:.3f}" for mae in maes["widened"])
        print(
            f"{name:<48} | validation {np.mean(maes['val']):.3f} | test "
            f"{np.mean(maes['test']):.3f} | test widened {np.mean(maes['widened']):.3f} "
            f"({widened}){mark}"
        )


# ---------------------------------------------------------------------------------------
# maps
# ---------------------------------------------------------------------------------------


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


KNEES = np.arange(30.0, 75.01, 2.5)
KNEE_SLOPES = np.round(np.arange(0.0, 1.0001, 0.01), 2)


def fit_knee(true, predicted):
    """(knee, slope) of a -> a + slope * max(a - knee, 0) with the lowest balanced MAE
    of these ages (the first among equals: the lowest knee, then the smallest slope)."""
    best = None
    for knee in KNEES:
        above = np.maximum(predicted - knee, 0.0)
        for slope in KNEE_SLOPES:
            error = balanced_mae(true, predicted + slope * above)
            if best is None or error < best[0]:
                best = (error, float(knee), float(slope))
    return best[1:]


def fitted_maps(true, predicted, bins):
    """({name: a function of predicted ages}, each fitted on (true, predicted) ages of the
    validation faces; the fitted widening (centre, below, above) and knee (knee, slope)).
    """
    groups = np.array_split(np.argsort(predicted), bins)
    knots = np.array([np.median(predicted[group]) for group in groups])
    medians = np.array([np.median(true[group]) for group in groups])
    values = pool_adjacent_violators(medians, [len(group) for group in groups])
    best = None  # Least absolute deviations: (error, intercept, slope).
    for slope in np.linspace(0.8, 1.4, 121):
        intercept = np.median(true - slope * predicted)
        error = np.abs(true - intercept - slope * predicted).mean()
        if best is None or error < best[0]:
            best = (error, intercept, slope)
    _, intercept, slope = best
    scale, offset = np.polyfit(true, predicted, 1)  # predicted ~ offset + scale * true
    widening = evaluation.fit_widening(true, predicted)
    knee, knee_slope = fit_knee(true, predicted)
    maps = {
        "as predicted": lambda ages: ages,
        "isotonic": lambda ages: np.interp(ages, knots, values),
        "least absolute deviations": lambda ages: np.maximum(
            intercept + slope * ages, 0.0
        ),
        "bias correction": lambda ages: np.maximum((ages - offset) / scale, 0.0),
        "half the bias correction": lambda ages: np.maximum(
            (ages + (ages - offset) / scale) / 2, 0.0
        ),
        "widening": lambda ages: readout.widen_ages(ages, widening),
        "widening above a knee": lambda ages: ages
        + knee_slope * np.maximum(ages - knee, 0.0),
    }
    return maps, widening, (knee, knee_slope)


def maps(arguments, models, splits):
    """The maps part: the test split's MAEs of every map, then the signed errors."""
    tta = readout.tta_from_arguments(arguments)
    print(f"test-time zooms: {readout.tta_zooms(tta) or 'none'}")
    rows, details = {}, []
    for path, model in models:
        val, test = (
            evaluation.predict_records(model, records, tta=tta)  # not widened
            for records in splits.values()
        )
        fitted, widening, (knee, slope) = fitted_maps(
            val.true, val.predicted, arguments.bins
        )
        centre, below, above = widening
        details.append(
            f"{path}: widening around {centre:.2f} by {below:.3f} below, "
            f"{above:.3f} above; above a knee at {knee:.1f} by {slope:.2f}"
        )
        old = test.true >= arguments.old
        for name, apply in fitted.items():
            mapped = apply(test.predicted)
            rows.setdefault(name, []).append(
                (
                    np.abs(mapped - test.true).mean(),
                    balanced_mae(test.true, mapped),
                    np.abs(mapped - test.true)[old].mean(),
                    (mapped - test.true)[old].mean(),
                )
            )
            bins = mae_by_age(test.true, mapped)
            signed = "  ".join(
                f"{label} {row['mean_error']:+.1f}"
                for label, row in bins.items()
                if row["count"]
            )
            details.append(f"{path}, {name}: {signed}")
    print(
        f"--- test split ({len(test.true):,} faces), maps fitted on validation, mean of "
        f"{len(models)} model(s)"
    )
    print(
        f"{'map':<28}{'MAE':>7}{'balanced':>10}{f'{arguments.old}+ MAE':>9}"
        f"{f'{arguments.old}+ signed':>12}"
    )
    for name, found in rows.items():
        values = np.mean(found, axis=0)
        widths = (7, 10, 9, 12)
        print(
            f"{name:<28}"
            + "".join(f"{value:>{width}.3f}" for value, width in zip(values, widths))
        )
    print("--- signed error (predicted - true) by age bin")
    print("\n".join(details))


def main(argv=None):
    """Read out every model on the validation and test faces, as the part asks."""
    parser = common.parser(__doc__)
    parser.add_argument("part", choices=("views", "maps"))
    common.add_model_argument(parser, several=True)
    readout.add_tta_argument(parser)  # the readout the maps are fitted on
    parser.add_argument("--bins", type=common.positive, default=20, help="isotonic map")
    parser.add_argument(
        "--old",
        type=common.positive,
        default=60,
        help="the faces aged this and over are reported apart (default: 60)",
    )
    arguments = parser.parse_args(argv)
    common.header(f"bench_readout {arguments.part}")
    splits = {split: common.faces(arguments, split) for split in ("val", "test")}
    models = [(path, readout.load_model(path)) for path in arguments.model]
    (views if arguments.part == "views" else maps)(arguments, models, splits)


if __name__ == "__main__":
    main()
