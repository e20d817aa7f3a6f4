"""The notebook: read unexecuted as a grader reads it, and run as Colab runs it.

nbmake runs the notebook in place (pytest.ini). The tests here run copies of it the way a
student meets it: in a folder that holds nothing but the notebook, with a stand-in for
Colab's `google.colab` package (tests/colab_stub) imported before the first cell.
"""

import importlib.util
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

import model
import train_loop
from synthetic import write_image

REPOSITORY = Path(__file__).resolve().parents[1]
NOTEBOOK = REPOSITORY / "age_regression.ipynb"
STUB = Path(__file__).resolve().parent / "colab_stub"
MODULES = (
    "utk_data.py",
    "model.py",
    "train_loop.py",
    "devices.py",
    "evaluation.py",
    "report.py",
    "photos.py",
    "export.py",
)


def _load_generator():
    spec = importlib.util.spec_from_file_location(
        "make_notebook", REPOSITORY / "tools" / "make_notebook.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _section(markdown, heading):
    """The markdown from a heading up to the next heading of the same or a higher level."""
    start = markdown.index(heading)
    body = markdown.index("\n", start)
    level = len(heading.split(" ")[0])
    following = re.search(rf"^#{{1,{level}}} ", markdown[body:], re.M)
    return markdown[start : body + following.start() if following else len(markdown)]


# --- read unexecuted ---------------------------------------------------------------------


def test_the_notebook_is_what_its_generator_writes():
    assert NOTEBOOK.read_text() == _load_generator().render()


def test_the_notebook_is_committed_without_outputs():
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    assert all(not cell.get("outputs") for cell in cells if cell["cell_type"] == "code")


def test_task1_markdown_agrees_with_the_model(notebook_markdown):
    task1 = _section(notebook_markdown, "### Task 1")
    course = train_loop.make_model(train_loop.TrainConfig(arch="course_cnn"))
    assert model.format_feature_map_table(model.feature_map_table(course)) in task1
    shapes = [row.shape for row in model.feature_map_table(course)]
    for size in ("200 × 200 × 3", "49 × 49 × 8", "12 × 12 × 16", "2,304", "128", "64"):
        assert size in task1
    assert shapes[1] == (49, 49, 8) and shapes[2] == (12, 12, 16)


def test_the_course_network_and_the_train_step_stand_as_in_the_modules(
    notebook_markdown,
):
    # Static code in the markdown, so that it reads unexecuted on GitHub, and the very
    # source of the modules, so that it is never maintained twice.
    generator = _load_generator()
    for code, omit in (
        (model.CourseCNN, ("get_config",)),
        (train_loop.Trainer.update, ()),
    ):
        text = generator.source_text(code, omit)
        assert generator.python_block(text) in notebook_markdown, code.__qualname__
    for line in (
        "class CourseCNN(keras.Model):",
        "def __init__",
        "def forward",
        "def call",
        "with tf.GradientTape() as tape:",
    ):
        assert line in notebook_markdown
    assert "def get_config" not in notebook_markdown


def test_shown_source_leaves_out_only_the_methods_asked_for():
    generator = _load_generator()
    text = generator.source_text(model.CourseCNN, omit=("get_config",))
    assert text.startswith("@keras.saving.register_keras_serializable")
    assert "\n\n\n" not in text and text.endswith(
        "return self.forward(inputs, training)\n"
    )
    with pytest.raises(ValueError, match="no method"):
        generator.source_text(model.CourseCNN, omit=("fit_to_the_course",))


def test_quick_is_a_plain_line_that_the_environment_overrides():
    source = next(
        "".join(cell["source"])
        for cell in json.loads(NOTEBOOK.read_text())["cells"]
        if "REPO_URL =" in "".join(cell["source"])
    )
    assert re.search(r"^QUICK = False  # ", source, re.M)
    for environment, quick in ({}, False), ({"AGE_REGRESSION_QUICK": "1"}, True):
        namespace = {}
        with pytest.MonkeyPatch.context() as patch:
            patch.delenv("AGE_REGRESSION_QUICK", raising=False)
            for name, value in environment.items():
                patch.setenv(name, value)
            exec(source, namespace)
        assert namespace["QUICK"] is quick


@pytest.mark.parametrize(
    "heading", ["### Task 1", "## 8. Task 2", "## 9. Task 3", "## 10. Optional task"]
)
def test_each_answer_opens_with_its_verdict_and_the_numbers_of_answers_md(
    heading, notebook_markdown
):
    section = _section(notebook_markdown, heading)
    # The answer first, in bold; the reasoning after it, short; wide tables in answers.md.
    first = re.split(r"\n\s*\n", section.strip())[1]
    assert first.startswith("**") and first.endswith("**"), first
    if heading == "### Task 1":  # Its numbers are sizes; its table is checked above.
        return
    assert len(section.strip().splitlines()) <= 30
    assert "<!-- report: " not in section and "](answers.md#" in section
    assert "python train_loop.py train" in section  # The command that measured them.
    answers = (REPOSITORY / "answers.md").read_text()
    numbers = re.findall(r"\b\d+\.\d\d\b", section)
    assert len(numbers) >= 3, "an answer without measured numbers"
    assert [number for number in numbers if number not in answers] == []


def test_the_notebook_installs_what_requirements_txt_asks_for():
    generator = _load_generator()
    requirements = generator.requirements()
    source = "".join(
        "".join(cell["source"]) for cell in json.loads(NOTEBOOK.read_text())["cells"]
    )
    for spec in requirements.values():
        assert repr(spec) in source
    assert generator.minimum_version(requirements["tensorflow"]) == "2.19"


# --- run as Colab runs it ----------------------------------------------------------------


def _output_text(notebook):
    parts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            parts.append(output.get("text", ""))
            for kind in ("text/plain", "text/markdown"):
                parts.append(output.get("data", {}).get(kind, ""))
    return "\n".join(parts)


def _run_in_colab(folder, overrides):
    """Execute folder/age_regression.ipynb as Colab would; return (notebook, output text)."""
    notebook = nbformat.read(folder / NOTEBOOK.name, as_version=4)
    parameters = next(
        index
        for index, cell in enumerate(notebook.cells)
        if "REPO_URL =" in cell.source
    )
    notebook.cells.insert(parameters + 1, nbformat.v4.new_code_cell(overrides))
    notebook.cells.insert(0, nbformat.v4.new_code_cell("import google.colab"))
    for cell in notebook.cells:
        cell.pop("id", None)  # The inserted cells have no stable ids; none are needed.
    client = NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(folder)}},
    )
    client.execute()
    return notebook, _output_text(notebook)


