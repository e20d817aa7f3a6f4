"""Tests of utk_data: names, extraction, records, splits, datasets and the command line."""

import io
import os
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import utk_data
from augmentation import Augmentation, prepare_batch
from synthetic import make_folder, write_image

# --- file names --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, expected",
    [
        ("26_1_2_20170116174525125.jpg.chip.jpg", (26, 1, 2)),
        ("39_1_20170116174525125.jpg.chip.jpg", (39, 1, None)),  # no race field
        (
            "24_0_1_20170116220224657 .jpg.chip.jpg",
            (24, 0, 1),
        ),  # space before extension
        ("55_0_0_20170116232725357jpg.chip.jpg", (55, 0, 0)),  # missing dot
        ("14_0_0_2017011022340900.jpg.chip.jpg", (14, 0, 0)),  # 16-digit timestamp
        ("28_1_2_201701161846515488.jpg.chip.jpg", (28, 1, 2)),  # 18-digit timestamp
        ("0_0_4_20170116174525125.jpg.chip.jpg", (0, 0, 4)),
        ("116_1_0_20170116174525125.jpg", (116, 1, 0)),
        ("30_3_9_20170116174525125.jpg", (30, None, None)),  # gender, race out of range
        ("30.jpg", (30, None, None)),
        ("/some/folder/7_1_3_20170116174525125.jpg.chip.jpg", (7, 1, 3)),
    ],
)
def test_parse_name_reads_labels(name, expected):
    assert tuple(utk_data.parse_name(name)) == expected


@pytest.mark.parametrize(
    "name",
    [
        "face.jpg",
        "_1_2_20170116174525125.jpg",
        "117_0_0_2017.jpg",
        "-3_0_0_2017.jpg",
        "",
    ],
)
def test_parse_name_rejects_missing_or_out_of_range_age(name):
    assert utk_data.parse_name(name) is None


# --- extraction and locate -------------------------------------------------------------


def _tar_with(path, members):
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize(
    "evil", ["../evil.jpg", "UTKFace/../../evil.jpg", "/abs/evil.jpg"]
)
def test_extraction_refuses_members_outside_the_target(tmp_path, evil):
    archive = _tar_with(
        tmp_path / "bad.tar.gz", [("UTKFace/1_0_0_1.jpg", b"x"), (evil, b"x")]
    )
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="refusing member"):
        utk_data.locate(archive, cache_dir=cache)
    assert not (tmp_path / "evil.jpg").exists()
    # Nothing half-extracted is left for a later call to reuse.
    assert not any(cache.iterdir())


def test_extraction_refuses_a_link_leaving_the_target(tmp_path):
    archive_path = tmp_path / "link.tar.gz"
    with tarfile.open(archive_path, "w:gz") as archive:
        info = tarfile.TarInfo("UTKFace/link.jpg")
        info.type, info.linkname = tarfile.SYMTYPE, "../../../etc/passwd"
        archive.addfile(info)
    with pytest.raises(ValueError, match="refusing member"):
        utk_data.locate(archive_path, cache_dir=tmp_path / "cache")


def test_zip_extraction_refuses_parent_paths(tmp_path):
    archive_path = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive_path, "w") as archive:
        archive.writestr("../evil.jpg", b"x")
    with pytest.raises(ValueError, match="refusing member"):
        utk_data.locate(archive_path, cache_dir=tmp_path / "cache")


def _archive_of(folder, archive_path):
    with tarfile.open(archive_path, "w:gz") as archive:
        archive.add(folder, arcname="UTKFace")
    return archive_path


def test_archive_is_extracted_once_and_reused(tmp_path):
    archive = _archive_of(make_folder(tmp_path / "src", 5), tmp_path / "UTKFace.tar.gz")
    cache = tmp_path / "cache"
    first = utk_data.locate(archive, cache_dir=cache)
    assert first.name == "UTKFace" and len(list(first.iterdir())) == 5
    marker = first / "marker.txt"
    marker.write_text("kept")
    assert utk_data.locate(archive, cache_dir=cache) == first and marker.exists()
    # Only the final folder remains: the temporary extraction folder was renamed.
    assert [path.name for path in cache.iterdir()] == [first.parent.name]


