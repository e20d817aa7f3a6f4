"""Shared test helpers: small synthetic image folders and the real UTKFace archive."""

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import utk_data  # noqa: E402


def write_image(path, size=(48, 48), mode="RGB", seed=0, image_format=None, exif=None):
    """Write a random-ish smooth image (no face) and return its path."""
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    low = rng.integers(0, 256, (4, 4, channels), dtype=np.uint8)
    image = Image.fromarray(low.squeeze(), mode).resize(size, Image.BILINEAR)
    options = {"exif": exif} if exif is not None else {}
    image.save(path, format=image_format, **options)
    return Path(path)


def make_folder(folder, count, seed=0, size=(48, 48)):
    """A folder of `count` well-formed UTKFace-style JPEG files with varied labels."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        age, gender, race = int(rng.integers(1, 90)), index % 2, index % 5
        name = f"{age}_{gender}_{race}_2017011{index:010d}.jpg.chip.jpg"
        write_image(folder / name, size=size, seed=seed * 1000 + index)
    return folder


@pytest.fixture
def image_folder(tmp_path):
    """Forty small synthetic images named like UTKFace."""
    return make_folder(tmp_path / "faces", 40)


@pytest.fixture(scope="session")
def real_folder():
    """The real UTKFace images; skipped only when neither the archive nor UTKFACE_DATA exists."""
    if not os.environ.get("UTKFACE_DATA") and not utk_data.SHARED_ARCHIVE.is_file():
        pytest.skip("no UTKFace archive in ../shared/data and UTKFACE_DATA is unset")
    return utk_data.locate()
