"""pytest set-up for the whole repository: the notebook runs in quick mode under tests."""

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("AGE_REGRESSION_QUICK", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MPLBACKEND", "Agg")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import utk_data  # noqa: E402

NO_DATA = (
    "no UTKFace data: ../shared/data/UTKFace.tar.gz is missing and UTKFACE_DATA is unset "
    "(the notebook would download the data set)"
)


def has_local_data():
    """True when the tests may read UTKFace without downloading it."""
    return bool(os.environ.get("UTKFACE_DATA")) or utk_data.SHARED_ARCHIVE.is_file()


def pytest_collection_modifyitems(config, items):
    """The notebook (run by nbmake) trains for a minute: it is slow. Skip it, with the
    reason, where it would have to download the data."""
    for item in items:
        if item.path.suffix == ".ipynb":
            item.add_marker(pytest.mark.slow)
            if not has_local_data():
                item.add_marker(pytest.mark.skip(reason=NO_DATA))
