"""`drive` as in Colab: mount() asks for permission; MyDrive then outlives runtimes."""

from pathlib import Path

from google.colab import dialog


def mount(mountpoint, force_remount=False, timeout_ms=120000, readonly=False):
    """Ask (a dialog), then create MOUNTPOINT/MyDrive (kept between runs, like a Drive)."""
    dialog("drive.mount", str(mountpoint))
    (Path(mountpoint) / "MyDrive").mkdir(parents=True, exist_ok=True)


def flush_and_unmount(timeout_ms=24 * 60 * 60 * 1000):
    """Nothing to flush here."""
