"""Which views should test-time augmentation average? Chosen on the validation faces.

    python bench/bench_tta.py --model runs/default/model.keras
    python bench/bench_tta.py --model runs/default/model.keras runs/default_seed1/model.keras

Training shows the network each face mirrored or not and zoomed in on a crop of 88-100 % of
its side (utk_data.augment_batch). At test time a face can be shown the same ways: as it is
and zoomed in on its centre (utk_data.zoom_centre, the crop the augmentation would make),
each view also mirrored, and the ages averaged. For each trained model this predicts the
validation and test faces once per view and prints the MAE of several sets of views, on
both splits, with the faces aged 60 and over apart. The set to keep is the one with the
lowest mean validation MAE over the models; the test columns are there to be read after
that choice, not to make it. A last row moves the mirror readout by the mean change the
preset's zooms make (a shift of every age alone), and each row gives the mean signed error
(predicted - true). Each set's seconds are those of its forward passes on this machine
(the sum of its views').
"""

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# devices first: it sets TensorFlow's environment (oneDNN) before the import.
import devices  # noqa: E402
import evaluation  # noqa: E402
import train_loop  # noqa: E402
import utk_data  # noqa: E402

import numpy as np  # noqa: E402

# The sets of zooms compared (1.0: the whole image); every view is also mirrored, except in
# the first row, the single image the network is validated on while training.
VIEW_SETS = {
    "one image, no mirror": (),
    "mirror images only (zoom 1.0)": (1.0,),
    "zoom 0.94 only": (0.94,),
    "zoom 0.88 only": (0.88,),
    "zooms 1.0, 0.94": (1.0, 0.94),
    "zooms 1.0, 0.94, 0.88": (1.0, 0.94, 0.88),
    "zooms 1.0, 0.97, 0.94, 0.91, 0.88": (1.0, 0.97, 0.94, 0.91, 0.88),
}
MIRROR = "mirror images only (zoom 1.0)"
PRESET = next(name for name, z in VIEW_SETS.items() if z == evaluation.TTA_ZOOMS)
SHIFTED = "mirror images, shifted as the zooms shift"
OLD = 60  # the faces aged this and over are reported apart
CHUNK = 256  # images zoomed at a time


def view_ages(model, images, zoom, mirror):
    """Ages (n,) the model predicts for uint8 images (n, size, size, 3), zoomed in on their
    centre by `zoom` and mirrored when `mirror`."""
    tf = utk_data._tf()
    ages = []
    for start in range(0, len(images), CHUNK):
        chunk = tf.cast(images[start : start + CHUNK], tf.float32) / 255.0
        chunk = utk_data.zoom_centre(chunk, zoom)
        if mirror:
            chunk = tf.reverse(chunk, axis=[2])
        ages.append(evaluation.predict_ages(model, chunk, tta=False))
    return np.concatenate(ages)


def every_view(model, decoded):
    """{(zoom, mirrored): (ages (n,), seconds)} of every view any set asks for."""
    views = {}
    for zoom in sorted({z for zooms in VIEW_SETS.values() for z in zooms} | {1.0}):
        for mirror in (False, True):
            started = time.perf_counter()
            ages = view_ages(model, decoded.images, zoom, mirror)
            views[zoom, mirror] = ages, time.perf_counter() - started
    return views


def set_readout(views, zooms):
    """(ages (n,), seconds) of a set of zooms: each view and its mirror averaged (the plain
    image alone for an empty set)."""
    keys = [(zoom, mirror) for zoom in zooms for mirror in (False, True)]
    keys = keys or [(1.0, False)]
    ages = np.mean([views[key][0] for key in keys], axis=0)
    return ages, sum(views[key][1] for key in keys)


def main(argv=None):
    """Print the validation and test MAE of every set of views, for every model."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", nargs="+", required=True, help="model.keras files")
    parser.add_argument("--data", help="folder, archive or URL (default: see README)")
    arguments = parser.parse_args(argv)
    splits = train_loop.prepare_data(train_loop.TrainConfig(data=arguments.data))
    print("=== bench_tta ===")
    print("machine:", devices.describe_machine())
    found = {name: {"validation": [], "test": []} for name in (*VIEW_SETS, SHIFTED)}
    for path in arguments.model:
        model = evaluation.load_keras_model(path)
        print(f"--- {path}")
        for split, records in (("validation", splits[1]), ("test", splits[2])):
            decoded = utk_data.decode_records(records, model.image_size)
            true = np.array([record.age for record in decoded.records], np.float64)
            old = true >= OLD
            views = every_view(model, decoded)
            readouts = {name: set_readout(views, z) for name, z in VIEW_SETS.items()}
            # Does the gain of the zooms come from a shift of every age? The mirror
            # readout moved by the mean change the preset's zooms make tells.
            mirror, zoomed = (readouts[name][0] for name in (MIRROR, PRESET))
            shifted = np.maximum(mirror + np.mean(zoomed - mirror), 0.0)
            readouts[SHIFTED] = shifted, 0.0
            for name, (ages, seconds) in readouts.items():
                error = np.abs(ages - true)
                found[name][split].append(error.mean())
                print(
                    f"{split:>10} | {name:<42} | MAE {error.mean():.3f}, signed "
                    f"{(ages - true).mean():+.2f} | {OLD}+ ({old.sum()}) "
                    f"{error[old].mean():.3f}, signed {(ages - true)[old].mean():+.2f} "
                    f"| {seconds:4.1f} s"
                )
    print(f"--- mean over {len(arguments.model)} model(s)")
    best = min(VIEW_SETS, key=lambda name: np.mean(found[name]["validation"]))
    for name in found:
        validation, test = (np.mean(found[name][split]) for split in found[name])
        mark = "  <- lowest validation MAE" if name == best else ""
        print(f"{name:<42} | validation {validation:.3f} | test {test:.3f}{mark}")


if __name__ == "__main__":
    main()
