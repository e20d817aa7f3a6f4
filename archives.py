"""Archives and downloads, handled safely: a .tar(.gz) or .zip extracted once into a cache,
within limits on its members and size; a URL downloaded under a temporary name and kept
only when complete. utk_data.locate uses them to find UTKFace.

    folder = archives.extract_once(Path("UTKFace.tar.gz"), cache_dir)
"""

import contextlib
import hashlib
import os
import re
import shutil
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
# Limits far above UTKFace's own (23,708 JPEGs of 200x200, about 110 MB packed or not;
# Kaggle's zip holds about 67,000 files with its duplicate copies): beyond them an archive
# is refused as a bomb, before anything is written out.
MAX_MEMBERS = 90_000
MAX_EXTRACTED_BYTES = 4 * 10**9
MAX_RATIO = 200  # expanded bytes per archive byte (JPEGs barely compress)


def is_archive(path):
    """True for a name that ends as a .tar.gz, .tgz, .tar or .zip archive."""
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


class _Refused(ValueError):
    """An archive refused by a message that names it and says why."""


def _check_member(archive, name, link_target=None):
    """Refuse a member that would land outside the extraction folder."""
    for label, value in (("path", name), ("link target", link_target)):
        if value is None:
            continue
        parts = Path(value.replace("\\", "/")).parts
        if value.startswith(("/", "\\")) or re.match(r"^[a-zA-Z]:", value):
            raise _Refused(f"{archive}: refusing member {name!r}: absolute {label}")
        if ".." in parts:
            raise _Refused(f"{archive}: refusing member {name!r}: '..' in its {label}")


def _check_limits(archive, members, expanded):
    """Refuse an archive over MAX_MEMBERS, MAX_EXTRACTED_BYTES or MAX_RATIO: a bomb."""
    ratio = expanded / max(1, archive.stat().st_size)
    for value, limit, what in zip(
        (members, expanded, ratio),
        (MAX_MEMBERS, MAX_EXTRACTED_BYTES, MAX_RATIO),
        ("members", "bytes expanded", "times its size expanded"),
    ):
        if value > limit:
            raise _Refused(
                f"{archive}: refusing to extract it: over {limit:,} {what}, far beyond "
                "UTKFace (an archive bomb, or not the data set)"
            )


def _extract(archive, target):
    """Extract a .tar(.gz) or .zip archive into the new folder `target`, refusing unsafe
    members and archives over the limits."""
    if archive.name.lower().endswith(".zip"):
        with zipfile.ZipFile(archive) as zip_file:
            infos = zip_file.infolist()
            # zipfile stops every member at the size that the directory gives it.
            _check_limits(archive, len(infos), sum(info.file_size for info in infos))
            for info in infos:
                _check_member(archive, info.filename)
                if (info.external_attr >> 16) & 0o170000 == 0o120000:
                    name = info.filename
                    raise _Refused(f"{archive}: refusing member {name!r}: a link")
            zip_file.extractall(target)
        return
    with tarfile.open(archive) as tar_file:
        # The headers first: nothing is written from an archive over the limits.
        expanded = 0
        for count, member in enumerate(tar_file, 1):
            link = member.linkname if member.issym() or member.islnk() else None
            _check_member(archive, member.name, link)
            expanded += member.size
            _check_limits(archive, count, expanded)
        try:
            # The "data" filter also refuses links that leave the target and device files.
            tar_file.extractall(target, filter="data")
        except tarfile.FilterError as error:
            raise _Refused(f"{archive}: refusing member: {error}") from None


def extract_once(archive, cache_dir):
    """Extract `archive` into the cache (atomically) unless done before; return the folder.
    Its name holds a digest of the archive's size and first and last MB (where a gzip or
    a zip keeps checksums of its content): a changed archive gets a folder of its own.
    """
    stem = re.sub(r"(\.tar\.gz|\.tgz|\.tar|\.zip)$", "", archive.name, flags=re.I)
    with open(archive, "rb") as file:
        digest = hashlib.sha256(file.read(2**20))
        digest.update(str(file.seek(0, os.SEEK_END)).encode())
        file.seek(max(2**20, file.tell() - 2**20))
        digest.update(file.read())
    final = Path(cache_dir) / f"{stem}-{digest.hexdigest()[:16]}-extracted"
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(final.parent, f".{stem}-*")
    # Extract beside the final folder, then rename: another process sees either nothing or
    # the complete folder, never half of it.
    temporary = Path(tempfile.mkdtemp(prefix=f".{stem}-", dir=final.parent))
    try:
        print(f"Extracting {archive} into {final} ...", flush=True)
        _extract(archive, temporary)
        try:
            os.rename(temporary, final)
        except OSError:
            if not final.is_dir():
                raise
            # Another process finished first: use its folder.
    except _Refused:
        raise
    except Exception as error:
        # A broken archive makes tarfile or zipfile raise anything; a full disk, an errno.
        disk = getattr(error, "errno", None)
        cause = "disk" if disk else "damaged, incomplete or unsupported archive"
        detail = " ".join(f"{type(error).__name__}: {error}".split())  # on one line
        raise _Refused(f"{archive}: cannot extract it ({cause}: {detail})") from None
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return final


def _remove_stale(folder, pattern):
    """Remove what a killed extraction or download left in `folder`: never reused, it is
    only taking space once untouched for a day."""
    for path in Path(folder).glob(pattern):
        with contextlib.suppress(OSError):
            if time.time() - path.lstat().st_mtime > 86400:
                shutil.rmtree(path) if path.is_dir() else path.unlink()


def _hash_matches(path, file_hash):
    """True when a file's SHA-256 (64 hex digits) or MD5 is `file_hash`."""
    with open(path, "rb") as file:
        algorithm = "sha256" if len(file_hash) == 64 else "md5"
        return hashlib.file_digest(file, algorithm).hexdigest() == file_hash


def download(url, file_hash, download_dir, alternatives="download it yourself"):
    """Download `url` into `download_dir` once; a failure names the URL and what else to do.

    The file is written under a temporary name and renamed when complete (and matching
    `file_hash`, when known): a download cut off part-way is never taken for the archive.
    """
    import keras

    file_name = Path(url.split("?")[0]).name or "UTKFace.tar.gz"
    final = download_dir / file_name
    if final.is_file() and (file_hash is None or _hash_matches(final, file_hash)):
        return final
    _remove_stale(download_dir, f".{file_name}.part-*")
    part = download_dir / f".{file_name}.part-{os.urandom(4).hex()}"
    try:
        # `get_file` checks the hash when one is known; extraction is ours, since
        # `get_file` only skips unsafe members.
        where = dict(cache_dir=str(download_dir.parent), cache_subdir=download_dir.name)
        downloaded = keras.utils.get_file(part.name, url, file_hash=file_hash, **where)
        return Path(downloaded).replace(Path(downloaded).with_name(file_name))
    except ValueError as error:  # The download does not match `file_hash`.
        raise ValueError(f"{url}: {error}") from None
    except Exception as error:  # `get_file` raises a bare Exception on network errors.
        raise FileNotFoundError(
            f"could not download UTKFace from {url}: {error}. "
            f"Check the network, or {alternatives}"
        ) from None
    finally:
        part.unlink(missing_ok=True)
