"""The pictures test: held-out faces predicted aligned, and placed in larger pictures.

    python bench/bench_pictures.py --model runs/cpu/model.keras
    python bench/bench_pictures.py --model runs/cpu/model.keras --images 500 --data ~/UTKFace

Each of `--images` test-split faces (never trained on) is predicted as UTKFace ships it
(200x200, aligned) and pasted into a picture two to three times its size, at a random scale
(1 to 1.8) and place, on a plain or a noisy background, as a phone photo frames a face
more loosely. The pictures go through `predict` as a student's photo does (`--crop auto`:
the face detector and UTKFace's framing) and, for comparison, with `--crop none`. The same
model, the same faces: the gap between the aligned and the pictures' MAE is what the framing
loses. No picture is kept.
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# devices first: it sets TensorFlow's environment (oneDNN) before the import.
import devices  # noqa: E402
import evaluation  # noqa: E402
import photos  # noqa: E402
import utk_data  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402


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


def parse_arguments(argv):
    """The benchmark's options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="a model.keras file")
    parser.add_argument("--data", help="folder, archive or URL (default: see README)")
    parser.add_argument("--images", type=int, default=300, help="test-split faces")
    parser.add_argument("--seed", type=int, default=0, help="chooses faces and places")
    parser.add_argument(
        "--split",
        choices=("val", "test"),
        default="test",
        help="where the faces come from",
    )
    parser.add_argument(
        "--frame-zoom",
        type=float,
        default=photos.FRAME_ZOOM,
        help="try another zoom of the frame (choose it on --split val)",
    )
    parser.add_argument(
        "--no-eyes", action="store_true", help="frame the faces from their box alone"
    )
    evaluation.add_tta_argument(parser)  # as predict takes them
    return parser.parse_args(argv)


def predict_pictures(model, chosen, rng, tta):
    """Each face pasted into a picture and predicted: (paths, places, rows of the true
    frame cut out, rows with --crop auto, rows with --crop none). No picture is kept."""
    with tempfile.TemporaryDirectory(prefix="bench_pictures-") as folder:
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
    return paths, places, control, framed, whole


def main(argv=None):
    """Predict the faces aligned and in pictures; print the MAEs side by side."""
    arguments = parse_arguments(argv)
    photos.FRAME_ZOOM = arguments.frame_zoom
    if arguments.no_eyes:
        find_faces = photos.find_faces
        photos.find_faces = lambda image: find_faces(image, use_eyes=False)
    print("=== bench_pictures ===")
    print("machine:", devices.describe_machine())
    model = evaluation.load_keras_model(arguments.model)
    records, _ = utk_data.load_records(utk_data.locate(arguments.data), verbose=False)
    _, val, test = utk_data.split_records(records)
    faces = test if arguments.split == "test" else val
    rng = np.random.default_rng(arguments.seed)
    chosen = [faces[i] for i in rng.permutation(len(faces))[: arguments.images]]
    ages = np.array([record.age for record in chosen], np.float64)
    tta = evaluation.tta_from_arguments(arguments)
    aligned, _ = photos.predict_paths(model, [str(r.path) for r in chosen], tta=tta)
    aligned = np.array([row.age for row in aligned])
    paths, places, control, framed, whole = predict_pictures(model, chosen, rng, tta)
    by_path = {
        path: [row for row in framed if row.path == path and row.box] for path in paths
    }
    found = [the_face(by_path[path], placed) for path, placed in zip(paths, places)]
    hit = np.array([row is not None for row in found])
    pictures = np.array([row.age if row else np.nan for row in found])
    whole = np.array([row.age for row in whole])
    control = np.array([row.age for row in control])
    print(
        f"faces: {len(chosen)} of the {arguments.split} split (seed {arguments.seed}), "
        f"frame zoom {photos.FRAME_ZOOM}, eyes {not arguments.no_eyes}, test-time zooms "
        f"{evaluation.tta_zooms(tta) or 'none'}"
    )
    print(f"found in their pictures: {hit.sum()} ({hit.mean():.1%})")
    for name, predicted, faces in (
        ("aligned, all faces", aligned, slice(None)),
        ("aligned, faces found", aligned, hit),
        ("pictures, the true frame cut out", control, hit),
        ("pictures, --crop auto, faces found", pictures, hit),
        ("pictures, --crop none (the whole picture)", whole, slice(None)),
    ):
        print(f"MAE {name}: {np.abs(predicted - ages)[faces].mean():.2f}")
    gap = np.abs(pictures - ages)[hit].mean() - np.abs(aligned - ages)[hit].mean()
    print(f"pictures - aligned MAE on the faces found: {gap:+.2f}")


if __name__ == "__main__":
    sys.exit(main())
