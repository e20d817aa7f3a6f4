"""pytest set-up for the whole repository: the notebook runs in quick mode under tests, and
the tests read the real UTKFace archive that UTKFACE_DATA names."""

import os
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parent
# Where the tests find UTKFace unless UTKFACE_DATA says otherwise: the archive kept beside
# the repository (CI sets UTKFACE_DATA to it as well).
ARCHIVE = REPOSITORY.parent / "shared" / "data" / "UTKFace.tar.gz"
if ARCHIVE.is_file():
    os.environ.setdefault("UTKFACE_DATA", str(ARCHIVE))
os.environ.setdefault("AGE_REGRESSION_QUICK", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MPLBACKEND", "Agg")
sys.path.insert(0, str(REPOSITORY))

# The tests import TensorFlow as a user's run does: after devices has set its environment
# (the Keras backend, oneDNN).
import devices  # noqa: E402, F401

NO_DATA = (
    "no UTKFace data: UTKFACE_DATA is unset and no archive lies beside the repository "
    "(the notebook would download the data set)"
)


def has_local_data():
    """True when the tests may read UTKFace without downloading it."""
    return bool(os.environ.get("UTKFACE_DATA"))


def pytest_collection_modifyitems(config, items):
    """The notebook (run by nbmake) trains for a minute: it is slow. Skip it, with the
    reason, where it would have to download the data."""
    for item in items:
        if item.path.suffix == ".ipynb":
            item.add_marker(pytest.mark.slow)
            if not has_local_data():
                item.add_marker(pytest.mark.skip(reason=NO_DATA))