def test_zip_archive_is_extracted(tmp_path):
    folder = make_folder(tmp_path / "src", 3)
    archive_path = tmp_path / "faces.zip"
    with zipfile.ZipFile(archive_path, "w") as archive:
        for path in folder.iterdir():
            archive.write(path, f"UTKFace/{path.name}")
    located = utk_data.locate(archive_path, cache_dir=tmp_path / "cache")
    assert len(utk_data.load_records(located)[0]) == 3


def test_locate_downloads_a_url_and_checks_its_hash(tmp_path):
    archive = _archive_of(make_folder(tmp_path / "src", 4), tmp_path / "UTKFace.tar.gz")
    url = archive.as_uri()
    located = utk_data.locate(url, cache_dir=tmp_path / "cache")
    assert len(utk_data.load_records(located)[0]) == 4
    assert (tmp_path / "cache" / "UTKFace.tar.gz").is_file()
    with pytest.raises(ValueError):
        utk_data.locate(url, file_hash="0" * 64, cache_dir=tmp_path / "other")


def test_a_failed_download_says_what_to_do_instead(tmp_path):
    url = (tmp_path / "missing" / "UTKFace.tar.gz").as_uri()
    with pytest.raises(FileNotFoundError) as raised:
        utk_data.locate(url, cache_dir=tmp_path / "cache")
    message = str(raised.value)
    assert f"could not download UTKFace from {url}" in message
    assert "jangedoo/utkface-new" in message and "UTKFACE_DATA" in message
    assert raised.value.__cause__ is None  # One clear message, not a chained traceback.


def test_the_default_mirror_must_give_the_whole_set(tmp_path, monkeypatch):
    archive = _archive_of(make_folder(tmp_path / "src", 5), tmp_path / "UTKFace.tar.gz")
    monkeypatch.delenv("UTKFACE_DATA", raising=False)
    monkeypatch.setattr(utk_data, "DEFAULT_URL", archive.as_uri())
    with pytest.raises(ValueError, match=r"gave only 5 UTKFace images .*jangedoo"):
        utk_data.locate(cache_dir=tmp_path / "cache")
    monkeypatch.setattr(utk_data, "MIN_MIRROR_IMAGES", 5)
    assert (
        len(utk_data.load_records(utk_data.locate(cache_dir=tmp_path / "cache"))[0])
        == 5
    )


def test_a_download_can_be_kept_apart_from_the_extraction(tmp_path):
    archive = _archive_of(make_folder(tmp_path / "src", 3), tmp_path / "UTKFace.tar.gz")
    located = utk_data.locate(
        archive.as_uri(), cache_dir=tmp_path / "local", download_dir=tmp_path / "drive"
    )
    assert (tmp_path / "drive" / "UTKFace.tar.gz").is_file()
    assert located.is_relative_to(tmp_path / "local")


def test_locate_prefers_the_environment_variable(tmp_path, monkeypatch):
    folder = make_folder(tmp_path / "mine", 2)
    monkeypatch.setenv("UTKFACE_DATA", str(folder))
    assert utk_data.locate() == folder


def test_locate_takes_utkface_folder_and_not_the_duplicates(tmp_path):
    make_folder(tmp_path / "kaggle" / "crop_part1", 3)
    make_folder(tmp_path / "kaggle" / "utkface_aligned_cropped" / "UTKFace", 3)
    expected = make_folder(tmp_path / "kaggle" / "UTKFace", 3)
    assert utk_data.locate(tmp_path / "kaggle") == expected


def test_locate_names_a_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        utk_data.locate(tmp_path / "nowhere")


# --- records and bad input -------------------------------------------------------------


