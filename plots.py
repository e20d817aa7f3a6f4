"""The figures of a model and of its run: the learning curve, the error by age, the worst
faces. Saved as every figure of this project is saved (save_fig).

    plots.plot_history(runs.read_history("runs/default"), "learning_curve.png")
"""

import numpy as np

import utk_data
from metrics import mae_by_age


def save_fig(figure, file_name):
    """Save a figure as every figure of this project is saved."""
    figure.savefig(file_name, dpi=120, bbox_inches="tight")


def curve_value(value):
    """A history's value for a curve: NaN, a gap, where the epoch has none (not
    validated)."""
    return float("nan") if value is None else value


def plot_history(history, file_name=None):
    """Training and validation MAE per epoch; with an average of the weights, the
    validation MAE of the average and of the weights it averages."""
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    averaged = any(row.get("val_mae_without_ema") is not None for row in history)
    figure, axes = plt.subplots(figsize=(6, 4))
    axes.plot(epochs, [row["mae"] for row in history], label="train MAE (augmented)")
    if averaged:
        # Validated some epochs only (--validate-trained-every): a point each.
        validated = [
            row for row in history if row.get("val_mae_without_ema") is not None
        ]
        axes.plot(
            [row["epoch"] for row in validated],
            [row["val_mae_without_ema"] for row in validated],
            marker="o",
            markersize=3,
            label="validation MAE, trained weights",
            alpha=0.6,
        )
    axes.plot(
        epochs,
        [curve_value(row["val_mae"]) for row in history],
        label=(
            "validation MAE, average of the weights" if averaged else "validation MAE"
        ),
    )
    axes.set_xlabel("epoch")
    axes.set_ylabel("MAE (years)")
    axes.legend()
    axes.grid(alpha=0.3)
    if file_name:
        save_fig(figure, file_name)
    return figure


def plot_evaluation(true, predicted, file_name=None):
    """Predicted against true age, and the MAE of each age bin."""
    import matplotlib.pyplot as plt

    figure, (scatter, bars) = plt.subplots(1, 2, figsize=(11, 4.2))
    scatter.scatter(true, predicted, s=4, alpha=0.3)
    scatter.plot([0, utk_data.MAX_AGE], [0, utk_data.MAX_AGE], color="black", lw=1)
    scatter.set_xlabel("true age")
    scatter.set_ylabel("predicted age")
    bins = mae_by_age(true, predicted)
    names = [name for name, row in bins.items() if row["count"]]
    bars.bar(names, [bins[name]["mae"] for name in names])
    bars.set_xlabel("true age")
    bars.set_ylabel("MAE (years)")
    for index, name in enumerate(names):
        bars.annotate(
            f"n={bins[name]['count']}", (index, 0), ha="center", va="bottom", fontsize=7
        )
    figure.tight_layout()
    if file_name:
        save_fig(figure, file_name)
    return figure


def plot_worst(records, true, predicted, count=8, image_size=100):
    """The faces with the largest errors, titled true -> predicted (shown, never saved)."""
    import matplotlib.pyplot as plt

    worst = np.argsort(-np.abs(predicted - true))[:count]
    images = utk_data.load_images([records[i].path for i in worst], image_size).numpy()
    figure, axes = plt.subplots(
        1, len(worst), figsize=(1.6 * len(worst), 2.0), squeeze=False
    )
    for axis, index, image in zip(axes[0], worst, images):
        axis.imshow(image)
        axis.set_title(f"{true[index]:.0f} → {predicted[index]:.0f}", fontsize=9)
        axis.axis("off")
    return figure
