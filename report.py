"""Reports of finished runs: runs grouped by seed, bootstrap intervals, the tables and
figures that answers.md shows, re-drawn from the runs kept in results/.

    python train_loop.py compare runs/default runs/cpu_seed1 runs/other
    python train_loop.py report --figures figures --update answers.md README.md

It reads what `train` writes into a run's folder (metrics.json, history.json and
test_predictions.csv) and never trains or loads a model.
"""

import itertools
import json
import re
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np

import utk_data
from plots import curve_value, plot_evaluation, plot_history, save_fig
from runs import INTERVALS, PREDICTIONS, quantile_column, read_history, read_metrics
from runs import aligned_predictions, read_predictions, run_predictions

# ---------------------------------------------------------------------------------------
# Runs grouped by seed, and the bootstrap
# ---------------------------------------------------------------------------------------


def resampled_means(generator, values, resamples, chunk=1000):
    """(resamples,) means of `values` (n,) drawn with replacement, `chunk` resamples at a
    time (which bounds the memory): the bootstrap of a mean."""
    means = []
    for start in range(0, resamples, chunk):
        picks = generator.integers(
            0, values.size, (min(chunk, resamples - start), values.size)
        )
        means.append(values[picks].mean(axis=1))
    return np.concatenate(means)


def percentile_interval(resampled, level=0.95):
    """(low, high): the central `level` of resampled values."""
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(resampled, [tail, 100 - tail])
    return float(low), float(high)


def paired_bootstrap(
    true, first, second, resamples=10_000, level=0.95, seed=0, same_seeds=False
):
    """MAE(second) - MAE(first) on the same faces, and its interval from a two-level
    bootstrap that resamples the seeds and the test faces.

    `first` and `second` are (faces,) or (seeds, faces) predictions; a variant's error on
    a face is the mean of its seeds' errors. Each resample draws the seeds with
    replacement, then the faces, each face keeping its errors under both variants together
    so that how hard a face is counts for both alike. With `same_seeds` (both trained with
    the same seeds, in the same order) a seed's two runs are drawn together: they share
    their initial weights, data order and augmentation, so only their difference varies.
    An interval that excludes 0 holds across seeds as well as across faces. Returns
    (difference, low, high); `level` of the resampled differences lie between low and high.
    """
    true = np.asarray(true, np.float64)

    def seed_errors(predicted):
        predicted = np.atleast_2d(np.asarray(predicted, np.float64))
        if predicted.shape[1] != true.size:
            raise ValueError(f"{predicted.shape[1]} predictions for {true.size} faces")
        return np.abs(predicted - true)  # (seeds, faces)

    first, second = seed_errors(first), seed_errors(second)
    if same_seeds:
        if len(first) != len(second):
            raise ValueError(f"{len(first)} and {len(second)} seeds are not the same")
        # A seed's difference, face by face: its two runs are drawn together.
        first, second = np.zeros_like(first), second - first
    generator = np.random.default_rng(seed)
    resampled = []
    for start in range(0, resamples, 1000):  # 1000 at a time bound the memory.
        count = min(1000, resamples - start)
        differences = _resampled_seeds(generator, second, count) - _resampled_seeds(
            generator, first, count
        )  # (count, faces)
        picks = generator.integers(0, true.size, (count, true.size))
        resampled.append(np.take_along_axis(differences, picks, axis=1).mean(axis=1))
    difference = float(second.mean() - first.mean())
    return (difference, *percentile_interval(np.concatenate(resampled), level))


def _resampled_seeds(generator, errors, count):
    """(count, faces): each face's error averaged over the seeds of one resample of the
    (seeds, faces) errors, the seeds drawn with replacement (a single seed, or errors
    that are all 0, stay as they are)."""
    if len(errors) == 1 or not errors.any():
        return np.broadcast_to(errors[0], (count, errors.shape[1]))
    picks = generator.integers(0, len(errors), (count, len(errors)))
    return errors[picks].mean(axis=1)


class Variant(NamedTuple):
    """One row of a comparison: runs of the same settings with different seeds, and which
    of their readouts the row reports."""

    label: str
    folders: list
    # The metrics.json entry of the row's validation MAE; None: the row has none of its own.
    val: Optional[str] = "val_mae"
    test: Optional[str] = None  # a prediction column; None: each run's own readout
    has_test: bool = True  # False: the row has no test predictions (only validation)


