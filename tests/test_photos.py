"""photos.py: real UTKFace faces placed in larger pictures are found and framed as UTKFace
frames them, `predict` gives a row per face, and photos are read upright. Nothing face-like
is committed: the pictures are made here from the archive's faces."""

import csv
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

import photos
import train_loop
import utk_data
from synthetic import write_image


@pytest.fixture(scope="module")
def faces(real_folder):
    """Eight real test-split faces (200x200 RGB arrays) and their records."""
    records, _ = utk_data.load_records(real_folder, verbose=False)
    _, _, test = utk_data.split_records(records)
    chosen = [test[i] for i in np.random.default_rng(1).permutation(len(test))[:8]]
    return chosen, [photos.read_photo(record.path) for record in chosen]


@pytest.fixture(scope="module")
def network():
    """A small untrained model: these tests check the framing, not the ages."""
    config = train_loop.TrainConfig(preset="cpu", image_size=32)
    return train_loop.make_model(config, initial_age=30.0)


def _place(face, scale, left, top, size=(700, 900), seed=0):
    """A noisy picture of `size` with the face resized by `scale` at (left, top)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    picture = rng.integers(80, 170, (*size, 3), dtype=np.uint8)
    side = round(200 * scale)
    resized = np.asarray(Image.fromarray(face).resize((side, side), Image.LANCZOS))
    picture[top : top + side, left : left + side] = resized
    return picture, (left, top, side)


def _overlap(a, b):
    """Intersection over union of two squares (x, y, side)."""
    width = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    height = max(0, min(a[1] + a[2], b[1] + b[2]) - max(a[1], b[1]))
    return width * height / (a[2] ** 2 + b[2] ** 2 - width * height)


def test_faces_in_larger_pictures_are_framed_as_utkface_frames_them(faces):
    _, images = faces
    overlaps, misses = [], 0
    for number, face in enumerate(images):
        for scale, left, top in ((1.0, 40, 380), (1.6, 500, 60)):
            picture, truth = _place(face, scale, left, top, seed=number)
            found = photos.find_faces(picture)
            if not found:
                misses += 1
                continue
            overlaps.append(_overlap(found[0].frame, truth))
            assert not photos.is_tight_crop(picture, found)
    # The detector misses some faces (7 % of 400 training faces in the measurement).
    assert misses <= 3, f"{misses} of {2 * len(images)} faces not found"
    # Scale 1.6: a side of 320 px; an overlap of 0.8 is off by about 15 px at most.
    assert min(overlaps) > 0.7 and np.median(overlaps) > 0.85, overlaps


def test_an_aligned_face_goes_through_auto_unchanged(faces, network):
    records, _ = faces
    paths = [str(record.path) for record in records]
    auto, skipped = photos.predict_paths(network, paths, crop="auto")
    plain, _ = photos.predict_paths(network, paths, crop="none")
    assert not skipped and [row.crop for row in auto] == ["as is"] * len(paths)
    assert [row.age for row in auto] == [row.age for row in plain]


def test_no_face_and_two_faces(faces, network, tmp_path):
    from PIL import Image

    _, images = faces
    nothing = write_image(tmp_path / "wall.jpg", size=(900, 600), seed=3)
    picture, _ = _place(images[0], 1.2, 60, 200, size=(700, 1000))
    picture[180 : 180 + 240, 620 : 620 + 240] = np.asarray(
        Image.fromarray(images[1]).resize((240, 240))
    )
    Image.fromarray(picture).save(tmp_path / "two.png")
    out = tmp_path / "ages.csv"
    model_file = tmp_path / "model.keras"
    network.save(model_file)
    rows, _ = photos.predict_files(
        model_file, [str(nothing), str(tmp_path / "two.png")], out
    )
    table = list(csv.reader(open(out)))
    assert table[0][:2] == ["path", "predicted_age"]
    assert [(row[0].endswith("wall.jpg"), row[1], row[2]) for row in table[1:2]] == [
        (True, "", "no face found")
    ]
    two = [row for row in rows if row.path.endswith("two.png")]
    assert [row.crop for row in two] == ["face", "face"]
    assert all(row.age is not None and len(row.box) == 4 for row in two)
    lefts = sorted(row.box[0] for row in two)
    assert lefts[0] < 500 < lefts[1]  # One row for each face, with its own box.
    with pytest.raises(ValueError, match="crop must be one of"):
        photos.predict_paths(network, [str(nothing)], crop="center")


def test_the_eyes_of_faces_in_pictures_are_found_where_eyes_are(faces):
    _, images = faces
    found = 0
    for number, face in enumerate(images):
        picture, (left, top, side) = _place(face, 1.4, 300, 200, seed=number)
        faces_found = photos.find_faces(picture)
        if not faces_found or faces_found[0].eyes is None:
            continue
        found += 1
        (left_x, left_y), (right_x, right_y) = faces_found[0].eyes
        # UTKFace's alignment puts the eyes about 0.2 of the frame above its centre,
        # 0.4 of the frame apart (photos.EYE_SCALE, EYE_SHIFT).
        middle_x, middle_y = (left_x + right_x) / 2, (left_y + right_y) / 2
        assert abs(middle_x - (left + side / 2)) < 0.06 * side
        assert abs(middle_y - (top + 0.3 * side)) < 0.08 * side
        assert 0.3 * side < right_x - left_x < 0.5 * side
    # Both eyes were found in 323 of 372 faces in the framing measurement.
    assert found >= 5, f"eyes found in {found} of {len(images)} faces"


def test_a_frame_from_the_eyes_and_the_box_is_their_mean():
    box = (100, 80, 200, 200)
    side = photos.FRAME_SCALE * 200
    centre = (200 + photos.FRAME_SHIFT[0] * 200, 180 + photos.FRAME_SHIFT[1] * 200)

    def eyes_saying(side, centre):
        distance = side / photos.EYE_SCALE
        middle_x = centre[0] - photos.EYE_SHIFT[0] * distance
        middle_y = centre[1] - photos.EYE_SHIFT[1] * distance
        return (middle_x - distance / 2, middle_y), (middle_x + distance / 2, middle_y)

    # Eyes that agree with the box change nothing.
    assert photos.frame_of(box, eyes=eyes_saying(side, centre)) == photos.frame_of(box)
    # Eyes that say a frame twice the box's, 40 px lower: the geometric mean of the
    # sides, the mean of the centres.
    x, y, framed = photos.frame_of(
        box, eyes=eyes_saying(2 * side, (centre[0], centre[1] + 40))
    )
    expected = photos.FRAME_ZOOM * side * 2**0.5
    assert framed == pytest.approx(expected, abs=1)
    assert x + framed / 2 == pytest.approx(centre[0], abs=1)
    assert y + framed / 2 == pytest.approx(centre[1] + 20, abs=1)


# --- reading photos ---------------------------------------------------------------------


def test_read_images_applies_exif_rotation(tmp_path):
    plain = write_image(tmp_path / "plain.jpg", size=(64, 40), seed=4)
    exif = Image.Exif()
    exif[0x0112] = 6  # Shown after a 90-degree clockwise turn.
    with Image.open(plain) as image:
        image.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    with Image.open(tmp_path / "rotated.jpg") as image:
        upright = ImageOps.exif_transpose(image)
        upright.save(tmp_path / "upright.png")
    loaded, readable, failed = photos.read_images(
        [tmp_path / "rotated.jpg", tmp_path / "upright.png"], 32
    )
    assert loaded.shape == (2, 32, 32, 3) and len(readable) == 2 and not failed
    difference = np.abs(loaded[0].numpy() - loaded[1].numpy()).mean()
    unrotated = utk_data.load_images([plain], 32)[0].numpy()
    assert difference < 0.02 < np.abs(unrotated - loaded[1].numpy()).mean()


def test_read_images_reports_bad_files_and_keeps_the_good_ones(tmp_path):
    good = [write_image(tmp_path / f"{n}.jpg", size=(60, 50), seed=n) for n in (1, 2)]
    (tmp_path / "notes.jpg").write_text("not an image")
    whole = good[0].read_bytes()
    # A JPEG header that PIL accepts, then nothing: only the decoder can tell.
    (tmp_path / "cut.jpg").write_bytes(whole[: len(whole) // 3])
    paths = [
        good[0],
        tmp_path / "notes.jpg",
        tmp_path / "cut.jpg",
        tmp_path / "gone.jpg",
        good[1],
    ]
    images, readable, failed = photos.read_images(paths, 24)
    assert images.shape == (2, 24, 24, 3) and readable == [str(good[0]), str(good[1])]
    # Decoded in full, as another program decodes them (what the exported models are fed).
    _, in_full, _ = utk_data.decode_files(
        [str(path) for path in good], 24, scaled=False
    )
    np.testing.assert_allclose(images, in_full.numpy() / 255.0)
    assert sorted(Path(path).name for path, _ in failed) == [
        "cut.jpg",
        "gone.jpg",
        "notes.jpg",
    ]
    assert all(reason for _, reason in failed)


# --- predicting folders fast --------------------------------------------------------------


def _predict_one_by_one(model, paths, crop):
    """`predict_paths` as it was before the threads: every picture decoded and searched,
    one after another, its faces predicted in chunks and the face crops as they are."""
    as_is, faces, rows, skipped = [], [], [], []
    for path in paths:
        try:
            picture = photos.read_photo(path)
        except ValueError:
            skipped.append(path)
            continue
        found = photos.find_faces(picture)
        if crop == "auto" and photos.is_tight_crop(picture, found):
            as_is.append(path)
            continue
        if not found:
            rows.append(photos.PhotoAge(path, None, "no face found"))
        faces += [(path, face, photos._face_crops(picture, face, 32)) for face in found]
    chunk = photos.PREDICT_CHUNK
    for start in range(0, len(faces), chunk):
        rows += photos._predict_faces(model, faces[start : start + chunk], 64, False)
    found, failed = photos.predict_paths(model, as_is, crop="none")
    order = {path: index for index, path in enumerate(paths)}
    return sorted(rows + found, key=lambda row: order[row.path]), skipped + failed


@pytest.fixture(scope="module")
def mixed_pictures(faces, tmp_path_factory):
    """Face crops, larger pictures with one, two or no faces, an enlarged crop, a small
    wide one and an unreadable file, in a mixed order."""
    records, images = faces
    folder = tmp_path_factory.mktemp("mixed")
    pictures = {
        "one.png": _place(images[2], 1.0, 30, 40, size=(330, 420), seed=1)[0],
        "big_crop.jpg": np.asarray(Image.fromarray(images[3]).resize((320, 320))),
        "wide.jpg": images[4][60:160],
        "none.jpg": np.random.default_rng(2).integers(0, 255, (300, 420, 3), np.uint8),
    }
    two, _ = _place(images[0], 1.0, 20, 60, size=(330, 520), seed=2)
    two[60:260, 290:490] = images[1]
    pictures["two.png"] = two
    for name, picture in pictures.items():
        Image.fromarray(picture).save(folder / name)
    (folder / "bad.jpg").write_text("not an image")
    names = ["one.png", "bad.jpg", "big_crop.jpg", "two.png", "wide.jpg", "none.jpg"]
    crops = [str(record.path) for record in records[5:]]
    return [crops[0], *(str(folder / name) for name in names[:3]), crops[1]] + [
        *(str(folder / name) for name in names[3:]),
        crops[2],
    ]


@pytest.mark.parametrize("crop", ["auto", "face"])
def test_threads_predict_as_one_picture_after_another_did(
    mixed_pictures, network, monkeypatch, crop
):
    # Chunks of three pictures, and of three faces, so that several of each are predicted.
    monkeypatch.setattr(photos, "PREDICT_CHUNK", 3)
    monkeypatch.setattr(photos, "_cpu_count", lambda: 3)
    rows, skipped = photos.predict_paths(network, mixed_pictures, crop=crop)
    expected, failed = _predict_one_by_one(network, mixed_pictures, crop)
    assert rows == expected
    assert [path for path, _ in skipped] == failed == [mixed_pictures[2]]
    kinds = {"face", "no face found"} | ({"as is"} if crop == "auto" else set())
    assert {row.crop for row in rows} == kinds
    assert sum(row.path.endswith("two.png") for row in rows) == 2


def test_face_crops_are_neither_decoded_nor_searched_for_faces(
    faces, network, monkeypatch
):
    records, _ = faces
    paths = [str(record.path) for record in records]
    plain, _ = photos.predict_paths(network, paths, crop="none")

    def fail(*arguments, **options):
        raise AssertionError("a face crop was decoded or searched for faces")

    monkeypatch.setattr(photos, "find_faces", fail)
    monkeypatch.setattr(photos, "read_photo", fail)
    rows, skipped = photos.predict_paths(network, paths, crop="auto")
    assert rows == plain and not skipped


def test_a_small_square_stays_one_whichever_way_exif_turns_it():
    # The header gives the size before EXIF turns the picture: both must answer alike.
    sides = range(1, photos.SMALL_PICTURE + 2)
    assert all(
        photos.is_small_square(height, width) == photos.is_small_square(width, height)
        for height in sides
        for width in sides
    )


def test_pictures_searched_at_once_find_the_faces_one_search_finds(faces):
    from concurrent.futures import ThreadPoolExecutor

    # OpenCV's detector keeps its buffers in itself while it searches: threads that shared
    # one found other faces, or stopped on an OpenCV error, in this very test.
    pictures = faces[1][:4]  # Four face crops of 200 x 200 pixels.
    alone = [photos.find_faces(picture) for picture in pictures]
    # All wait for each other, so the searches run at once, one on each thread.
    together = threading.Barrier(len(pictures), timeout=60)

    def search(picture):
        together.wait()
        return photos.find_faces(picture)

    with ThreadPoolExecutor(len(pictures)) as pool:
        assert list(pool.map(search, pictures)) == alone
    assert sum(map(len, alone)) >= 3  # Faces were found, with their frames and eyes.
