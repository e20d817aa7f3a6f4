"""bench/bench_step.py: train steps under settings that differ, timed against each other."""

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import bench_step  # noqa: E402
from synthetic import make_folder  # noqa: E402


@pytest.mark.parametrize("value", ["1", "1,2,3", "a,b", "-1,2", ""])
def test_thread_counts_must_be_two_counts(value):
    with pytest.raises(ValueError, match="threads=INTRA,INTER"):
        bench_step.read_spec(f"threads={value}")


@pytest.mark.slow
def test_contenders_with_their_own_threads_train_in_processes_so_set(tmp_path, capsys):
    folder = make_folder(tmp_path / "UTKFace", 40, seed=3)
    flags = ["--data", str(folder), "--limit", "16", "--steps", "2", "--rounds", "1"]
    settings = "image_size=32 members=1 batch_size=8 precision=float32"
    bench_step.main([*flags, "--settings", settings, "threads=1,1", "threads=2,1"])
    output = capsys.readouterr().out
    assert re.search(
        r"A: in its processes, oneDNN \w+, threads an op 1, ops at once 1", output
    )
    assert re.search(
        r"B: in its processes, oneDNN \w+, threads an op 2, ops at once 1", output
    )
    assert "B/A: img/s" in output
