"""How OpenCV's face detector frames UTKFace's faces: the evidence behind the framing
constants of photos.py (FRAME_SCALE, FRAME_SHIFT, EYE_SCALE, EYE_SHIFT).

    python bench/bench_framing.py                      # 400 training faces, seed 0
    python bench/bench_framing.py --images 1000 --no-eyes --data ~/UTKFace

Each training face (200x200, as UTKFace ships it) is pasted at a random place into a noisy
canvas three times its size; the detector looks for it there, and its eyes inside the box.
Printed: the medians and the 10-90 % spreads of where UTKFace's frame sits relative to the
box and to the eyes, how far the frame `photos.frame_of` estimates lies from the true one,
and how large the box is when the detector looks at the 200x200 frame itself (TIGHT_CROP).
"""

import argparse
import math
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

import photos  # noqa: E402
import utk_data  # noqa: E402


def _framing(records, seed=0, use_eyes=True):
    """Where the detector's box, and the eyes found in it, sit in UTKFace frames: per face
    found in a larger canvas, a dict of the frame's side over the box's side ("scale") and
    its centre's shift in box sides ("shift_x", "shift_y"); the same over the distance
    between the eyes ("eye_scale", "eye_shift_x", "eye_shift_y", when both were found); the
    error of the frame `frame_of` estimates ("error": side over the true side,
    "error_x"/"error_y": centre shift in true sides); and "span", the box side over the
    frame side when the detector finds the face in the 200x200 frame itself, or None."""
    rng = np.random.default_rng(seed)
    rows = []
    for record in records:
        face = photos.read_photo(record.path)
        size = face.shape[0]
        canvas = rng.integers(90, 166, (3 * size, 3 * size, 3), dtype=np.uint8)
        left, top = (int(v) for v in rng.integers(0, 2 * size, 2))
        canvas[top : top + size, left : left + size] = face
        inside = [
            found
            for found in photos.find_faces(canvas, use_eyes)
            if left <= found.box[0] + found.box[2] / 2 < left + size
            and top <= found.box[1] + found.box[3] / 2 < top + size
        ]
        if not inside:
            continue
        (x, y, width, height), frame, eyes = inside[0]
        centre_x, centre_y = left + size / 2, top + size / 2
        if not use_eyes:  # The eyes are looked for all the same, for their own rows.
            eyes = photos.find_eyes(photos.gray_image(canvas), (x, y, width, height))
        row = {
            "scale": size / width,
            "shift_x": (centre_x - x - width / 2) / width,
            "shift_y": (centre_y - y - height / 2) / width,
            "error": frame[2] / size,
            "error_x": (frame[0] + frame[2] / 2 - centre_x) / size,
            "error_y": (frame[1] + frame[2] / 2 - centre_y) / size,
        }
        if eyes is not None:
            distance = math.dist(*eyes)
            row["eye_scale"] = size / distance
            row["eye_shift_x"] = (centre_x - (eyes[0][0] + eyes[1][0]) / 2) / distance
            row["eye_shift_y"] = (centre_y - (eyes[0][1] + eyes[1][1]) / 2) / distance
        in_frame = photos.find_faces(face, use_eyes=False)
        row["span"] = in_frame[0].box[2] / size if in_frame else None
        rows.append(row)
    return rows


def framing_command(arguments):
    """Print the medians and spreads of the framing measurement (FRAME_SCALE and so on)."""
    records, _ = utk_data.load_records(utk_data.locate(arguments.data), verbose=False)
    train, _, _ = utk_data.split_records(records)
    chosen = [train[i] for i in np.random.default_rng(0).permutation(len(train))]
    rows = _framing(chosen[: arguments.images], use_eyes=not arguments.no_eyes)
    print(f"faces found in a 3x canvas: {len(rows)} of {arguments.images}")
    with_eyes = [row for row in rows if "eye_scale" in row]
    print(f"both eyes found in {len(with_eyes)} of them")
    names = {
        "scale": "frame side / box side",
        "shift_x": "centre shift x (box sides)",
        "shift_y": "centre shift y (box sides)",
        "eye_scale": "frame side / eye distance",
        "eye_shift_x": "centre shift x from the eyes (eye distances)",
        "eye_shift_y": "centre shift y from the eyes (eye distances)",
        "error": f"frame_of's side / true side (zoom {photos.FRAME_ZOOM} included)",
        "error_x": "frame_of's centre - true centre, x (true sides)",
        "error_y": "frame_of's centre - true centre, y (true sides)",
    }
    for key, name in names.items():
        values = np.array([row[key] for row in rows if key in row])
        low, median, high = np.percentile(values, [10, 50, 90])
        print(f"{name}: median {median:.3f} (10-90 %: {low:.3f} to {high:.3f})")
    errors = np.log(np.array([row["error"] for row in rows]) / photos.FRAME_ZOOM)
    print(
        "frame_of's side, mean |log(side / (zoom * true side))|: "
        f"{np.abs(errors).mean():.4f}"
    )
    spans = np.array([row["span"] for row in rows if row["span"] is not None])
    low, median = np.percentile(spans, [5, 50])
    print(
        f"found in the 200x200 frame itself: {len(spans)} of {len(rows)}; box side / frame "
        f"side: median {median:.3f}, 5 % below {low:.3f}"
    )
    return 0


def main(argv=None):
    """Measure the framing on training faces and print it."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", help="folder, archive or URL (default: see README)")
    parser.add_argument("--images", type=int, default=400, help="training faces")
    parser.add_argument(
        "--no-eyes", action="store_true", help="frame from the box alone"
    )
    return framing_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
