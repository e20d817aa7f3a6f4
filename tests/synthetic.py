"""Small synthetic images named like UTKFace (random smooth colours, no faces)."""

from pathlib import Path

import numpy as np
from PIL import Image


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
