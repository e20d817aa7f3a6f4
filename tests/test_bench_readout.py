"""bench/bench_readout.py: the maps of the predicted ages that it fits."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import bench_readout  # noqa: E402


def test_the_knee_is_found_where_the_old_faces_start_to_be_pulled():
    # Faces of every age; those over 55 predicted halfway to 55, the rest exactly.
    true = np.repeat(np.arange(0.0, 100.0), 5)
    predicted = np.where(true > 55, 55 + 0.5 * (true - 55), true)
    knee, slope = bench_readout.fit_knee(true, predicted)
    assert (knee, slope) == (55.0, 1.0)
    fitted, _, fitted_knee = bench_readout.fitted_maps(true, predicted, bins=10)
    assert fitted_knee == (knee, slope)
    assert fitted["widening above a knee"](predicted) == pytest.approx(true)


def test_no_pull_leaves_the_ages_as_they_are():
    true = np.repeat(np.arange(0.0, 100.0), 5)
    knee, slope = bench_readout.fit_knee(true, true)
    assert slope == 0.0 and knee == bench_readout.KNEES[0]
