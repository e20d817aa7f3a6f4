"""The notebook run as Colab runs it, with *Run all*, unattended.

Each test runs a copy of the notebook the way a student meets it: in a folder that holds
nothing but the notebook, with a stand-in for Colab's `google.colab` package
(tests/colab_stub) imported before the first cell. The stand-in notes every dialog (an
upload, the Drive's permission, ...) and raises on one after the setup, where *Run all*
would stop and wait for a click.
"""

import base64
import os
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

REPOSITORY = Path(__file__).resolve().parents[1]
NOTEBOOK = REPOSITORY / "age_regression.ipynb"
STUB = Path(__file__).resolve().parent / "colab_stub"
# The folder that GitHub's "Code -> Download ZIP" puts in its zip.
ZIP_FOLDER = "age-regression-main"
SETUP_DONE = "setup done"

pytestmark = pytest.mark.slow


def _project_files():
    """The repository's files as GitHub's zip or a clone has them: those git tracks or
    would add (as they are in the work tree), or without git every module and figure."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
    )
    if listed.returncode == 0 and listed.stdout.strip():
        names = listed.stdout.splitlines()
    else:
        names = [p.name for p in REPOSITORY.glob("*.py")] + [
            f"figures/{p.name}" for p in (REPOSITORY / "figures").glob("*.png")
        ]
    return [name for name in names if (REPOSITORY / name).is_file()]


def _output_text(notebook):
    parts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            parts.append(output.get("text", ""))
            for kind in ("text/plain", "text/markdown", "text/html"):
                parts.append(output.get("data", {}).get(kind, ""))
            parts.append(output.get("evalue", ""))
    return "\n".join(parts)


# After the notebook's last cell: a student who, later, picks a photo with the button. The
# page's script would call the registered callback with the photo as a data URL.
PICK_A_PHOTO = """
from google.colab import output

photo = "data:image/jpeg;base64," + base64.b64encode(Path(PICKED).read_bytes()).decode()
answer = output._functions["age_photo"](photo)
print("the page shows:", answer.data[:40])
"""


def _run_in_colab(folder, overrides, picked=None):
    """Execute folder/age_regression.ipynb as Colab's Run all would, the setup's end
    noted after the cell that mounts the Drive; return (notebook, output text)."""
    notebook = nbformat.read(folder / NOTEBOOK.name, as_version=4)
    index = lambda text: next(  # noqa: E731
        i for i, cell in enumerate(notebook.cells) if text in cell.source
    )
    notebook.cells.insert(
        index("drive.mount(") + 1,
        nbformat.v4.new_code_cell("import google.colab\ngoogle.colab._setup_done()"),
    )
    notebook.cells.insert(index("REPO_URL =") + 1, nbformat.v4.new_code_cell(overrides))
    notebook.cells.insert(0, nbformat.v4.new_code_cell("import google.colab"))
    if picked:
        notebook.cells.append(
            nbformat.v4.new_code_cell(f"PICKED = {str(picked)!r}\n" + PICK_A_PHOTO)
        )
    for cell in notebook.cells:
        cell.pop("id", None)  # The inserted cells have no stable ids; none are needed.
    client = NotebookClient(
        notebook,
        timeout=900,
        kernel_name="python3",
        resources={"metadata": {"path": str(folder)}},
    )
    client.execute()
    return notebook, _output_text(notebook)


def _calls(log):
    """The stand-in's notes: ("dialog" | "callback" | "setup done", what)."""
    return [line for line in log.read_text().splitlines() if line]


def _assert_unattended(calls, uploads):
    """At most the upload(s) expected and one Drive prompt, all before the setup's end;
    nothing after it but the photo button's callback and the live page's frame."""
    done = calls.index(SETUP_DONE)
    dialogs = [call for call in calls[:done] if call.startswith("dialog ")]
    assert [c for c in dialogs if c.startswith("dialog files.upload")] == uploads
    assert len([c for c in dialogs if c.startswith("dialog drive.mount ")]) == 1
    assert len(dialogs) == len(uploads) + 1, dialogs
    after = [re.sub(r"port \d+", "port N", call) for call in calls[done + 1 :]]
    assert after == ["callback age_photo", "iframe of port N"], after


