"""`drive.mount()` as in Colab: MyDrive appears under the mount point and outlives runtimes."""

from pathlib import Path

from google.colab import log


def mount(mountpoint, force_remount=False):
    """Create MOUNTPOINT/MyDrive (kept between runs, like a real Drive)."""
    (Path(mountpoint) / "MyDrive").mkdir(parents=True, exist_ok=True)
    log(f"mount {mountpoint}")
