"""How far is one network from a goal? The test MAE of the average of several runs'
predicted ages, for every subset of the runs of each size.

    python bench/bench_ensemble.py results/wd05_seed0 results/wd05_seed1 results/wd05_seed2

The runs (folders with `test_predictions.csv`, as `train` writes them or `results/` keeps
them) must have predicted the same test faces. Each face's ages, in the readout each run
reports, are averaged over the runs of a subset; for each size the mean over its subsets is
printed: the MAE of all faces, and the MAE and mean signed error (predicted - true) of the
faces aged `--old` and over. An average of independent networks is the usual ceiling of
what distilling them into one could reach; it costs their training time added up.
"""

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import runs  # noqa: E402 (after the repository's path)


def ensemble_rows(true, predicted, old):
    """One row for each number of runs averaged: (runs, subsets, MAE, the old faces' MAE,
    their mean signed error), each the mean over every subset of that size."""
    is_old = true >= old
    rows = []
    for size in range(1, len(predicted) + 1):
        scores = []
        for subset in itertools.combinations(range(len(predicted)), size):
            error = predicted[list(subset)].mean(axis=0) - true
            scores.append(
                (
                    np.abs(error).mean(),
                    np.abs(error[is_old]).mean(),
                    error[is_old].mean(),
                )
            )
        rows.append((size, len(scores), *np.mean(scores, axis=0)))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", help="run folders with test_predictions.csv")
    parser.add_argument(
        "--old", type=float, default=70, help="the old faces' lowest age (default: 70)"
    )
    arguments = parser.parse_args(argv)
    try:
        true, predicted, _ = runs.aligned_predictions(arguments.runs)
    except (OSError, ValueError) as error:
        parser.exit(2, f"bench_ensemble: {error}\n")
    old = arguments.old
    print(f"{len(true):,} test faces, {int((true >= old).sum())} of them aged {old:g}+")
    print(
        f"| runs averaged | subsets | MAE | {old:g}+: MAE | {old:g}+: mean signed error |"
    )
    print("|---:|---:|---:|---:|---:|")
    for size, subsets, mae, old_mae, old_bias in ensemble_rows(true, predicted, old):
        print(f"| {size} | {subsets} | {mae:.3f} | {old_mae:.2f} | {old_bias:+.2f} |")


if __name__ == "__main__":
    main()
