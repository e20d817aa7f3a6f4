"""Metrics of predicted ages: MAE and RMSE, by age, gender and race, the balanced MAE,
and the median baseline. NumPy only.

    metrics.evaluate_predictions(true, predicted)["mae_by_age"]["80+"]["mean_error"]
"""

import numpy as np

import utk_data


def _mae_by(true, predicted, masks):
    """{name: {"mae", "mean_error", "count"}} of the faces each boolean mask selects;
    "mean_error" is the mean of predicted - true age: a pull towards the middle ages shows
    as positive errors for the young and negative ones for the old."""
    errors = predicted - true
    return {
        name: {
            "mae": float(np.abs(errors[inside]).mean()) if inside.any() else None,
            "mean_error": float(errors[inside].mean()) if inside.any() else None,
            "count": int(inside.sum()),
        }
        for name, inside in masks.items()
    }


def mae_by_age(true, predicted):
    """MAE and mean signed error per age bin (0-9, ..., 80+):
    {bin: {"mae", "mean_error", "count"}}."""
    return _mae_by(true, predicted, utk_data.age_bin_masks(true))


def balanced_mae(true, predicted):
    """The mean of the MAEs of the age bins (0-9, ..., 80+) that hold faces: the MAE the
    predictions would have on faces with as many in every bin."""
    errors = np.abs(np.asarray(predicted, np.float64) - np.asarray(true, np.float64))
    masks = [mask for mask in utk_data.age_bin_masks(true).values() if mask.any()]
    return float(np.mean([errors[mask].mean() for mask in masks]))


def evaluate_predictions(true, predicted, groups=None):
    """MAE, RMSE, the balanced MAE (balanced_mae) and MAE by age bin (and by gender and
    race, when labelled) of predictions."""
    errors = predicted - true
    result = {
        "mae": float(np.abs(errors).mean()),
        "rmse": float(np.sqrt((errors**2).mean())),
        "balanced_mae": balanced_mae(true, predicted),
        "mae_by_age": mae_by_age(true, predicted),
        "count": int(true.size),
        # Task 2: a linear output can predict negative ages; a ReLU output clips them to 0.
        "negative_predictions": int(np.sum(predicted < 0)),
        "zero_predictions": int(np.sum(predicted == 0)),
    }
    names = {"gender": utk_data.GENDERS, "race": utk_data.RACES}
    for group, labels in (groups or {}).items():
        masks = {name: labels == index for index, name in enumerate(names[group])}
        result[f"mae_by_{group}"] = _mae_by(true, predicted, masks)
    return result


def median_baseline(train_records, test_records):
    """Test MAE and RMSE of predicting the median training age for every face."""
    median = float(np.median([record.age for record in train_records]))
    errors = np.array([record.age for record in test_records], np.float64) - median
    return {
        "median_age": median,
        "mae": float(np.abs(errors).mean()),
        "rmse": float(np.sqrt((errors**2).mean())),
        "count": int(errors.size),
    }
