"""Benchmark `predict` on a folder of faces: one image per call against batches.

    python bench/bench_predict.py
    python bench/bench_predict.py --data ~/UTKFace --images 1000 --rounds 3

Two contenders predict the ages of the same real UTKFace files with the same untrained
CPU-preset model (the weights do not change the speed):

1. per_image: what `predict` did before, for every file `utk_data.load_images([path])`
   and then `evaluation.predict_ages` on that one image;
2. batched: `photos.predict_paths`, which decodes the files in parallel with `tf.data`
   and predicts them in batches, as `predict --crop none` does (and `predict` does for the
   pictures that are face crops already).

Both start after an untimed warm-up (tracing, the first decode), alternate over the
rounds, and the median images per second of each is reported, with their ratio.
"""

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# devices first: it sets TensorFlow's environment (oneDNN) before the import.
import devices  # noqa: E402
import train_loop  # noqa: E402
import evaluation  # noqa: E402
import photos  # noqa: E402
import utk_data  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402

SEED = 0


def per_image(model, paths):
    """Ages predicted one file at a time, as `predict` did."""
    ages = []
    for path in paths:
        image = utk_data.load_images([path], model.image_size)
        ages.append(float(evaluation.predict_ages(model, image)[0]))
    return ages


def batched(model, paths):
    """Ages predicted by `photos.predict_paths`, as `predict --crop none` does."""
    rows, skipped = photos.predict_paths(model, paths)
    if skipped:
        raise ValueError(f"unreadable files in the benchmark: {skipped[:3]}")
    return [row.age for row in rows]


CONTENDERS = {"per_image": per_image, "batched": batched}


def main(argv=None):
    """Time both contenders and print each round and the medians."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", help="folder, archive or URL (default: see README)")
    parser.add_argument("--images", type=int, default=600, help="files to predict")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of both")
    arguments = parser.parse_args(argv)
    print("=== bench_predict ===")
    print("machine:", devices.describe_machine())
    records, _ = utk_data.load_records(utk_data.locate(arguments.data), verbose=False)
    paths = [str(r.path) for r in random.Random(SEED).sample(records, arguments.images)]
    keras.utils.set_random_seed(SEED)
    model = train_loop.make_model(train_loop.TrainConfig(preset="cpu"), 33.0)
    print(f"{len(paths)} files, CPU-preset model at {model.image_size} px")
    # Untimed warm-up: tracing and the first reads from disk.
    reference = {name: run(model, paths[:64]) for name, run in CONTENDERS.items()}
    np.testing.assert_allclose(*reference.values(), rtol=1e-4, atol=1e-3)
    speeds = {name: [] for name in CONTENDERS}
    for round_number in range(arguments.rounds):
        order = (
            list(CONTENDERS)[round_number % 2 :] + list(CONTENDERS)[: round_number % 2]
        )
        for name in order:
            start = time.perf_counter()
            CONTENDERS[name](model, paths)
            speeds[name].append(len(paths) / (time.perf_counter() - start))
        print(
            f"round {round_number + 1}: "
            + ", ".join(f"{name} {speeds[name][-1]:,.0f} img/s" for name in CONTENDERS)
        )
    medians = {name: statistics.median(values) for name, values in speeds.items()}
    for name, value in medians.items():
        print(f"{name}: {value:,.0f} images/s (median of {arguments.rounds})")
    print(
        f"batched/per_image img/s ratio: {medians['batched'] / medians['per_image']:.1f}"
    )


if __name__ == "__main__":
    sys.exit(main())
