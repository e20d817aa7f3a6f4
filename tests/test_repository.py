"""Checks of the repository itself: README commands, CI script, no dataset files."""

import re
import subprocess
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]


def _readme_commands():
    readme = (REPOSITORY / "README.md").read_text()
    return re.findall(r"```bash\n(.*?)\n```", readme, flags=re.S)


def test_readme_starts_with_setup_and_test_commands():
    setup, tests = _readme_commands()[:2]
    assert "pip install -r requirements.txt" in setup and "train_loop.py train" in setup
    assert tests == "pip install -r requirements-dev.txt && python -m pytest"


def test_ci_runs_the_readme_test_command():
    test_command = _readme_commands()[1]
    ci = (REPOSITORY / ".ci" / "run").read_text().splitlines()
    assert ci[-1] == test_command
    assert any(re.search(r"pip\S* install .*-r requirements.txt", line) for line in ci)


def test_no_dataset_files_or_weights_are_tracked():
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=REPOSITORY, capture_output=True, text=True, check=True
    ).stdout.split()
    forbidden = re.compile(r"\.(jpe?g|npy|npz|tfrecord|keras|h5)$", re.I)
    assert [name for name in tracked if forbidden.search(name)] == []
