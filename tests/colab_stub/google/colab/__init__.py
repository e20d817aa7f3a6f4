"""A stand-in for Colab's `google.colab` package, for running the notebook as Colab would.

`google/` has no `__init__.py`, so it stays a namespace package beside `google.protobuf`.
Every call that opens a dialog in Colab, or waits for the browser (files.upload,
files.download, drive.mount, auth.authenticate_user, userdata.get, output.eval_js), is
noted as "dialog NAME ..."; a callback registered for a button as "callback NAME". Once
the test has noted the end of the setup (`_setup_done`), a dialog raises: in Colab, *Run
all* would stop there and wait for a click.

Set by the test that uses it:
- COLAB_STUB_UPLOADS: a folder whose files `files.upload()` "uploads" into the current folder;
- COLAB_STUB_LOG: a file that gets one line per call.
"""

import os

SETUP_DONE = "setup done"


def log(line):
    """Note a call, so that a test can check which dialogs the notebook opened."""
    with open(os.environ["COLAB_STUB_LOG"], "a") as stream:
        stream.write(line + "\n")


def _noted():
    with open(os.environ["COLAB_STUB_LOG"]) as stream:
        return stream.read().splitlines()


def dialog(name, detail=""):
    """Note a dialog; raise if the setup is over, where Run all must not wait."""
    log(f"dialog {name} {detail}".rstrip())
    if SETUP_DONE in _noted():
        raise RuntimeError(
            f"{name} opened a dialog after the setup: Run all would wait for a click"
        )


def _setup_done():
    """Called by the test after the last setup cell: from here on a dialog is an error."""
    log(SETUP_DONE)
