"""What does `predict` give on files and pictures? Its speed on a folder of face crops, and
its MAE on faces placed in larger pictures, where the detector has to find them.

    python bench/bench_predict.py speed --model runs/default/model.keras
    python bench/bench_predict.py speed --model runs/default/model.keras --tta-zooms 1.0
    python bench/bench_predict.py pictures --model runs/default/model.keras
    python bench/bench_predict.py pictures --model runs/default/model.keras --split val \\
        --frame-zoom 0.92
    python bench/bench_predict.py speed --limit 64 --rounds 1      # an untrained model

speed (600 test-split faces by default): the aligned 200x200 crops are linked into a
temporary folder, and three contenders run `photos.predict_files` on it as `python
train_loop.py predict FOLDER` does: the model loaded from its file, the folder listed, the
faces predicted with the views `--tta-zooms` (or `--no-tta`) asks for, as `predict` takes
them, and the CSV written (only Python's and TensorFlow's start-up are left out):

1. auto: `--crop auto`, the default: a small, about square picture is known for a face
   crop from its header and taken as it is; the other pictures are searched by threads;
2. none: `--crop none`, every picture taken as it is: the batched prediction alone;
3. sequential: `--crop auto` as it was: every picture decoded and searched for faces by
   OpenCV's detector, one after another, before the face crops are taken as they are.

All three must write the same rows. Without `--model`, the untrained CPU-preset model (the
weights do not change the speed). Each contender runs once, untimed, on a few files first.

pictures (300 test-split faces by default, never trained on): each face is predicted as
UTKFace ships it (aligned), and pasted into a picture two to three times its size, at a
random scale (1 to 1.8) and place, on a plain or a noisy background, as a phone photo
frames a face more loosely. The pictures go through `predict` as a student's photo does
(`--crop auto`: the detector and UTKFace's framing), and with `--crop none`; as a control,
the true frame is cut out of the saved picture. The gap between the aligned faces' MAE and
the pictures' on the faces found is what the framing loses. `--frame-zoom` and `--no-eyes`
try other framings (choose them on `--split val`). No picture is kept.
"""

import contextlib
import io
import tempfile
from pathlib import Path
from unittest import mock

import common  # first: the repository's path and TensorFlow's environment

import numpy as np
from PIL import Image

import photos
import readout

DEFAULT_LIMITS = {"speed": 600, "pictures": 300}

# ---------------------------------------------------------------------------------------
# speed
# ---------------------------------------------------------------------------------------


def sort_one_by_one(paths, crop, image_size):
    """`photos._sort_pictures` as it was: each picture decoded and searched in turn."""
    return [photos._search_picture(path, crop, image_size) for path in paths]


class PredictContender:
    """`photos.predict_files` on a folder, as `predict` runs it."""

    def __init__(self, model_path, folder, tta, crop, sequential=False):
        self.arguments = model_path, [str(folder)], Path(folder).parent / "ages.csv"
        self.tta, self.crop, self.sequential = tta, crop, sequential
        self.count = len(list(Path(folder).iterdir()))

    def run(self):
        """The Timing of one prediction of the folder; its rows kept in `rows`."""
        start = common.clocks()
        replaced = mock.patch.object(photos, "_sort_pictures", sort_one_by_one)
        # Its summary on standard error is kept quiet.
        with contextlib.redirect_stderr(io.StringIO()):
            with replaced if self.sequential else contextlib.nullcontext():
                rows, skipped = photos.predict_files(
                    *self.arguments, tta=self.tta, crop=self.crop
                )
        if skipped:
            raise ValueError(f"unreadable files in the benchmark: {skipped[:3]}")
        self.rows = rows
        return common.since(start, self.count)


def untrained_model(folder):
    """The path of the untrained CPU-preset model, saved in `folder`."""
    model = common.make_model(common.config_of("preset=cpu precision=float32"), 33.0)
    model.save(Path(folder) / "model.keras")
    return str(Path(folder) / "model.keras")


def speed(arguments, tta):
    """The speed part: warm-up, each round, the medians and the ratios."""
    with tempfile.TemporaryDirectory(prefix="bench_predict-") as temporary:
        folders = [Path(temporary) / name for name in ("faces", "warm-up")]
        for folder in folders:
            folder.mkdir()
        paths = common.link_files(common.faces(arguments, "test"), folders[0])
        for path in paths[:64]:
            (folders[1] / Path(path).name).symlink_to(Path(path).resolve())
        model_path = arguments.model or untrained_model(temporary)
        zooms = readout.tta_zooms(tta) or "none (one image a face)"
        print(
            f"{len(paths)} test-split face crops, {model_path}, test-time zooms {zooms}"
        )
        contenders = {}
        for name, crop, sequential in (
            ("auto", "auto", False), ("none", "none", False), ("sequential", "auto", True)
        ):  # fmt: skip
            # An untimed run on a few files: tracing and the first reads from disk.
            PredictContender(model_path, folders[1], tta, crop, sequential).run()
            contenders[name] = PredictContender(
                model_path, folders[0], tta, crop, sequential
            )
        results = common.timed_rounds(contenders, arguments.rounds)
    rows = {tuple(contender.rows) for contender in contenders.values()}
    if len(rows) != 1:
        raise ValueError("the three contenders wrote different rows")
    print(f"\n=== medians of {arguments.rounds} round(s) ===")
    common.print_rates(results, {name: name for name in contenders})
    for name in ("sequential", "none"):
        ratio = common.median_ratio(results, "auto", name)
        print(f"auto/{name} img/s ratio: {ratio:.2f}")


