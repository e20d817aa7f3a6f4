"""report.py: the paired bootstrap, runs grouped by seed, and the report that re-draws the
tables and figures of answers.md from the runs kept in results/."""

import json
from pathlib import Path

import numpy as np
import pytest

import evaluation
import report
import train_loop
import utk_data
import runs

REPOSITORY = Path(__file__).resolve().parents[1]


# --- the paired bootstrap, on predictions whose answer is known ------------------------


def test_a_constant_difference_has_no_width():
    rng = np.random.default_rng(0)
    true = rng.uniform(1, 90, 500)
    first = true + rng.choice([-3.0, 3.0], 500)  # every error 3 years
    second = true + rng.choice([-4.0, 4.0], 500)  # every error 4 years
    assert report.paired_bootstrap(true, first, second) == pytest.approx(
        (1.0, 1.0, 1.0)
    )


def test_the_interval_is_the_standard_error_of_the_mean_difference():
    rng = np.random.default_rng(1)
    faces = 4000
    true = rng.uniform(1, 90, faces)
    first = true + 5.0  # every error 5 years
    differences = rng.normal(0.3, 1.0, faces)  # second - first, face by face
    second = true + 5.0 + differences
    difference, low, high = report.paired_bootstrap(true, first, second)
    assert difference == pytest.approx(differences.mean())
    half_width = 1.96 * differences.std() / np.sqrt(faces)  # about 0.031
    assert (high - low) / 2 == pytest.approx(half_width, rel=0.1)
    assert low < 0.3 < high
    assert low < difference < high


def test_pairing_removes_what_the_faces_share():
    """Two models with large face-to-face differences in error, one 0.1 years worse on
    every face: the paired interval is narrow and excludes 0."""
    rng = np.random.default_rng(2)
    true = rng.uniform(1, 90, 1000)
    hardness = rng.exponential(6.0, 1000)  # some faces are much harder than others
    first = true + hardness
    second = true + hardness + 0.1
    difference, low, high = report.paired_bootstrap(true, first, second)
    assert difference == pytest.approx(0.1)
    assert 0.0 < low <= high < 0.2


def test_several_seeds_average_their_errors_face_by_face():
    true = np.zeros(3)
    first = np.array([[1.0, 1.0, 1.0], [3.0, 3.0, 3.0]])  # MAE 1 and 3: mean 2
    second = np.array([2.5, 2.5, 2.5])
    assert report.paired_bootstrap(true, first, second)[0] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="2 predictions for 3 faces"):
        report.paired_bootstrap(true, first, np.ones(2))


def test_a_difference_that_seeds_disagree_on_is_not_measurable():
    # Every face 0.1 years worse on average, but the second variant's seeds range from
    # 0.4 better to 0.6 worse: the faces alone would call it measurable, the seeds do not.
    true = np.zeros(2000)
    first = np.full((3, 2000), 5.0)
    second = np.stack([np.full(2000, 5.0 + shift) for shift in (-0.4, 0.1, 0.6)])
    difference, low, high = report.paired_bootstrap(true, first, second)
    assert difference == pytest.approx(0.1)
    assert low < 0 < high
    # A seed's two runs drawn together: the same shifts in both variants cancel.
    paired = report.paired_bootstrap(true, second - 0.1, second, same_seeds=True)
    assert paired == pytest.approx((0.1, 0.1, 0.1))
    with pytest.raises(ValueError, match="3 and 2 seeds"):
        report.paired_bootstrap(true, first, second[:2], same_seeds=True)


# --- run folders as `train` writes them ------------------------------------------------


def write_run(folder, true, predicted, seed, learning_rate=3e-3, val=5.0, order=None):
    """A finished run's metrics.json, history.json and test predictions (synthetic), its
    faces listed in `order`."""
    folder.mkdir(parents=True)
    order = np.arange(true.size) if order is None else order
    records = [
        utk_data.Record(Path(f"{int(true[i])}_{i % 2}_0_2017{i:09d}.jpg.chip.jpg"), int(true[i]), i % 2, 0)
        for i in order
    ]  # fmt: skip
    true, predicted = true[order], predicted[order]
    readout = evaluation.Predictions(records, true, predicted, {})
    worse = predicted + np.sign(predicted - true)  # 1 year worse on every face
    plain = evaluation.Predictions(records, true, worse, {})
    runs.write_predictions(
        folder / runs.PREDICTIONS,
        {"predicted_no_tta": plain, "predicted_tta": readout},
    )
    history = [
        {
            "epoch": epoch,
            "mae": val + 4 - epoch,
            "val_mae": val + 3 - epoch,
            "seconds": 60,
        }
        for epoch in (1, 2, 3)
    ]
    metrics = {
        "test_mae": float(np.abs(predicted - true).mean()),
        "val_mae": val,
        "val_mae_tta": val - 0.2,
        "tta": True,
        "epochs_run": 3,
        "train_seconds": 180,
        "config": {"seed": seed, "out": str(folder), "learning_rate": learning_rate},
    }
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "history.json").write_text(json.dumps(history))