@pytest.fixture
def colab(tmp_path, real_folder, monkeypatch):
    """What a Colab test needs: the stub's settings, a Drive, an upload folder."""
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    write_image(uploads / "my_photo.jpg", size=(120, 90), seed=7)
    log = tmp_path / "colab.log"
    log.touch()
    # The kernel inherits this environment. Only the stub is on the path: the modules must
    # come through the upload dialog or the clone.
    monkeypatch.setenv("PYTHONPATH", str(STUB))
    monkeypatch.setenv("COLAB_STUB_UPLOADS", str(uploads))
    monkeypatch.setenv("COLAB_STUB_LOG", str(log))
    monkeypatch.setenv(
        "UTKFACE_DATA", os.environ.get("UTKFACE_DATA") or str(real_folder)
    )
    monkeypatch.setenv("AGE_REGRESSION_QUICK", "1")
    drive = f"DRIVE_MOUNT = {str(tmp_path / 'drive')!r}"
    return dict(tmp_path=tmp_path, uploads=uploads, log=log, drive=drive)


def _fresh_runtime(folder):
    """A folder that holds only the notebook, as a new Colab runtime opened from GitHub."""
    folder.mkdir()
    shutil.copyfile(NOTEBOOK, folder / NOTEBOOK.name)
    return folder


@pytest.mark.slow
def test_colab_modules_arrive_through_the_upload_dialog(colab):
    for name in MODULES:
        shutil.copyfile(REPOSITORY / name, colab["uploads"] / name)
    folder = _fresh_runtime(colab["tmp_path"] / "content")
    _, text = _run_in_colab(folder, colab["drive"])
    calls = colab["log"].read_text().splitlines()
    assert calls[0] == "upload " + " ".join(sorted([*MODULES, "my_photo.jpg"]))
    assert any(call.startswith("mount ") for call in calls)
    assert all((folder / name).is_file() for name in MODULES)
    # The code is shown in markdown; the outputs hold what was computed with it: the
    # course network's test error, and how long our network's training was to take.
    assert re.search(r"the course network: test MAE \d+\.\d\d years", text)
    assert re.search(r"about \d+\.\d minutes of training on this runtime", text)
    # train_loop set the environment before TensorFlow's first import: the notebook
    # trains with the oneDNN kernels on a CPU.
    assert "oneDNN CPU kernels: True" in text
    runs = colab["tmp_path"] / "drive" / "MyDrive" / "age_regression" / "runs"
    # The runs are kept on the Drive: the course network's, then ours.
    kept = sorted(path.parent.name for path in runs.glob("*/metrics.json"))
    assert len(kept) == 2 and kept[0].startswith("course-"), kept


@pytest.mark.slow
def test_colab_clones_repo_url_once_and_resumes_after_a_restart(colab):
    origin = colab["tmp_path"] / "origin"
    origin.mkdir()
    for name in MODULES:
        shutil.copyfile(REPOSITORY / name, origin / name)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.org"]
    for command in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "modules"]):
        subprocess.run(git + command, cwd=origin, check=True)
    folder = _fresh_runtime(colab["tmp_path"] / "content")
    overrides = f"REPO_URL = {str(origin)!r}\n{colab['drive']}"

    _, first = _run_in_colab(folder, overrides)
    assert (folder / "age_regression" / "model.py").is_file()
    assert "reusing the clone" not in first and "resuming" not in first
    # Only the photo was asked for: the modules came from the clone.
    uploads = [
        c for c in colab["log"].read_text().splitlines() if c.startswith("upload")
    ]
    assert uploads == ["upload my_photo.jpg"]

    # Runtime -> Restart: a new kernel in the same folder, the clone and the Drive kept.
    _, second = _run_in_colab(folder, overrides)
    assert "reusing the clone" in second
    assert re.search(r"resuming .* after epoch 4 of 4", second)