@pytest.fixture
def colab(tmp_path, real_folder, monkeypatch):
    """What a Colab test needs: the stand-in's settings, a Drive, an upload folder."""
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    log = tmp_path / "colab.log"
    log.touch()
    # The kernel inherits this environment. Only the stand-in is on the path: the modules
    # must come through the upload dialog or the clone.
    monkeypatch.setenv("PYTHONPATH", str(STUB))
    monkeypatch.setenv("COLAB_STUB_UPLOADS", str(uploads))
    monkeypatch.setenv("COLAB_STUB_LOG", str(log))
    monkeypatch.setenv(
        "UTKFACE_DATA", os.environ.get("UTKFACE_DATA") or str(real_folder)
    )
    monkeypatch.setenv("AGE_REGRESSION_QUICK", "1")
    monkeypatch.delenv("AGE_PHOTO", raising=False)
    drive = f"DRIVE_MOUNT = {str(tmp_path / 'drive')!r}"
    # A face for the photo button, read from the data at run time (never committed).
    picked = next(Path(real_folder).rglob("*.jpg"))
    return dict(tmp_path=tmp_path, uploads=uploads, log=log, drive=drive, picked=picked)


def _fresh_runtime(folder):
    """A folder that holds only the notebook, as a new Colab runtime opened from GitHub."""
    folder.mkdir()
    shutil.copyfile(NOTEBOOK, folder / NOTEBOOK.name)
    return folder


def test_run_all_with_the_projects_zip_uploaded_once(colab):
    archive = colab["uploads"] / f"{ZIP_FOLDER}.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
        for name in _project_files():
            zipped.write(REPOSITORY / name, f"{ZIP_FOLDER}/{name}")
    folder = _fresh_runtime(colab["tmp_path"] / "content")

    notebook, text = _run_in_colab(folder, colab["drive"], picked=colab["picked"])

    _assert_unattended(_calls(colab["log"]), [f"dialog files.upload {archive.name}"])
    assert (folder / ZIP_FOLDER / "model.py").is_file()
    # The course network was defined, built and stepped in the notebook, then trained by
    # train_loop; our network's training was estimated and run.
    assert re.search(r"step 6: loss \d+\.\d\d years", text)
    assert re.search(r"the course network: test MAE \d+\.\d\d years", text)
    assert re.search(r"about \d+\.\d minutes of training on this runtime", text)
    # devices set the environment before TensorFlow's first import: the oneDNN kernels.
    assert "oneDNN CPU kernels: True" in text
    runs = colab["tmp_path"] / "drive" / "MyDrive" / "age_regression" / "runs"
    kept = sorted(path.parent.name for path in runs.glob("*/metrics.json"))
    assert len(kept) == 2 and kept[0].startswith("course-"), kept
    # Colab's markdown cannot reach figures/: the cells under it showed them.
    shown = [
        output
        for cell in notebook.cells
        if cell.source.startswith("show_figures(")
        for output in cell.outputs
        if "image/png" in output.get("data", {})
    ]
    assert len(shown) >= 6
    # Without a photo, a test face; the button is on the page, wired to the callback that
    # a later photo reached.
    assert 'invokeFunction("age_photo"' in text
    assert 'the page shows: <img src="data:image/png;base64,' in text


def test_run_all_with_repo_url_clones_without_a_file_dialog_and_resumes(colab):
    origin = colab["tmp_path"] / "origin"
    for name in _project_files():
        (origin / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPOSITORY / name, origin / name)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.org"]
    for command in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "project"]):
        subprocess.run(git + command, cwd=origin, check=True)
    folder = _fresh_runtime(colab["tmp_path"] / "content")
    # A file:// URL, so that git clones as from a server (--depth works).
    overrides = f"REPO_URL = {origin.as_uri()!r}\n{colab['drive']}"

    _, first = _run_in_colab(folder, overrides)
    _assert_unattended(_calls(colab["log"]), [])
    clone = folder / "age_regression"
    assert (clone / "model.py").is_file() and (clone / ".git").is_dir()
    assert "resuming" not in first

    # Runtime -> Restart: a new kernel in the same folder, the clone and the Drive kept.
    (clone / "kept.txt").write_text("the clone is reused, not made again")
    colab["log"].write_text("")
    _, second = _run_in_colab(folder, overrides)
    _assert_unattended(_calls(colab["log"]), [])
    assert (clone / "kept.txt").is_file()
    assert re.search(r"resuming .* after epoch 4 of 4", second)
