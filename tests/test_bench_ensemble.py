"""bench/bench_ensemble.py: the average of several runs' predicted ages, face by face."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import bench_ensemble  # noqa: E402
import runs  # noqa: E402


def write_run(folder, faces, ages, predicted):
    """A run folder as `train` leaves it: metrics.json and test_predictions.csv."""
    folder.mkdir()
    (folder / "metrics.json").write_text(json.dumps({"tta": False}))
    lines = ["face,age,gender,race,predicted_no_tta"]
    lines += [f"{f},{a},0,0,{p}" for f, a, p in zip(faces, ages, predicted)]
    (folder / "test_predictions.csv").write_text("\n".join(lines) + "\n")
    return folder


def test_the_average_is_taken_face_by_face_whatever_the_order(tmp_path):
    # Two runs, one too young and one too old on every face: their average is exact.
    one = write_run(tmp_path / "one", ["a", "b", "c"], [10, 80, 30], [8, 76, 29])
    two = write_run(tmp_path / "two", ["c", "a", "b"], [30, 10, 80], [31, 12, 84])
    true, predicted, _ = runs.aligned_predictions([one, two])
    rows = bench_ensemble.ensemble_rows(true, predicted, old=70)
    single, pair = rows
    assert single[:2] == (1, 2) and pair[:2] == (2, 1)
    # Alone: MAE (2 + 4 + 1) / 3 and (2 + 4 + 1) / 3; the 80-year-old -4 and +4.
    assert single[2] == pytest.approx(7 / 3) and single[4] == pytest.approx(0.0)
    assert single[3] == pytest.approx(4.0)
    assert pair[2:] == pytest.approx((0.0, 0.0, 0.0))


def test_runs_of_other_faces_are_refused_by_folder(tmp_path, capsys):
    one = write_run(tmp_path / "one", ["a", "b"], [10, 80], [8, 76])
    other = write_run(tmp_path / "other", ["a", "z"], [10, 80], [8, 76])
    with pytest.raises(SystemExit) as exit_info:
        bench_ensemble.main([str(one), str(other)])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and str(other) in error and "one split" in error
    assert np.isfinite(runs.aligned_predictions([one, one]).predicted).all()
