"""Shared fixtures: small synthetic image folders and the real UTKFace archive."""

import os

import pytest

import utk_data
from synthetic import make_folder


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