def test_bad_files_are_skipped_with_reasons_and_nothing_is_lost(tmp_path, capsys):
    folder = make_folder(tmp_path / "faces", 3)
    good = sorted(folder.iterdir())[0].read_bytes()
    (folder / "20_0_0_2017.jpg").write_bytes(b"")
    (folder / "21_0_0_2017.jpg").write_bytes(good[: len(good) // 2])
    (folder / "22_0_0_2017.jpg").write_text("this is not a picture")
    (folder / "face_0_0_2017.jpg").write_bytes(good)
    (folder / "130_0_0_2017.jpg").write_bytes(good)
    (folder / "notes.txt").write_text("hello")
    write_image(folder / "23_1_2_2017.png", mode="RGBA")
    write_image(folder / "24_1_2_2017.jpg", mode="L")
    (folder / "subfolder").mkdir()
    records, skipped = utk_data.load_records(folder)
    reasons = {path.name: reason for path, reason in skipped}
    assert reasons == {
        "20_0_0_2017.jpg": "empty file",
        "21_0_0_2017.jpg": "truncated JPEG (no end marker)",
        "22_0_0_2017.jpg": "not a JPEG or PNG file",
        "face_0_0_2017.jpg": "no age in file name",
        "130_0_0_2017.jpg": "age 130 out of range 0..116",
        "notes.txt": "no age in file name",
        "subfolder": "a folder, not an image file",
    }
    assert len(records) == 5
    assert len(records) + len(skipped) == len(list(folder.iterdir()))
    assert "5 images used, 7 skipped" in capsys.readouterr().out


def test_missing_and_empty_folders_raise_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        utk_data.load_records(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no usable images"):
        utk_data.load_records(tmp_path / "empty")


def test_corrupt_image_data_is_reported_by_name_not_crashing(tmp_path):
    folder = make_folder(tmp_path / "faces", 6)
    # JPEG start and end markers around garbage: passes the cheap check, fails to decode.
    (folder / "33_1_1_2017.jpg").write_bytes(
        b"\xff\xd8\xff\xe0" + os.urandom(500) + b"\xff\xd9"
    )
    records, skipped = utk_data.load_records(folder, verbose=False)
    assert len(records) == 7 and not skipped
    with pytest.warns(UserWarning, match="33_1_1_2017.jpg"):
        dataset = utk_data.make_dataset(records, 32, 4, training=False)
    assert sum(int(images.shape[0]) for images, _ in dataset) == 6


# --- splits ------------------------------------------------------------------------------


def _fake_records(count, prefix="x"):
    return [
        utk_data.Record(Path(f"{20 + i % 50}_0_0_{prefix}{i}.jpg"), 20, 0, 0)
        for i in range(count)
    ]


def test_split_is_deterministic_disjoint_and_complete():
    records = _fake_records(5000)
    train, val, test = utk_data.split_records(records)
    shuffled = utk_data.split_records(list(reversed(records)))
    assert [sorted(r.path.name for r in part) for part in shuffled] == [
        sorted(r.path.name for r in part) for part in (train, val, test)
    ]
    names = [{r.path.name for r in part} for part in (train, val, test)]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    assert sum(map(len, names)) == 5000
    assert 400 < len(val) < 600 and 400 < len(test) < 600
    again = utk_data.split_records(records)
    assert [[r.path for r in part] for part in again] == [
        [r.path for r in part] for part in (train, val, test)
    ]


def test_split_is_stable_when_files_are_added_or_removed():
    records = _fake_records(3000)
    before = utk_data.split_records(records)
    after = utk_data.split_records(records[::2] + _fake_records(1000, prefix="new"))
    where_before = {
        r.path.name: index for index, part in enumerate(before) for r in part
    }
    for index, part in enumerate(after):
        for record in part:
            assert where_before.get(record.path.name, index) == index


# --- datasets ----------------------------------------------------------------------------


def test_dataset_shapes_types_and_ranges(image_folder):
    records, _ = utk_data.load_records(image_folder, verbose=False)
    for training in (False, True):
        dataset = utk_data.make_dataset(records, 32, 8, training=training, epochs=1)
        images, ages = next(iter(dataset))
        assert images.shape == (8, 32, 32, 3) and images.dtype == tf.float32
        assert ages.shape == (8, 1) and ages.dtype == tf.float32
        assert (
            0.0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 1.0
        )
    evaluation = utk_data.make_dataset(records, 32, 16, training=False)
    assert [int(images.shape[0]) for images, _ in evaluation] == [16, 16, 8]
    ages = np.concatenate([ages.numpy() for _, ages in evaluation])
    assert ages[:, 0].tolist() == [record.age for record in records]


def test_attributes_use_minus_one_for_missing(tmp_path):
    folder = tmp_path / "faces"
    folder.mkdir()
    write_image(folder / "30_1_20170116174525125.jpg.chip.jpg")
    write_image(folder / "31_0_3_20170116174525125.jpg.chip.jpg")
    records, _ = utk_data.load_records(folder, verbose=False)
    dataset = utk_data.make_dataset(
        records, 16, 2, training=False, with_attributes=True
    )
    _, labels = next(iter(dataset))
    assert labels["age"].numpy()[:, 0].tolist() == [30, 31]
    assert labels["gender"].numpy().tolist() == [1, 0]
    assert labels["race"].numpy().tolist() == [-1, 3]


def test_odd_images_are_converted_and_resized(tmp_path):
    folder = tmp_path / "faces"
    folder.mkdir()
    write_image(folder / "30_0_0_1.png", mode="RGBA", size=(60, 40))
    write_image(folder / "31_0_0_1.jpg", mode="L", size=(33, 71))
    write_image(folder / "32_0_0_1.jpg", size=(300, 300))
    records, _ = utk_data.load_records(folder, verbose=False)
    for cache in (True, False):
        images, _ = next(
            iter(utk_data.make_dataset(records, 24, 3, False, cache=cache))
        )
        assert images.shape == (3, 24, 24, 3)


def test_augmentation_only_when_training(image_folder):
    records, _ = utk_data.load_records(image_folder, verbose=False)
    plain = lambda: np.concatenate(  # noqa: E731
        [images.numpy() for images, _ in utk_data.make_dataset(records, 32, 40, False)]
    )
    first, second = plain(), plain()
    np.testing.assert_array_equal(first, second)
    training = utk_data.make_dataset(
        records, 32, 40, True, Augmentation(), epochs=1, seed=3
    )
    augmented, _ = next(iter(training))
    assert not np.allclose(np.sort(augmented.numpy().ravel()), np.sort(first.ravel()))
    not_augmented = utk_data.make_dataset(records, 32, 40, True, epochs=1)
    images, _ = next(iter(not_augmented))
    np.testing.assert_allclose(np.sort(images.numpy().ravel()), np.sort(first.ravel()))
    with pytest.raises(ValueError, match="training set only"):
        utk_data.make_dataset(records, 32, 8, False, Augmentation())


def test_epochs_depend_only_on_seed_and_epoch(image_folder):
    records, _ = utk_data.load_records(image_folder, verbose=False)
    batches = lambda **kwargs: [  # noqa: E731
        (images.numpy(), ages.numpy())
        for images, ages in utk_data.make_dataset(
            records, 32, 8, True, Augmentation(1.2, 10.0), seed=5, **kwargs
        )
    ]
    full = batches(epochs=3)
    resumed = batches(start_epoch=2, epochs=3)
    assert len(full) == 15 and len(resumed) == 5
    for (images, ages), (images_again, ages_again) in zip(full[10:], resumed):
        np.testing.assert_array_equal(images, images_again)
        np.testing.assert_array_equal(ages, ages_again)
    epoch_orders = [
        np.concatenate([ages for _, ages in full[k : k + 5]])[:, 0] for k in (0, 5)
    ]
    assert not np.array_equal(*epoch_orders)  # each epoch is a new permutation
    assert sorted(epoch_orders[0]) == sorted(epoch_orders[1])  # of the same images
    other_seed = [
        ages
        for _, ages in utk_data.make_dataset(records, 32, 8, True, seed=6, epochs=1)
    ]
    assert not np.array_equal(
        np.concatenate(other_seed), np.concatenate([a for _, a in full[:5]])
    )


def test_raw_batches_prepared_in_the_step_are_the_datasets_images(image_folder):
    # Training gathers uint8 batches with their augmentation seeds; the train step scales
    # and augments them: the images it sees are those of the prepared dataset, and a
    # resumed run's batches carry the same seeds.
    records, _ = utk_data.load_records(image_folder, verbose=False)
    settings = Augmentation(largest_frame=1.15)
    options = dict(augmentation=settings, seed=5, epochs=2, with_attributes=True)
    prepared = list(utk_data.make_dataset(records, 32, 8, True, **options))
    raw = list(utk_data.make_dataset(records, 32, 8, True, raw=True, **options))
    resumed = list(
        utk_data.make_dataset(records, 32, 8, True, raw=True, start_epoch=1, **options)
    )
    assert len(prepared) == len(raw) == 10 and len(resumed) == 5
    for (images, labels), (uint8, raw_labels, seeds) in zip(prepared, raw):
        assert uint8.dtype == tf.uint8 and seeds.shape == (len(uint8), 2)
        assert (seeds.numpy() == seeds.numpy()[0]).all()  # the batch's seed, per image
        again = prepare_batch(uint8, seeds[0], settings)
        np.testing.assert_array_equal(again.numpy(), images.numpy())
        np.testing.assert_array_equal(raw_labels["age"], labels["age"])
    for (uint8, _, seeds), (uint8_again, _, seeds_again) in zip(raw[5:], resumed):
        np.testing.assert_array_equal(uint8, uint8_again)
        np.testing.assert_array_equal(seeds, seeds_again)
    assert len({tuple(seeds.numpy()[0]) for _, _, seeds in raw}) == 10  # one per batch
    plain = prepare_batch(raw[0][0], raw[0][2][0], None)
    np.testing.assert_array_equal(plain.numpy(), raw[0][0].numpy() / np.float32(255))


def test_decoded_images_are_reused_across_datasets(image_folder, monkeypatch):
    records, _ = utk_data.load_records(image_folder, verbose=False)
    decoded = utk_data.decode_records(records, 20)
    first = utk_data.make_dataset(decoded, 20, 8, training=True, epochs=1)
    calls = []
    monkeypatch.setattr(utk_data, "_decode_file", lambda *args: calls.append(args))
    resumed = utk_data.make_dataset(
        decoded, 20, 8, training=True, start_epoch=1, epochs=2
    )
    assert len(list(first)) == len(list(resumed)) == 5 and not calls
    with pytest.raises(ValueError, match="decoded at 20 px, 24 px"):
        utk_data.make_dataset(decoded, 24, 8, training=False)


def test_load_images_names_an_unreadable_file(tmp_path):
    (tmp_path / "notes.jpg").write_text("not an image")
    with pytest.raises(ValueError, match=r"notes.jpg: .* \(not a JPEG or PNG file\)"):
        utk_data.load_images([tmp_path / "notes.jpg"], 32)


# --- command line ------------------------------------------------------------------------


def test_summary_command_prints_counts_and_skips(image_folder, tmp_path, capsys):
    (image_folder / "readme.txt").write_text("x")
    utk_data.main(
        ["summary", "--data", str(image_folder), "--plot", str(tmp_path / "s.png")]
    )
    output = capsys.readouterr().out
    assert "images used: 40   skipped: 1" in output
    assert "readme.txt: no age in file name" in output
    assert (tmp_path / "s.png").stat().st_size > 1000
    utk_data.main(
        ["summary", "--data", str(image_folder), "--histogram", str(tmp_path / "h.png")]
    )
    assert (tmp_path / "h.png").stat().st_size > 1000


# --- the real archive ------------------------------------------------------------------


def test_real_archive(real_folder):
    records, skipped = utk_data.load_records(real_folder, verbose=False)
    assert len(records) == 21352 and skipped == []
    assert all(0 <= record.age <= utk_data.MAX_AGE for record in records)
    every_name = [path.name for path in Path(real_folder).iterdir()]
    assert all(utk_data.parse_name(name) is not None for name in every_name)
    train, val, test = utk_data.split_records(records)
    images, ages = next(iter(utk_data.make_dataset(test[:32], 64, 32, training=False)))
    assert images.shape == (32, 64, 64, 3) and ages.shape == (32, 1)
    assert 0.05 < float(tf.reduce_mean(images)) < 0.95
