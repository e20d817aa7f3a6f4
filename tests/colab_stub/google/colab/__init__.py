"""A stand-in for Colab's `google.colab` package, for running the notebook as Colab would.

`google/` has no `__init__.py`, so it stays a namespace package beside `google.protobuf`.
Set by the test that uses it:
- COLAB_STUB_UPLOADS: a folder whose files `files.upload()` "uploads" into the current folder;
- COLAB_STUB_LOG: a file that gets one line per call ("upload a.py b.py", "mount PATH").
"""

import os


def log(line):
    """Note a call, so that a test can check which dialogs the notebook opened."""
    with open(os.environ["COLAB_STUB_LOG"], "a") as stream:
        stream.write(line + "\n")