def _variant_key(metrics, folder):
    """Runs whose settings differ only in seed, output folder or data path are one variant;
    a run without recorded settings is a variant of its own."""
    config = metrics.get("config")
    if config is None:
        return str(folder)
    return json.dumps(
        {k: v for k, v in config.items() if k not in ("seed", "out", "data")},
        sort_keys=True,
    )


def group_runs(folders, labels=None):
    """Variants of the runs in `folders`, in the order first met: runs that differ only in
    their seed are one variant. Labels default to the first run's folder name."""
    groups = {}
    for folder in map(Path, folders):
        metrics = read_metrics(folder)
        groups.setdefault(_variant_key(metrics, folder), []).append(folder)
    if labels is not None and len(labels) != len(groups):
        raise ValueError(f"{len(labels)} labels for {len(groups)} variants of the runs")
    names = labels or [folders[0].name for folders in groups.values()]
    return [Variant(name, folders) for name, folders in zip(names, groups.values())]


def _mean_sd(values, digits=2, sign=""):
    """'5.06' for one value, '5.06 ± 0.04' (sample standard deviation) for several;
    sign="+" writes the sign of positive means too."""
    values = np.asarray(values, np.float64)
    text = f"{values.mean():{sign}.{digits}f}"
    return text if values.size < 2 else f"{text} ± {values.std(ddof=1):.{digits}f}"


def _seeds(variant):
    """The seeds of a variant's runs, in their order (None for a run that records none)."""
    return [read_metrics(f).get("config", {}).get("seed") for f in variant.folders]


def _test_predictions(variant):
    """The runs.AlignedPredictions of a variant's seeds; None when a run has no
    predictions file."""
    if not variant.has_test:
        return None
    if not all((Path(folder) / PREDICTIONS).exists() for folder in variant.folders):
        return None
    return aligned_predictions(variant.folders, variant.test)


def _needed_test_predictions(variant):
    """_test_predictions, or a clear error when a run of the variant has none."""
    found = _test_predictions(variant)
    if found is None:
        raise FileNotFoundError(f"{variant.label!r}: a run has no {PREDICTIONS}")
    return found


# ---------------------------------------------------------------------------------------
# The tables
# ---------------------------------------------------------------------------------------


class Comparison(NamedTuple):
    """One row of a comparison table, computed: per-seed values and the differences to
    the reference row (None where there is none)."""

    variant: Variant
    seeds: list
    val: list  # best validation MAE per seed ([] when the row has none)
    test_maes: list  # test MAE per seed ([] when the row has none)
    val_difference: Optional[np.ndarray]  # per-seed differences, when the seeds match
    test_difference: Optional[tuple]  # (difference, low, high) of paired_bootstrap
    epochs: float  # mean over the seeds
    minutes: float  # mean minutes of training over the seeds


def compare_variants(variants, reference="first"):
    """The Comparisons of variants, each against the first row (reference="first") or the
    row above ("previous"): on validation the per-seed differences when the seeds match,
    on test the paired bootstrap over the test faces."""
    if reference not in ("first", "previous"):
        raise ValueError(f'reference must be "first" or "previous", got {reference!r}')
    rows, tests = [], []
    for variant in variants:
        metrics = [read_metrics(folder) for folder in variant.folders]
        seeds = _seeds(variant)
        val = [m[variant.val] for m in metrics] if variant.val else []
        test = _test_predictions(variant)
        if test:
            test_maes = [float(np.abs(p - test.true).mean()) for p in test.predicted]
        elif variant.has_test and variant.test is None:
            test_maes = [m["test_mae"] for m in metrics]
        else:
            test_maes = []
        val_difference = test_difference = None
        if rows:
            base = 0 if reference == "first" else -1
            base_row, base_test = rows[base], tests[base]
            if base_row.seeds == seeds and None not in seeds and val and base_row.val:
                val_difference = np.subtract(val, base_row.val)
            if test and base_test is not None:
                if not np.array_equal(test.true, base_test.true):
                    raise ValueError(f"{variant.label!r} has other test faces")
                same_seeds = base_row.seeds == seeds and None not in seeds
                test_difference = paired_bootstrap(
                    test.true,
                    base_test.predicted,
                    test.predicted,
                    same_seeds=same_seeds,
                )
        rows.append(
            Comparison(
                variant, seeds, val, test_maes, val_difference, test_difference,
                float(np.mean([m["epochs_run"] for m in metrics])),
                float(np.mean([m["train_seconds"] for m in metrics])) / 60,
            )  # fmt: skip
        )
        tests.append(test)
    return rows


