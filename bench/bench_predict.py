"""Benchmark `predict` on a folder of face crops: images per second of the whole path.

    python bench/bench_predict.py
    python bench/bench_predict.py --model runs/cpu/model.keras --images 1000 --rounds 3

Real test-split UTKFace faces (aligned 200x200 crops) are linked into a temporary folder,
and three contenders run `photos.predict_files` on it as `python train_loop.py predict
FOLDER` does: the model loaded from its file, the folder listed, the faces predicted and
the CSV written, each face averaged over its test-time views as the command's default is
(`--tta-zooms` and `--no-tta` as `predict` takes them; only Python's and TensorFlow's
start-up are left out):

1. auto: `--crop auto`, the default: a small, about square picture is known for a face
   crop from its header and taken as it is; the other pictures are searched by threads;
2. none: `--crop none`, every picture taken as it is: the batched prediction alone;
3. sequential: `--crop auto` as it was, every picture decoded and searched for faces by
   OpenCV's detector, one after another, before the face crops are taken as they are.

All three must write the same rows. The model is the untrained CPU-preset one unless
`--model` gives one (the weights do not change the speed). Every contender runs once,
untimed, on a few files first (tracing, the first reads from disk); then they alternate,
starting at a different one each round, and the median images per second of each is
reported, with the ratios.
"""

import argparse
import contextlib
import io
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# devices first: it sets TensorFlow's environment (oneDNN) before the import.
import devices  # noqa: E402
import train_loop  # noqa: E402
import evaluation  # noqa: E402
import photos  # noqa: E402
import utk_data  # noqa: E402

import keras  # noqa: E402

SEED = 0


def sort_one_by_one(paths, crop, image_size):
    """`photos._sort_pictures` as it was: each picture decoded and searched in turn."""
    sorted_pictures = []
    for path in paths:
        try:
            picture = photos.read_photo(path)
        except ValueError as error:
            sorted_pictures.append(("skipped", str(error).split(": ", 1)[-1]))
            continue
        found = photos.find_faces(picture)
        if crop == "auto" and photos.is_tight_crop(picture, found):
            sorted_pictures.append(("as is", None))
            continue
        crops = [
            (face, photos._face_crops(picture, face, image_size)) for face in found
        ]
        sorted_pictures.append(("faces", crops))
    return sorted_pictures


def predict(model_file, sources, out, tta, crop):
    """Rows of `photos.predict_files`, its summary on standard error kept quiet."""
    with contextlib.redirect_stderr(io.StringIO()):
        rows, skipped = photos.predict_files(model_file, sources, out, tta, crop)
    if skipped:
        raise ValueError(f"unreadable files in the benchmark: {skipped[:3]}")
    return rows


def auto(model_file, sources, out, tta):
    """`predict --crop auto`: face crops known from their header."""
    return predict(model_file, sources, out, tta, "auto")


def none(model_file, sources, out, tta):
    """`predict --crop none`: the batched prediction alone."""
    return predict(model_file, sources, out, tta, "none")


def sequential(model_file, sources, out, tta):
    """`predict --crop auto` as it was: the detector on every picture, in turn."""
    with mock.patch.object(photos, "_sort_pictures", sort_one_by_one):
        return predict(model_file, sources, out, tta, "auto")


CONTENDERS = {"auto": auto, "none": none, "sequential": sequential}


def link_faces(records, folder):
    """Link the image files of `records` into `folder`; return their links."""
    links = []
    for record in records:
        link = Path(folder) / Path(record.path).name
        link.symlink_to(Path(record.path).resolve())
        links.append(str(link))
    return links


def model_file(arguments, folder):
    """The model file to predict with: `--model`, or the untrained CPU-preset model."""
    if arguments.model:
        return arguments.model
    keras.utils.set_random_seed(SEED)
    model = train_loop.make_model(train_loop.TrainConfig(preset="cpu"), 33.0)
    path = Path(folder) / "model.keras"
    model.save(path)
    return str(path)


def time_rounds(model_path, folder, out, tta, rounds, images):
    """Images per second of each contender in each round, the order turning."""
    speeds = {name: [] for name in CONTENDERS}
    for round_number in range(rounds):
        turn = round_number % len(CONTENDERS)
        order = list(CONTENDERS)[turn:] + list(CONTENDERS)[:turn]
        rows = {}
        for name in order:
            start = time.perf_counter()
            rows[name] = CONTENDERS[name](model_path, [folder], out, tta)
            speeds[name].append(images / (time.perf_counter() - start))
        if len({tuple(found) for found in rows.values()}) != 1:
            raise ValueError(f"different rows in round {round_number + 1}: {rows}")
        print(
            f"round {round_number + 1}: "
            + ", ".join(f"{name} {speeds[name][-1]:,.0f} img/s" for name in CONTENDERS)
        )
    return speeds


def main(argv=None):
    """Time the three contenders and print each round, the medians and the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", help="folder, archive or URL (default: see README)")
    parser.add_argument("--model", help="a model.keras file (default: untrained)")
    parser.add_argument("--images", type=int, default=600, help="face crops to predict")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of all three")
    evaluation.add_tta_argument(parser)
    arguments = parser.parse_args(argv)
    tta = evaluation.tta_from_arguments(arguments)
    print("=== bench_predict ===")
    print("machine:", devices.describe_machine())
    records, _ = utk_data.load_records(utk_data.locate(arguments.data), verbose=False)
    _, _, test = utk_data.split_records(records)
    chosen = random.Random(SEED).sample(test, arguments.images)
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary) / "faces"
        folder.mkdir()
        paths = link_faces(chosen, folder)
        model_path = model_file(arguments, temporary)
        out = Path(temporary) / "ages.csv"
        print(
            f"{len(paths)} test-split face crops, model {Path(model_path).name}, "
            f"test-time zooms {evaluation.tta_zooms(tta) or 'none (one image a face)'}"
        )
        # Untimed warm-up: tracing and the first reads from disk.
        for run in CONTENDERS.values():
            run(model_path, paths[:64], out, tta)
        speeds = time_rounds(
            model_path, str(folder), out, tta, arguments.rounds, len(paths)
        )
    medians = {name: statistics.median(values) for name, values in speeds.items()}
    for name, value in medians.items():
        print(f"{name}: {value:,.0f} images/s (median of {arguments.rounds})")
    print(f"auto/sequential img/s ratio: {medians['auto'] / medians['sequential']:.1f}")
    print(f"auto/none img/s ratio: {medians['auto'] / medians['none']:.2f}")


if __name__ == "__main__":
    sys.exit(main())
