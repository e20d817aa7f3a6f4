"""`files.upload()` as in Colab: the chosen files land in the current folder."""

import os
import shutil
from pathlib import Path

from google.colab import log


def upload():
    """Copy every file of COLAB_STUB_UPLOADS here; return {name: contents} as Colab does."""
    uploaded = {}
    for path in sorted(Path(os.environ["COLAB_STUB_UPLOADS"]).iterdir()):
        shutil.copyfile(path, path.name)
        uploaded[path.name] = path.read_bytes()
    log("upload " + " ".join(uploaded))
    return uploaded