def comparison_table(variants, reference="first"):
    """A Markdown table of variants: seeds, validation and test MAE (mean ± standard
    deviation over the seeds), and the difference to the reference row (see
    compare_variants): on validation the mean ± sd of the per-seed differences, on test
    the paired bootstrap 95 % interval over the test faces."""
    name = "first row" if reference == "first" else "row above"
    lines = [
        f"| | seeds | best val MAE | val MAE − {name} | test MAE | test MAE − "
        f"{name} [95 % interval] | epochs | minutes of training |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in compare_variants(variants, reference):
        val_difference = test_difference = "—"
        if row.val_difference is not None:
            val_difference = _mean_sd(row.val_difference, 2, "+")
        if row.test_difference is not None:
            test_difference = "{:+.2f} [{:+.2f}, {:+.2f}]".format(*row.test_difference)
        lines.append(
            f"| {row.variant.label} | {len(row.seeds)} | "
            f"{_mean_sd(row.val) if row.val else '—'} | {val_difference} | "
            f"{_mean_sd(row.test_maes) if row.test_maes else '—'} | {test_difference} | "
            f"{row.epochs:.0f} | {row.minutes:.0f} |"
        )
    return "\n".join(lines)


def _by_age_bin(true, predicted):
    """{bin: (mask, mae per seed, mean signed error per seed)} of (seeds, faces) ages,
    for the bins that hold faces."""
    bins = {}
    for name, inside in utk_data.age_bin_masks(true).items():
        if inside.any():
            errors = predicted[:, inside] - true[inside]
            bins[name] = inside, np.abs(errors).mean(axis=1), errors.mean(axis=1)
    return bins


def errors_by_age_table(variant):
    """A Markdown table of a variant's test MAE and mean signed error (predicted − true)
    per age bin, mean ± sd over its seeds: positive for the young and negative for the
    old is a pull of the predictions towards the middle ages."""
    test = _needed_test_predictions(variant)
    lines = ["| age | faces | MAE | mean signed error |", "|---|---:|---:|---:|"]
    for name, (inside, mae, signed) in _by_age_bin(test.true, test.predicted).items():
        lines.append(
            f"| {name} | {inside.sum()} | {_mean_sd(mae)} | {_mean_sd(signed, 1, '+')} |"
        )
    return "\n".join(lines)


def gender_by_age_table(variant, resamples=10_000, seed=0):
    """A Markdown table of a variant's test MAE of men and women within each age bin, and
    the difference at equal ages: the bins' differences weighted by their faces, with a
    bootstrap 95 % interval (the men and the women of each bin drawn with replacement).
    """
    true, predicted, gender = _needed_test_predictions(variant)
    errors = np.abs(predicted - true).mean(axis=0)  # each face's MAE over the seeds
    lines = [
        "| age | men | women | MAE, men | MAE, women | women − men |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    generator = np.random.default_rng(seed)
    weighted, resampled, weights = 0.0, np.zeros(resamples), 0
    for name, (inside, _, _) in _by_age_bin(true, predicted).items():
        men, women = errors[inside & (gender == 0)], errors[inside & (gender == 1)]
        if not (men.size and women.size):
            continue
        difference = women.mean() - men.mean()
        weighted += difference * inside.sum()
        weights += inside.sum()
        for group, sign in ((women, 1), (men, -1)):
            means = resampled_means(generator, group, resamples, chunk=resamples)
            resampled += sign * means * inside.sum()
        lines.append(
            f"| {name} | {men.size} | {women.size} | {men.mean():.2f} | "
            f"{women.mean():.2f} | {difference:+.2f} |"
        )
    low, high = percentile_interval(resampled / weights)
    lines.append(
        f"| at equal ages (bins weighted by their faces) [95 % interval] | | | | | "
        f"{weighted / weights:+.2f} [{low:+.2f}, {high:+.2f}] |"
    )
    return "\n".join(lines)


def year_inside(age, low, high):
    """How far each whole age lies inside its interval [low, high] of whole ages: 1 strictly
    inside, 1/2 at an end (also when the interval is that one age, low = high = age), 0
    outside. Counting an age at an end as wholly inside would raise the coverage by itself,
    counting it as outside would lower it."""
    at_or_inside = (low <= age) & (age <= high)
    strictly_inside = (low < age) & (age < high)
    return 0.5 * at_or_inside + 0.5 * strictly_inside


def calibration_table(variant):
    """A Markdown table of how often the true age of a test face falls in the 50 % and 90 %
    central intervals of a classification head's predicted distribution, the intervals'
    mean width and the MAE of the faces (mean ± sd over the seeds): a calibrated head has
    50 % and 90 %. Two more rows take the quarter of the faces with the narrowest and the
    widest 90 % intervals: a width worth reading goes with a smaller or larger error.

    The quantiles are whole ages (model.age_quantiles) and so are the true ages: an age
    strictly inside its interval counts 1, an age at an end 1/2 (see year_inside).
    """
    lines = [
        "| interval | faces | true age inside it | mean width (years) | MAE (years) |",
        "|---|---|---:|---:|---:|",
    ]
    tables = [read_predictions(Path(f) / PREDICTIONS) for f in variant.folders]
    rows = [(name, "all", None) for name in INTERVALS]
    rows += [
        ("90 %", "the narrowest quarter", 0.25),
        ("90 %", "the widest quarter", 0.75),
    ]
    for name, faces, quarter in rows:
        low, high = (quantile_column(q) for q in INTERVALS[name])
        if any(column not in table for table in tables for column in (low, high)):
            raise ValueError(f"{variant.label!r}: a run has no {low}/{high}")
        inside, widths, errors = [], [], []
        for folder, table in zip(variant.folders, tables):
            width = table[high] - table[low]
            chosen = np.ones(width.size, bool)
            if quarter is not None:
                limit = np.quantile(width, quarter)
                chosen = width <= limit if quarter < 0.5 else width >= limit
            age = table["age"][chosen]
            hit = year_inside(age, table[low][chosen], table[high][chosen])
            inside.append(100 * hit.mean())
            widths.append(width[chosen].mean())
            predicted = run_predictions(folder).predicted[chosen]  # its readout
            errors.append(np.abs(predicted - age).mean())
        lines.append(
            f"| {name} | {faces} | {_mean_sd(inside, 1)} % | {np.mean(widths):.1f} | "
            f"{_mean_sd(errors)} |"
        )
    return "\n".join(lines)


def old_faces_table(variants, oldest=60):
    """A Markdown table of how each variant predicts the faces aged `oldest` and over: their
    test MAE and mean signed error (predicted − true: negative when they are predicted too
    young), beside the MAE of all faces, mean ± sd over the seeds, and against the first
    row the difference in the old faces' MAE with its interval (paired_bootstrap on them).
    """
    lines = [
        f"| | seeds | test MAE, all faces | faces aged {oldest}+ | their MAE | their mean "
        "signed error | their MAE − first row [95 % interval] |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    first = None
    for variant in variants:
        test = _needed_test_predictions(variant)
        old = test.true >= oldest
        errors = test.predicted[:, old] - test.true[old]
        difference = "—"
        if first is None:
            first = test, variant
        else:
            seeds, base = _seeds(variant), _seeds(first[1])
            found = paired_bootstrap(
                test.true[old], first[0].predicted[:, old], test.predicted[:, old],
                same_seeds=seeds == base and None not in seeds,
            )  # fmt: skip
            difference = "{:+.2f} [{:+.2f}, {:+.2f}]".format(*found)
        lines.append(
            f"| {variant.label} | {len(test.predicted)} | "
            f"{_mean_sd(np.abs(test.predicted - test.true).mean(axis=1))} | {old.sum()} | "
            f"{_mean_sd(np.abs(errors).mean(axis=1))} | "
            f"{_mean_sd(errors.mean(axis=1), 2, '+')} | {difference} |"
        )
    return "\n".join(lines)


def output_range_table(variants):
    """A Markdown table of what each variant's output does at the low end of the ages
    (Task 2): its test MAE, its MAE on the faces aged 0-9, and how many test faces it
    predicted below 0 and at exactly 0, mean ± sd over the seeds. The rows' column should
    be the output itself (predicted_no_tta): a mirror image's average hides the zeros.
    """
    lines = [
        "| | seeds | test MAE (one image per face) | MAE, ages 0-9 | negative "
        "predictions | predictions of exactly 0 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for variant in variants:
        true, predicted, _ = _needed_test_predictions(variant)
        young = true <= 9
        lines.append(
            f"| {variant.label} | {len(predicted)} | "
            f"{_mean_sd(np.abs(predicted - true).mean(axis=1))} | "
            f"{_mean_sd(np.abs(predicted[:, young] - true[young]).mean(axis=1))} | "
            f"{_mean_sd((predicted < 0).sum(axis=1), 0)} | "
            f"{_mean_sd((predicted == 0).sum(axis=1), 0)} |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# The figures, and the report of results/report.json
# ---------------------------------------------------------------------------------------


def plot_variants(variants, file_name=None, x_axis="epoch", top=None):
    """The validation MAE of every run, a colour per variant; x_axis="minutes" plots it
    against cumulative training time and marks each run's test MAE at its total time.
    `top` is the highest MAE shown (default: all of it, up to 20 years). A variant without a
    validation MAE of its own (another readout of runs shown already) is left out."""
    import matplotlib.pyplot as plt

    variants = [variant for variant in variants if variant.val is not None]
    if x_axis not in ("epoch", "minutes"):
        raise ValueError(f'x_axis must be "epoch" or "minutes", got {x_axis!r}')
    figure, axes = plt.subplots(figsize=(6.5, 4))
    for color, variant in zip(
        itertools.cycle(plt.rcParams["axes.prop_cycle"].by_key()["color"]), variants
    ):
        for number, folder in enumerate(map(Path, variant.folders)):
            metrics, history = read_metrics(folder), read_history(folder)
            if x_axis == "epoch":
                steps = [row["epoch"] for row in history]
            else:
                steps = np.cumsum([row["seconds"] for row in history]) / 60
            axes.plot(
                steps,
                [curve_value(row["val_mae"]) for row in history],
                color=color,
                alpha=0.9 if number == 0 else 0.45,
                label=variant.label if number == 0 else None,
            )
            if x_axis == "minutes":
                axes.plot(
                    metrics["train_seconds"] / 60, metrics["test_mae"], "o", color=color
                )
    if x_axis == "minutes":
        axes.set_xscale("log")
        axes.set_xlabel("minutes of training (log scale); dots: final test MAE")
    else:
        axes.set_xlabel("epoch")
    axes.set_ylabel("validation MAE (years)")
    axes.set_ylim(top=top or min(axes.get_ylim()[1], 20))
    axes.legend()
    axes.grid(alpha=0.3)
    if file_name:
        save_fig(figure, file_name)
    return figure


def compare_runs(folders, file_name=None, x_axis="epoch", labels=None):
    """A Markdown table of finished runs, runs that differ only in seed forming one row,
    and their validation curves in one plot (see comparison_table and plot_variants)."""
    variants = group_runs(folders, labels)
    plot_variants(variants, file_name, x_axis)
    return comparison_table(variants)


# Lists the tables and figures that answers.md shows, and the runs each is drawn from.
REPORT = "report.json"
# How each kind of entry draws its table from its rows' variants (and the entry).
TABLES = {
    "comparison": lambda variants, entry: comparison_table(
        variants, entry.get("reference", "first")
    ),
    "output_range": lambda variants, entry: output_range_table(variants),
    "old_faces": lambda variants, entry: old_faces_table(
        variants, entry.get("oldest", 60)
    ),
    "errors_by_age": lambda variants, entry: errors_by_age_table(variants[0]),
    "gender_by_age": lambda variants, entry: gender_by_age_table(variants[0]),
    "calibration": lambda variants, entry: calibration_table(variants[0]),
    "learning_curve": None,  # a figure only
}


def _draw(entry, variants, file_name):
    """The figure of a report entry: the validation curves of a comparison, the training
    curves of a learning curve's first run, or the test predictions of a run's first seed
    against the true ages (any other kind)."""
    kind = entry.get("kind", "comparison")
    if kind == "comparison":
        plot_variants(variants, file_name, entry.get("x", "epoch"), entry.get("top"))
    elif kind == "learning_curve":
        plot_history(read_history(variants[0].folders[0]), file_name)
    else:
        test = _needed_test_predictions(variants[0])
        plot_evaluation(test.true, test.predicted[0], file_name)


def report(results="results", figures=None):
    """Re-draw the tables (and, into `figures`, the figures) that results/report.json
    lists, from the runs in `results`; returns {name: Markdown table}."""
    results = Path(results)
    entries = json.loads((results / REPORT).read_text())
    if figures is not None:
        Path(figures).mkdir(parents=True, exist_ok=True)
    tables = {}
    for entry in entries:
        variants = [
            Variant(
                row["label"],
                [results / run for run in row["runs"]],
                row.get("val", "val_mae"),
                row.get("test"),
                row.get("has_test", True),
            )
            for row in entry["rows"]
        ]
        kind = entry.get("kind", "comparison")
        if kind not in TABLES:
            raise ValueError(f"{results / REPORT}: unknown kind {kind!r}")
        if TABLES[kind]:
            tables[entry["name"]] = TABLES[kind](variants, entry)
        if entry.get("figure") and figures is not None:
            _draw(entry, variants, Path(figures) / entry["figure"])
    return tables


# In a Markdown file, the table of report entry NAME follows a line "<!-- report: NAME -->".
TABLE_MARKER = re.compile(r"^<!-- report: (.+?) -->\n((?:\|.*\n)*)", re.MULTILINE)


def update_tables(text, tables):
    """`text` with the table after each report marker replaced by the table of that name
    in `tables` (as `report` draws them); an unknown name is an error."""

    def replace(found):
        name = found.group(1)
        if name not in tables:
            raise ValueError(f"no report table is named {name!r}")
        return f"<!-- report: {name} -->\n{tables[name]}\n"

    return TABLE_MARKER.sub(replace, text)


# ---------------------------------------------------------------------------------------
# The `compare` and `report` commands of train_loop.py
# ---------------------------------------------------------------------------------------


def add_compare_arguments(parser):
    """The arguments of `python train_loop.py compare`."""
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR")
    parser.add_argument("--plot", help="save the validation curves here")
    parser.add_argument(
        "--labels", nargs="+", help="a name for each row (default: folder names)"
    )
    parser.add_argument(
        "--x-axis",
        "--against",
        dest="x_axis",
        choices=("epoch", "minutes"),
        default="epoch",
        help="x axis of the plot: epochs, or minutes of training (test MAE marked)",
    )


def add_report_arguments(parser):
    """The arguments of `python train_loop.py report`."""
    parser.add_argument("--results", default="results", help="(default: results)")
    parser.add_argument(
        "--figures", help="re-draw the figures into this folder (default: none)"
    )
    parser.add_argument(
        "--update",
        nargs="*",
        default=[],
        metavar="MARKDOWN",
        help="also rewrite, in these files, the table after each line "
        "'<!-- report: NAME -->' (e.g. answers.md README.md)",
    )


def compare_command(arguments, parser):
    """`compare`: a Markdown table of finished runs, and their curves in a figure."""
    print(
        compare_runs(arguments.runs, arguments.plot, arguments.x_axis, arguments.labels)
    )
    return 0


def report_command(arguments, parser):
    """`report`: every table of RESULTS/report.json in Markdown, and its figures."""
    tables = report(arguments.results, arguments.figures)
    updated = {
        Path(file): update_tables(Path(file).read_text(), tables)
        for file in arguments.update
    }
    for file, text in updated.items():
        file.write_text(text)
    for name, table in tables.items():
        print(f"{name}:\n\n{table}\n")
    return 0
