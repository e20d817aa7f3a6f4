"""Killing a training process the way a Colab disconnect or `kill -9` does."""

import signal
import time


def kill_at_first_checkpoint(process, checkpoint, timeout):
    """SIGKILL `process` as soon as the file `checkpoint` exists (or after `timeout`
    seconds, or once the process has ended by itself), and wait for it."""
    deadline = time.time() + timeout
    while not checkpoint.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
