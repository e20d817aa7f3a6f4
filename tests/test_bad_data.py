"""Bad, broken and hostile data: every case ends in one clear error or a counted skip.

Each test makes its own bad input in tmp_path: archive bombs (by member count, size and
ratio, with the limits set low), broken archives, downloads cut off part-way, pixel bombs,
and folder entries that are not image files (links, FIFOs, folders, undecodable names).
"""

import errno
import gzip
import hashlib
import io
import os
import struct
import subprocess
import sys
import tarfile
import time
import zipfile
import zlib
from pathlib import Path

import keras
import pytest

import archives
import utk_data
from synthetic import make_folder, write_image

REPOSITORY = Path(__file__).resolve().parents[1]


def _tar(path, members, mode="w:gz"):
    """An archive of (name, bytes) members."""
    with tarfile.open(path, mode) as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def _zip(path, members):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members:
            archive.writestr(name, data)
    return path


def _faces(tmp_path, count=3):
    """A small UTKFace-like archive: (its path, the folder it was made from)."""
    folder = make_folder(tmp_path / "src", count)
    archive = tmp_path / "UTKFace.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="UTKFace")
    return archive, folder


def _png_header_only(width, height):
    """A tiny, well-framed PNG whose header claims width x height pixels."""

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


# --- archive bombs -----------------------------------------------------------------------

ARCHIVE_MAKERS = {"tar.gz": _tar, "zip": _zip}


@pytest.mark.parametrize("kind", sorted(ARCHIVE_MAKERS))
def test_an_archive_with_too_many_members_is_refused(tmp_path, monkeypatch, kind):
    monkeypatch.setattr(archives, "MAX_MEMBERS", 20)
    members = [(f"UTKFace/{age}_0_0_1.jpg", b"x" * 100) for age in range(30)]
    archive = ARCHIVE_MAKERS[kind](tmp_path / f"many.{kind}", members)
    cache = tmp_path / "cache"
    with pytest.raises(
        ValueError, match="refusing to extract it: over 20 members"
    ) as e:
        utk_data.locate(archive, cache_dir=cache)
    assert str(archive) in str(e.value)
    assert list(cache.iterdir()) == []  # nothing half-extracted is left behind


@pytest.mark.parametrize("kind", sorted(ARCHIVE_MAKERS))
def test_an_archive_that_expands_too_far_is_refused(tmp_path, monkeypatch, kind):
    monkeypatch.setattr(archives, "MAX_EXTRACTED_BYTES", 50_000)
    members = [(f"UTKFace/{age}_0_0_1.jpg", os.urandom(40_000)) for age in (30, 31)]
    archive = ARCHIVE_MAKERS[kind](tmp_path / f"big.{kind}", members)
    with pytest.raises(ValueError, match=r"over 50,000 bytes expanded"):
        utk_data.locate(archive, cache_dir=tmp_path / "cache")


@pytest.mark.parametrize("kind", sorted(ARCHIVE_MAKERS))
def test_a_highly_compressed_archive_is_refused_by_its_ratio(tmp_path, kind):
    # 4 MB of zeros packs into a few kB: far more than the default MAX_RATIO of 200.
    members = [("UTKFace/30_0_0_1.jpg", bytes(4_000_000))]
    archive = ARCHIVE_MAKERS[kind](tmp_path / f"bomb.{kind}", members)
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match=r"over 200 times its size expanded"):
        utk_data.locate(archive, cache_dir=cache)
    assert list(cache.iterdir()) == []


def test_the_limits_leave_room_for_every_copy_of_the_data_set():
    # UTKFace: 23,708 JPEGs in about 110 MB; Kaggle's zip about 67,000 files in 330 MB.
    assert archives.MAX_MEMBERS >= 67_000 * 1.3
    assert archives.MAX_EXTRACTED_BYTES >= 500_000_000 * 8
    assert archives.MAX_RATIO >= 50 and utk_data.MAX_PIXELS >= 200 * 200 * 1000


# --- broken archives ---------------------------------------------------------------------