# ---------------------------------------------------------------------------------------
# pictures
# ---------------------------------------------------------------------------------------


def make_picture(face, rng):
    """A picture with the face somewhere in it: (picture, (left, top, side) of the face)."""
    side = round(200 * rng.uniform(1.0, 1.8))
    height, width = (round(side * rng.uniform(2.0, 3.0)) for _ in range(2))
    if rng.random() < 0.5:
        picture = np.full((height, width, 3), rng.integers(40, 220, 3), np.uint8)
    else:
        picture = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    left, top = int(rng.integers(0, width - side)), int(rng.integers(0, height - side))
    resized = Image.fromarray(face).resize((side, side), Image.LANCZOS)
    picture[top : top + side, left : left + side] = np.asarray(resized)
    return picture, (left, top, side)


def the_face(rows, placed):
    """The row whose box centre lies inside the placed face, or None."""
    left, top, side = placed
    for row in rows:
        x, y, width, height = row.box
        if left <= x + width / 2 < left + side and top <= y + height / 2 < top + side:
            return row
    return None


def predict_pictures(model, chosen, rng, tta):
    """Each face pasted into a picture and predicted: ages (nan where the face was not
    found) of the true frame cut out, of --crop auto and of --crop none."""
    with tempfile.TemporaryDirectory(prefix="bench_predict-") as folder:
        paths, places, exact = [], [], []
        for number, record in enumerate(chosen):
            picture, placed = make_picture(photos.read_photo(record.path), rng)
            paths.append(str(Path(folder) / f"picture{number}.jpg"))
            Image.fromarray(picture).save(paths[-1], quality=92)
            places.append(placed)
            # The control: the face cut out of the saved picture at its true place.
            saved = photos.read_photo(paths[-1])
            exact.append(str(Path(folder) / f"exact{number}.png"))
            Image.fromarray(photos.crop_frame(saved, placed)).save(exact[-1])
        control, _ = photos.predict_paths(model, exact, tta=tta)
        framed, _ = photos.predict_paths(model, paths, tta=tta, crop="auto")
        whole, _ = photos.predict_paths(model, paths, tta=tta, crop="none")
    found = []
    for path, placed in zip(paths, places):
        row = the_face([row for row in framed if row.path == path and row.box], placed)
        found.append(np.nan if row is None else row.age)
    ages = lambda rows: np.array([row.age for row in rows])  # noqa: E731
    return ages(control), np.array(found), ages(whole)


def pictures(arguments, tta):
    """The pictures part: the MAEs side by side."""
    photos.FRAME_ZOOM = arguments.frame_zoom
    if arguments.no_eyes:
        find_faces = photos.find_faces
        photos.find_faces = lambda image: find_faces(image, use_eyes=False)
    model = readout.load_model(arguments.model)
    rng = np.random.default_rng(arguments.seed)
    chosen = common.faces(arguments, arguments.split, rng)
    true = np.array([record.age for record in chosen], np.float64)
    aligned, _ = photos.predict_paths(model, [str(r.path) for r in chosen], tta=tta)
    aligned = np.array([row.age for row in aligned])
    control, framed, whole = predict_pictures(model, chosen, rng, tta)
    hit = ~np.isnan(framed)
    print(
        f"faces: {len(chosen)} of the {arguments.split} split (seed {arguments.seed}), "
        f"frame zoom {photos.FRAME_ZOOM}, eyes {not arguments.no_eyes}, test-time zooms "
        f"{readout.tta_zooms(tta) or 'none'}"
    )
    print(f"found in their pictures: {hit.sum()} ({hit.mean():.1%})")
    for name, predicted, faces in (
        ("aligned, all faces", aligned, slice(None)),
        ("aligned, faces found", aligned, hit),
        ("pictures, the true frame cut out", control, hit),
        ("pictures, --crop auto, faces found", framed, hit),
        ("pictures, --crop none (the whole picture)", whole, slice(None)),
    ):
        print(f"MAE {name}: {np.abs(predicted - true)[faces].mean():.2f}")
    gap = np.abs(framed - true)[hit].mean() - np.abs(aligned - true)[hit].mean()
    print(f"pictures - aligned MAE on the faces found: {gap:+.2f}")


def main(argv=None):
    """Run the part asked for."""
    parser = common.parser(__doc__, rounds=3)
    parser.add_argument("part", choices=tuple(DEFAULT_LIMITS))
    common.add_model_argument(parser, required=False)
    readout.add_tta_argument(parser)  # as predict takes them
    parser.add_argument("--split", choices=("val", "test"), default="test")
    parser.add_argument("--frame-zoom", type=float, default=photos.FRAME_ZOOM)
    parser.add_argument(
        "--no-eyes", action="store_true", help="frame from the box alone"
    )
    arguments = parser.parse_args(argv)
    arguments.limit = arguments.limit or DEFAULT_LIMITS[arguments.part]
    if arguments.part == "pictures" and not arguments.model:
        parser.error("pictures needs --model")
    common.header(f"bench_predict {arguments.part}")
    tta = readout.tta_from_arguments(arguments)
    if arguments.part == "speed":
        speed(arguments, tta)
    else:
        pictures(arguments, tta)


if __name__ == "__main__":
    main()
