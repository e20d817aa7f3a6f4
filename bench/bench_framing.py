"""How does OpenCV's face detector frame UTKFace's faces? The evidence behind the framing
constants of photos.py (FRAME_SCALE, FRAME_SHIFT, EYE_SCALE, EYE_SHIFT, TIGHT_CROP).

    python bench/bench_framing.py                      # 400 training faces, seed 0
    python bench/bench_framing.py --limit 1000 --no-eyes

Each training face (200x200, as UTKFace ships it) is pasted at a random place into a noisy
canvas three times its size; the detector looks for it there, and for its eyes inside the
box. Printed: the medians and the 10-90 % spreads of where UTKFace's frame sits relative to
the box and to the eyes, how far the frame `photos.frame_of` estimates lies from the true
one (`--no-eyes`: from the box alone), and how large the box is when the detector looks at
the 200x200 frame itself (TIGHT_CROP). No model is needed.
"""

import math

import common  # first: the repository's path and TensorFlow's environment

import numpy as np

import photos

NAMES = {
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


def place_face(face, rng):
    """A noisy canvas three times the face's size with the face in it, and its place."""
    size = face.shape[0]
    canvas = rng.integers(90, 166, (3 * size, 3 * size, 3), dtype=np.uint8)
    left, top = (int(value) for value in rng.integers(0, 2 * size, 2))
    canvas[top : top + size, left : left + size] = face
    return canvas, left, top


def measure(face, canvas, left, top, use_eyes):
    """Where the detector's box, and the eyes in it, sit in the face's frame: a dict of the
    frame's side over the box's ("scale") and its centre's shift in box sides ("shift_x",
    "shift_y"); the same over the distance between the eyes ("eye_...", when both were
    found); the error of the frame `frame_of` estimates ("error": its side over the true
    one, "error_x"/"error_y": its centre's shift in true sides); and "span", the box side
    over the frame side when the detector finds the face in the frame itself, or None. None
    when the face is not found in the canvas."""
    size = face.shape[0]
    inside = [
        found
        for found in photos.find_faces(canvas, use_eyes)
        if left <= found.box[0] + found.box[2] / 2 < left + size
        and top <= found.box[1] + found.box[3] / 2 < top + size
    ]
    if not inside:
        return None
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
    return row


def main(argv=None):
    """Measure the framing on training faces and print it."""
    parser = common.parser(__doc__, limit=400)
    parser.add_argument(
        "--no-eyes", action="store_true", help="frame from the box alone"
    )
    arguments = parser.parse_args(argv)
    print("=== bench_framing ===")
    chosen = common.faces(arguments, "train")
    rng, rows = np.random.default_rng(arguments.seed), []
    for record in chosen:
        face = photos.read_photo(record.path)
        row = measure(face, *place_face(face, rng), use_eyes=not arguments.no_eyes)
        rows += [row] if row else []
    print(f"faces found in a 3x canvas: {len(rows)} of {len(chosen)}")
    with_eyes = [row for row in rows if "eye_scale" in row]
    print(f"both eyes found in {len(with_eyes)} of them")
    for key, name in NAMES.items():
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
        f"found in the 200x200 frame itself: {len(spans)} of {len(rows)}; box side / "
        f"frame side: median {median:.3f}, 5 % below {low:.3f}"
    )


if __name__ == "__main__":
    main()