def _broken_archives(tmp_path):
    """{file name: bytes} of archives that are empty, truncated or junk."""
    good_tar = _faces(tmp_path)[0].read_bytes()
    good_zip = _zip(tmp_path / "ok.zip", [("UTKFace/30_0_0_1.jpg", os.urandom(5000))])
    good_zip = good_zip.read_bytes()
    junk = os.urandom(3000)
    return {
        "empty.tar.gz": b"",
        "truncated.tar.gz": good_tar[: len(good_tar) // 2],
        "corrupted.tgz": good_tar[:100] + junk + good_tar[3100:],
        "junk.tgz": junk,
        "junk.tar": junk,
        "empty.tar": b"",
        "gzip-of-junk.tar.gz": gzip.compress(junk),
        "empty.zip": b"",
        "truncated.zip": good_zip[: len(good_zip) // 2],
        "junk.zip": junk,
    }


def test_broken_archives_are_named_with_what_is_wrong(tmp_path):
    cache = tmp_path / "cache"
    for name, data in _broken_archives(tmp_path).items():
        archive = tmp_path / name
        archive.write_bytes(data)
        with pytest.raises(ValueError) as raised:
            utk_data.locate(archive, cache_dir=cache)
        message = str(raised.value)
        assert message.startswith(f"{archive}: cannot extract it"), message
        assert "damaged, incomplete or unsupported archive" in message, message
        assert "\n" not in message and raised.value.__cause__ is None
    assert list(cache.iterdir()) == []


def test_a_hard_link_to_a_missing_member_is_a_clear_error(tmp_path):
    archive = tmp_path / "links.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("UTKFace/30_0_0_1.jpg")
        info.type, info.linkname = tarfile.LNKTYPE, "UTKFace/missing.jpg"
        tar.addfile(info)
    with pytest.raises(ValueError, match=r"links.tar.gz: cannot extract it .*missing"):
        utk_data.locate(archive, cache_dir=tmp_path / "cache")


# --- the extraction cache ----------------------------------------------------------------


def test_an_archive_changed_in_place_is_extracted_again(tmp_path):
    # Two uncompressed tars of the same name and the same size, with different content.
    archive, cache = tmp_path / "UTKFace.tar", tmp_path / "cache"
    contents = []
    for fill in (b"a", b"b"):
        _tar(archive, [("UTKFace/30_0_0_1.jpg", fill * 100)], mode="w")
        folder = utk_data.locate(archive, cache_dir=cache)
        contents.append(
            (archive.stat().st_size, (folder / "30_0_0_1.jpg").read_bytes())
        )
    assert contents[0][0] == contents[1][0]
    assert contents[0][1] == b"a" * 100 and contents[1][1] == b"b" * 100


def test_an_interrupted_extraction_is_never_reused(tmp_path, monkeypatch):
    archive, _ = _faces(tmp_path, 4)
    cache = tmp_path / "cache"
    real_extract = archives._extract

    def interrupted(archive, target):
        real_extract(archive, target)
        raise KeyboardInterrupt  # stopped after writing, before the rename

    monkeypatch.setattr(archives, "_extract", interrupted)
    with pytest.raises(KeyboardInterrupt):
        utk_data.locate(archive, cache_dir=cache)
    assert list(cache.iterdir()) == []
    # What a killed extraction (kill -9) left long ago is removed; a recent one is kept.
    old, recent = cache / ".UTKFace-old", cache / ".UTKFace-recent"
    old.mkdir(), recent.mkdir()
    os.utime(old, (time.time() - 2 * 86400,) * 2)
    monkeypatch.setattr(archives, "_extract", real_extract)
    folder = utk_data.locate(archive, cache_dir=cache)
    assert len(utk_data.load_records(folder, verbose=False)[0]) == 4
    assert not old.exists() and recent.exists()


# --- downloads ---------------------------------------------------------------------------


def test_a_download_cut_off_part_way_is_never_taken_for_the_archive(
    tmp_path, monkeypatch
):
    archive, _ = _faces(tmp_path, 4)
    downloads = tmp_path / "downloads"
    real_get_file = keras.utils.get_file

    def cut_off(fname, origin, cache_dir, cache_subdir, **options):
        target = Path(cache_dir) / cache_subdir / fname
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(archive.read_bytes()[:1000])
        raise KeyboardInterrupt  # the runtime went away mid-transfer

    monkeypatch.setattr(keras.utils, "get_file", cut_off)
    with pytest.raises(KeyboardInterrupt):
        utk_data.locate(archive.as_uri(), cache_dir=downloads)
    assert list(downloads.iterdir()) == []
    # A part that a killed run left (no clean-up ran) is not the archive either.
    (downloads / ".UTKFace.tar.gz.part-1234").write_bytes(archive.read_bytes()[:1000])
    monkeypatch.setattr(keras.utils, "get_file", real_get_file)
    folder = utk_data.locate(archive.as_uri(), cache_dir=downloads)
    assert len(utk_data.load_records(folder, verbose=False)[0]) == 4
    assert (downloads / "UTKFace.tar.gz").read_bytes() == archive.read_bytes()


def test_a_damaged_cached_download_is_named_with_the_command_that_clears_it(tmp_path):
    archive, _ = _faces(tmp_path, 4)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    cached = downloads / "UTKFace.tar.gz"
    cached.write_bytes(archive.read_bytes()[:1500])  # as an older version kept it
    with pytest.raises(ValueError) as raised:
        utk_data.locate(archive.as_uri(), cache_dir=downloads)
    message = str(raised.value)
    assert message.startswith(f"{cached}: cannot extract it")
    assert f"(rm {cached})" in message and archive.as_uri() in message
    cached.unlink()  # what the message says to do
    folder = utk_data.locate(archive.as_uri(), cache_dir=downloads)
    assert len(utk_data.load_records(folder, verbose=False)[0]) == 4


def test_a_cached_download_that_fails_its_hash_is_downloaded_again(tmp_path):
    archive, _ = _faces(tmp_path, 3)
    sha256 = hashlib.sha256(archive.read_bytes()).hexdigest()
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    (downloads / "UTKFace.tar.gz").write_bytes(archive.read_bytes()[:1500])
    folder = utk_data.locate(archive.as_uri(), file_hash=sha256, cache_dir=downloads)
    assert len(utk_data.load_records(folder, verbose=False)[0]) == 3
    assert [path.name for path in downloads.iterdir() if path.is_file()] == [
        "UTKFace.tar.gz"
    ]


# --- pixel bombs -------------------------------------------------------------------------


def test_an_image_whose_header_claims_too_many_pixels_is_skipped(tmp_path, capsys):
    folder = make_folder(tmp_path / "faces", 3)
    (folder / "30_0_0_bomb.png").write_bytes(_png_header_only(20_000, 20_000))
    records, skipped = utk_data.load_records(folder)
    assert len(records) == 3
    assert skipped == [
        (folder / "30_0_0_bomb.png", "over 40,000,000 pixels (20000x20000)")
    ]
    assert (
        "3 images used, 1 skipped (1 over 40,000,000 pixels" in capsys.readouterr().out
    )


@pytest.mark.parametrize("options", [{}, {"progressive": True}, {"exif": b"Exif\0\0"}])
def test_a_jpeg_over_the_pixel_limit_is_skipped(tmp_path, monkeypatch, options):
    monkeypatch.setattr(utk_data, "MAX_PIXELS", 50_000)
    folder = make_folder(tmp_path / "faces", 2)
    large = folder / "31_1_2_large.jpg"
    write_image(large, size=(300, 200), image_format="JPEG")
    if options:  # a progressive frame header (SOF2), or an EXIF segment before it
        from PIL import Image

        Image.open(large).save(large, "JPEG", **options)
    records, skipped = utk_data.load_records(folder, verbose=False)
    assert len(records) == 2
    assert skipped == [(large, "over 50,000 pixels (300x200)")]


def test_decoding_refuses_an_image_over_the_limit_before_decoding(
    tmp_path, monkeypatch
):
    folder = make_folder(tmp_path / "faces", 3)
    bomb = folder / "30_0_0_bomb.png"
    bomb.write_bytes(_png_header_only(20_000, 20_000))
    large = write_image(folder / "31_0_0_large.png", size=(120, 100))
    records = [utk_data.Record(path, 30, 0, 0) for path in sorted(folder.iterdir())]
    monkeypatch.setattr(utk_data, "MAX_PIXELS", 10_000)  # 120x100 is over it too
    with pytest.warns(UserWarning) as warned:
        decoded = utk_data.decode_records(records, 16)
    assert [record.path for record in decoded.records] == sorted(
        set(folder.iterdir()) - {bomb, large}
    )
    message = str(warned[0].message)
    assert f"{bomb} (over 10,000 pixels (20000x20000))" in message
    assert f"{large} (over 10,000 pixels (120x100))" in message
    _, _, missing = utk_data.decode_files([str(bomb), str(large)], 16)
    assert list(missing) == [0, 1]


# --- folder entries that are not image files ---------------------------------------------


def _odd_entries(folder):
    """Entries that are not usable image files, each with the reason it is skipped."""
    good = sorted(folder.iterdir())[0]
    os.symlink("31_0_0_loop.jpg", folder / "30_0_0_loop.jpg")
    os.symlink("30_0_0_loop.jpg", folder / "31_0_0_loop.jpg")
    os.symlink("nowhere.jpg", folder / "32_0_0_dangling.jpg")
    os.mkfifo(folder / "33_0_0_fifo.jpg")
    (folder / "34_0_0_folder.jpg").mkdir()
    (folder / "x.jpg").mkdir()
    non_utf8 = os.fsencode(folder) + b"/35_0_0_\xff\xfe.jpg"
    Path(os.fsdecode(non_utf8)).write_bytes(good.read_bytes())
    os.symlink(good.name, folder / "36_1_2_link_to_a_face.jpg")  # usable
    return {
        "30_0_0_loop.jpg": "symbolic link loop",
        "31_0_0_loop.jpg": "symbolic link loop",
        "32_0_0_dangling.jpg": "dangling symbolic link",
        "33_0_0_fifo.jpg": "not a regular file (a FIFO, socket or device)",
        "34_0_0_folder.jpg": "a folder, not an image file",
        "x.jpg": "a folder, not an image file",
        os.fsdecode(b"35_0_0_\xff\xfe.jpg"): "file name is not valid UTF-8",
    }


def test_links_fifos_folders_and_undecodable_names_are_counted(tmp_path, capsys):
    folder = make_folder(tmp_path / "faces", 4)
    expected = _odd_entries(folder)
    records, skipped = utk_data.load_records(folder)
    assert {path.name: reason for path, reason in skipped} == expected
    assert len(records) == 5 and len(records) + len(skipped) == len(os.listdir(folder))
    line = capsys.readouterr().out
    assert "5 images used, 7 skipped (2 symbolic link loop, 2 a folder" in line
    # Every name prints, the undecodable one with its bytes escaped.
    report = utk_data.describe(records, skipped)
    report.encode("utf-8")
    assert "35_0_0_\\xff\\xfe.jpg: file name is not valid UTF-8" in report
    images, _ = next(iter(utk_data.make_dataset(records, 16, 5, training=False)))
    assert images.shape == (5, 16, 16, 3)


def test_an_unreadable_file_is_counted(tmp_path, monkeypatch):
    folder = make_folder(tmp_path / "faces", 3)
    locked = sorted(folder.iterdir())[1]
    if os.geteuid() == 0:
        # root reads any file whatever its mode: refuse the one file as the system would.
        real_open = os.open

        def refusing_open(path, *args, **kwargs):
            if Path(path) == locked:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(os, "open", refusing_open)
    else:
        locked.chmod(0)
    records, skipped = utk_data.load_records(folder, verbose=False)
    assert len(records) == 2
    assert skipped == [(locked, "cannot be read (Permission denied)")]


def test_a_folder_whose_own_path_is_not_utf8_is_refused_by_name(tmp_path):
    folder = Path(os.fsdecode(os.fsencode(tmp_path) + b"/faces-\xff"))
    make_folder(folder, 2)
    with pytest.raises(
        ValueError, match=r"faces-\\xff: the folder's path is not valid"
    ):
        utk_data.load_records(folder)


# --- the summary command -----------------------------------------------------------------


def _user_errors(tmp_path):
    """Command lines that a user can get wrong, each with what the error must name."""
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(os.urandom(500))
    (tmp_path / "empty").mkdir()
    (tmp_path / "only-bad").mkdir()
    (tmp_path / "only-bad" / "notes.jpg").write_text("x")
    os.mkfifo(tmp_path / "fifo.tar.gz")
    faces = make_folder(tmp_path / "faces", 2)
    return [
        (["--data", str(tmp_path / "missing")], "missing does not exist"),
        (["--data", str(junk)], "junk.tar.gz: cannot extract it"),
        (["--data", str(tmp_path / "fifo.tar.gz")], "fifo.tar.gz: expected a folder"),
        (["--data", str(tmp_path / "empty")], "no images here"),
        (["--data", str(tmp_path / "only-bad")], "notes.jpg: no age in file name"),
        (
            ["--data", str(faces), "--histogram", str(tmp_path / "no" / "h.png")],
            "h.png",
        ),
    ]


def test_summary_command_errors_are_one_line_and_status_1(tmp_path, capsys):
    for arguments, named in _user_errors(tmp_path):
        assert utk_data.main(["summary", *arguments]) == 1, arguments
        error = capsys.readouterr().err
        assert error.startswith("error: ") and error.count("\n") == 1, error
        assert named in error, error


def test_summary_command_line_prints_no_traceback(tmp_path):
    completed = subprocess.run(
        [sys.executable, "utk_data.py", "summary", "--data", str(tmp_path / "none")],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
    )
    assert completed.returncode == 1
    assert completed.stderr.startswith("error: UTKFace data not found")
    assert "Traceback" not in completed.stderr