@pytest.fixture
def run_folders(tmp_path):
    """Two seeds of a variant "a" (errors 2 and 4 years) and two of "b", 1 year worse on
    every face; the runs of each seed list their faces in another order."""
    rng = np.random.default_rng(3)
    true = np.round(rng.uniform(1, 95, 300))
    signs = rng.choice([-1.0, 1.0], 300)
    order = rng.permutation(300)
    for seed, error in ((0, 2.0), (1, 4.0)):
        for name, extra, val in (("a", 0.0, 5.0 + seed), ("b", 1.0, 5.5 + seed)):
            write_run(
                tmp_path / (name if seed == 0 else f"{name}_seed{seed}"),
                true,
                true + signs * (error + extra),
                seed,
                learning_rate=3e-3 if name == "a" else 1e-3,
                val=val,
                order=order if seed else None,
            )
    return tmp_path


def test_runs_of_one_setting_form_a_row_with_mean_sd_and_interval(run_folders):
    folders = [
        run_folders / "a",
        run_folders / "b",
        run_folders / "a_seed1",
        run_folders / "b_seed1",
    ]
    variants = report.group_runs(folders, labels=["rate 3e-3", "rate 1e-3"])
    assert [v.folders for v in variants] == [folders[0::2], folders[1::2]]
    lines = report.comparison_table(variants).splitlines()
    # Test MAE 2 and 4: 3.00 ± 1.41; validation 5 and 6. "b" is 1 year worse on every
    # face, so its paired interval has no width; its validation 0.5 worse for both seeds.
    assert lines[2] == "| rate 3e-3 | 2 | 5.50 ± 0.71 | — | 3.00 ± 1.41 | — | 3 | 3 |"
    assert lines[3] == (
        "| rate 1e-3 | 2 | 6.00 ± 0.71 | +0.50 ± 0.00 | 4.00 ± 1.41 | +1.00 [+1.00, +1.00] | 3 | 3 |"
    )
    with pytest.raises(ValueError, match="2 labels for 1 variants"):
        report.group_runs(folders[:1], labels=["x", "y"])


def test_a_missing_predictions_file_names_the_command_that_writes_it(run_folders):
    (run_folders / "b" / runs.PREDICTIONS).unlink()
    with pytest.raises(FileNotFoundError, match="--predictions"):
        runs.run_predictions(run_folders / "b")
    table = report.compare_runs([run_folders / "a", run_folders / "b"])
    assert table.splitlines()[3].startswith("| b | 1 | 5.50 | +0.50 | 3.00 | — |")


# A report.json as results/ holds one: a comparison of two readouts with its figure, the
# tables by age and by gender, a learning curve (a figure only), a row without validation.
ENTRIES = [
    {
        "name": "readouts",
        "reference": "previous",
        "figure": "curves.png",
        "x": "minutes",
        "rows": [
            {"label": "one image", "runs": ["a", "a_seed1"], "test": "predicted_no_tta"},
            {"label": "with its mirror image", "runs": ["a", "a_seed1"], "val": "val_mae_tta"},
        ],
    },
    {"name": "by age", "kind": "errors_by_age", "figure": "scatter.png", "rows": [{"label": "a", "runs": ["a"]}]},
    {"name": "by gender", "kind": "gender_by_age", "rows": [{"label": "a", "runs": ["a"]}]},
    {"name": "curve", "kind": "learning_curve", "figure": "curve.png", "rows": [{"label": "a", "runs": ["a"]}]},
    {"name": "no val", "rows": [{"label": "a", "runs": ["a"]}, {"label": "b, other readout", "runs": ["b"], "val": None}]},
]  # fmt: skip


@pytest.fixture
def reported(run_folders):
    """The run folders with a report.json that lists ENTRIES."""
    (run_folders / report.REPORT).write_text(json.dumps(ENTRIES))
    return run_folders


