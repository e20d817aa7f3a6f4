"""`files` as in Colab: upload() opens a dialog whose files land in the current folder."""

import os
import shutil
from pathlib import Path

from google.colab import dialog


def upload():
    """Copy every file of COLAB_STUB_UPLOADS here; return {name: contents} as Colab does."""
    uploaded = {}
    for path in sorted(Path(os.environ["COLAB_STUB_UPLOADS"]).iterdir()):
        shutil.copyfile(path, path.name)
        uploaded[path.name] = path.read_bytes()
    dialog("files.upload", " ".join(uploaded))
    return uploaded


def download(filename):
    """Colab offers the file to the browser: a dialog."""
    dialog("files.download", str(filename))