def test_the_report_command_prints_the_tables_and_draws_the_figures(
    reported, tmp_path, capsys
):
    figures = tmp_path / "figures"
    figures.mkdir()
    arguments = ["report", "--results", str(reported), "--figures", str(figures)]
    assert train_loop.main(arguments) == 0
    for figure in ("curves.png", "scatter.png", "curve.png"):
        assert (figures / figure).stat().st_size > 10_000
    printed = capsys.readouterr().out
    # The mirror readout is 1 year better on every face than the single image.
    assert (
        "| with its mirror image | 2 | 5.30 ± 0.71 | -0.20 ± 0.00 | 3.00 ± 1.41 | -1.00 [-1.00, -1.00] |"
        in printed
    )
    # A row without a validation MAE: no validation difference either.
    assert "| b, other readout | 1 | — | — | 3.00 | +1.00 [+1.00, +1.00] |" in printed


def test_the_tables_by_age_and_by_gender(reported):
    tables = report.report(reported)
    assert "curve" not in tables  # a figure, no table
    by_age = tables["by age"].splitlines()
    # Errors of +-2 years: a mean absolute error of exactly 2 in every bin.
    assert len(by_age) > 6 and all(" | 2.00 | " in line for line in by_age[2:])
    # The same error for everyone: no difference, and an interval without width.
    assert (
        "| at equal ages (bins weighted by their faces) [95 % interval] | | | | | "
        "+0.00 [+0.00, +0.00] |" in tables["by gender"]
    )


def test_a_row_without_a_validation_mae_draws_no_curve(run_folders):
    variants = [
        report.Variant("a", [run_folders / "a"]),
        report.Variant("b", [run_folders / "b"], None),
    ]
    legend = report.plot_variants(variants).axes[0].get_legend()
    assert [text.get_text() for text in legend.get_texts()] == ["a"]


def test_report_updates_the_tables_of_a_page_and_nothing_else(
    run_folders, tmp_path, capsys
):
    entries = [
        {"name": "by age", "kind": "errors_by_age", "rows": [{"label": "a", "runs": ["a"]}]},
    ]  # fmt: skip
    (run_folders / report.REPORT).write_text(json.dumps(entries))
    # --update rewrites the table after a marker, and nothing else.
    page = tmp_path / "page.md"
    page.write_text("Intro\n<!-- report: by age -->\n| old |\n|---|\n\nEnd\n")
    train_loop.main(["report", "--results", str(run_folders), "--update", str(page)])
    updated = page.read_text()
    assert updated.startswith("Intro\n<!-- report: by age -->\n| age | faces |")
    assert updated.endswith("|\n\nEnd\n") and "| old |" not in updated
    assert report.update_tables(updated, report.report(run_folders)) == updated
    page.write_text("<!-- report: pie -->\n| old |\n")
    assert train_loop.main(
        ["report", "--results", str(run_folders), "--update", str(page)]
    )
    assert "no report table is named 'pie'" in capsys.readouterr().err
    assert page.read_text() == "<!-- report: pie -->\n| old |\n"  # left as it was
    (run_folders / report.REPORT).write_text(
        json.dumps([{"name": "x", "kind": "pie", "rows": entries[0]["rows"]}])
    )
    assert train_loop.main(["report", "--results", str(run_folders)]) == 1
    assert "unknown kind 'pie'" in capsys.readouterr().err


def test_the_output_range_counts_predictions_below_and_at_zero(tmp_path):
    true = np.array([1.0, 2.0, 5.0, 30.0, 60.0])
    relu = np.array([0.0, 0.0, 4.0, 31.0, 58.0])  # two babies clipped to 0
    linear = np.array([-1.0, 0.5, 4.0, 31.0, 58.0])  # one below 0
    for name, predicted in (("relu", relu), ("linear", linear)):
        write_run(tmp_path / name, true, predicted, seed=0)
    variants = [
        report.Variant(name, [tmp_path / name.lower()], test="predicted_tta")
        for name in ("ReLU", "linear")
    ]
    lines = report.output_range_table(variants).splitlines()
    # Errors 1, 2, 1, 1, 2 and 2, 1.5, 1, 1, 2; the first three faces are aged 0-9.
    assert lines[0].startswith("| | seeds | test MAE (one image per face) |")
    assert lines[2] == "| ReLU | 1 | 1.40 | 1.33 | 0 | 2 |"
    assert lines[3] == "| linear | 1 | 1.50 | 1.50 | 1 | 0 |"


def test_calibration_counts_the_true_ages_inside_the_intervals(tmp_path):
    """50 % intervals that hold the true age of one face, two ages at an end (half each) and
    one outside; 90 % intervals that hold all four, 10 to 40 years wide; the narrowest is
    the face with the smallest error."""
    true = np.array([20.0, 30.0, 40.0, 50.0])
    records = [
        utk_data.Record(Path(f"{int(a)}_0_0_x{a}.jpg"), int(a), 0, 0) for a in true
    ]
    predicted = true + np.array([1.0, 2.0, 3.0, 8.0])  # MAE 3.5
    found = evaluation.Predictions(records, true, predicted, {})
    half_widths = np.array([5.0, 10.0, 10.0, 20.0])
    quantiles = {
        "q05": true - half_widths,
        "q25": np.array([18.0, 30.0, 41.0, 45.0]),  # the third interval misses
        "q75": np.array([22.0, 35.0, 44.0, 50.0]),
        "q95": true + half_widths,
    }
    folder = tmp_path / "classification"
    folder.mkdir()
    (folder / "metrics.json").write_text(json.dumps({"tta": False}))
    runs.write_predictions(
        folder / runs.PREDICTIONS, {"predicted_no_tta": found}, quantiles
    )
    lines = report.calibration_table(report.Variant("softmax", [folder])).splitlines()
    assert lines[2:] == [
        "| 50 % | all | 50.0 % | 4.2 | 3.50 |",  # 1 + 1/2 + 0 + 1/2; widths 4, 5, 3, 5
        "| 90 % | all | 100.0 % | 22.5 | 3.50 |",
        "| 90 % | the narrowest quarter | 100.0 % | 10.0 | 1.00 |",
        "| 90 % | the widest quarter | 100.0 % | 40.0 | 8.00 |",
    ]
    (folder / runs.PREDICTIONS).write_text("face,age,predicted_no_tta\nab,3,3\n")
    with pytest.raises(ValueError, match="q25/q75"):
        report.calibration_table(report.Variant("softmax", [folder]))


def test_an_age_at_an_end_counts_half_even_in_an_interval_of_that_one_age():
    age = np.array([30.0, 30.0, 30.0, 30.0, 31.0])
    low = np.array([29.0, 30.0, 29.0, 30.0, 30.0])
    high = np.array([31.0, 31.0, 30.0, 30.0, 30.0])
    # Inside; at the lower end; at the upper end; the interval is 30 alone; outside it.
    assert report.year_inside(age, low, high).tolist() == [1.0, 0.5, 0.5, 0.5, 0.0]


def test_women_one_year_worse_at_every_age_is_one_year_at_equal_ages(tmp_path):
    rng = np.random.default_rng(4)
    true = np.round(rng.uniform(1, 95, 400))
    women = np.arange(400) % 2 == 1  # as write_run labels them
    signs = rng.choice([-1.0, 1.0], 400)
    write_run(tmp_path / "run", true, true + signs * np.where(women, 3.0, 2.0), seed=0)
    table = report.gender_by_age_table(report.Variant("run", [tmp_path / "run"]))
    assert "| 2.00 | 3.00 | +1.00 |" in table.splitlines()[2]
    assert table.endswith("| +1.00 [+1.00, +1.00] |")


def test_the_old_faces_table_compares_the_faces_over_60(tmp_path):
    # Two faces over 60 among six; the second variant predicts them 4 years closer.
    true = np.array([10.0, 20.0, 30.0, 40.0, 70.0, 80.0])
    young = np.array([11.0, 21.0, 31.0, 41.0, 60.0, 70.0])  # the old 10 years too young
    closer = np.array([11.0, 21.0, 31.0, 41.0, 64.0, 74.0])  # 6 years too young
    for name, predicted in (("plain", young), ("weighted", closer)):
        for seed in (0, 1):
            write_run(tmp_path / f"{name}{seed}", true, predicted, seed)
    variants = [
        report.Variant(name, [tmp_path / f"{name}0", tmp_path / f"{name}1"])
        for name in ("plain", "weighted")
    ]
    lines = report.old_faces_table(variants).splitlines()
    assert (
        lines[2] == "| plain | 2 | 4.00 ± 0.00 | 2 | 10.00 ± 0.00 | -10.00 ± 0.00 | — |"
    )
    assert lines[3] == (
        "| weighted | 2 | 2.67 ± 0.00 | 2 | 6.00 ± 0.00 | -6.00 ± 0.00 | "
        "-4.00 [-4.00, -4.00] |"
    )
