"""Write age_regression.ipynb from the cells below (the notebook is committed without outputs).

    python tools/make_notebook.py            # rewrite the notebook
    python tools/make_notebook.py --check    # exit 1 if the notebook differs from this source

Nothing in the notebook is written twice. The answers come from answers.md (each task's
opening paragraph, in bold, and its figures), the tables from results/ as `python
train_loop.py report` draws them, the Task 1 table from `model.feature_map_table`, the
versions the notebook installs from requirements.txt, and the course network and its
training step, which stand as code cells, from the modules' source.
"""

import argparse
import ast
import importlib
import inspect
import json
import re
import sys
import textwrap
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
NOTEBOOK = REPOSITORY / "age_regression.ipynb"
ANSWERS = REPOSITORY / "answers.md"
# The packages the notebook checks before anything imports them: requirement name -> the
# distributions that provide it (a CPU-only TensorFlow build counts as TensorFlow).
CHECKED = {
    "tensorflow": ("tensorflow", "tensorflow-cpu", "tf-nightly"),
    "tensorboard": ("tensorboard", "tb-nightly"),
    "keras": ("keras",),
    "numpy": ("numpy",),
    "pillow": ("pillow",),
    "matplotlib": ("matplotlib",),
    # Colab has OpenCV as opencv-python; any of its builds has the face detector.
    "opencv-python-headless": ("opencv-python-headless", "opencv-python"),
}
# The modules the notebook imports; the setup looks for these and every module of the
# project's top folder that they import (project_modules).
NOTEBOOK_IMPORTS = (
    "devices evaluation metrics model photos plots serve train_loop utk_data".split()
)
# The longest code cell allowed, but for the code shown from the modules.
MAX_CODE_LINES = 15


def requirements():
    """{name: requirement line} of the packages in CHECKED, from requirements.txt."""
    lines = (REPOSITORY / "requirements.txt").read_text().splitlines()
    found = {}
    for line in lines:
        spec = line.split("#")[0].strip()
        name = re.split(r"[<>=!~ ]", spec, maxsplit=1)[0].lower()
        if name in CHECKED:
            found[name] = spec
    missing = set(CHECKED) - set(found)
    if missing:
        raise ValueError(f"requirements.txt has no line for {sorted(missing)}")
    return found


def minimum_version(spec):
    """The lower bound of a requirement line, e.g. "2.19" of "tensorflow>=2.19,<3"."""
    match = re.search(r">=\s*([\d.]+)", spec)
    if not match:
        raise ValueError(f"requirements.txt: {spec!r} has no lower bound (>=)")
    return match.group(1)


def lowest(spec):
    """The parts of a requirement's lower bound, e.g. (3, 13, 2) of "keras>=3.13.2": a
    patch release can be the one that fixes a security hole."""
    return tuple(int(part) for part in minimum_version(spec).split(".")[:3])


def project(name):
    """A module of this repository (model, train_loop), imported on first use, so that
    importing this file or asking it for --help loads no TensorFlow."""
    if str(REPOSITORY) not in sys.path:
        sys.path.insert(0, str(REPOSITORY))
    return importlib.import_module(name)


def course_table():
    """The Task 1 table of the course network, computed from the model."""
    model, train_loop = project("model"), project("train_loop")
    course = train_loop.make_model(train_loop.TrainConfig(arch="course_cnn"))
    return model.format_feature_map_table(model.feature_map_table(course))


# ---------------------------------------------------------------------------------------
# Code from the modules
# ---------------------------------------------------------------------------------------


def source_text(code, omit=(), decorators=True):
    """The source of a class or function of our modules, dedented, without the methods
    named in `omit` (with their decorators) and, unless `decorators`, without its own.
    """
    lines = textwrap.dedent(inspect.getsource(code)).splitlines()
    definition = ast.parse("\n".join(lines)).body[0]
    methods = [
        node
        for node in getattr(definition, "body", [])
        if isinstance(node, ast.FunctionDef)
    ]
    unknown = set(omit) - {node.name for node in methods}
    if unknown:
        raise ValueError(f"{code.__qualname__} has no method {sorted(unknown)}")
    dropped = set()
    if not decorators:
        dropped.update(range(definition.lineno - 1))
    for node in methods:
        if node.name in omit:
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)]) - 1
            # The blank line that separates the method from the one above goes with it.
            if first > 0 and not lines[first - 1].strip():
                first -= 1
            dropped.update(range(first, node.end_lineno))
    kept = [line for number, line in enumerate(lines) if number not in dropped]
    return "\n".join(kept).strip("\n") + "\n"


def shown_code():
    """{name: source text} of the code the notebook runs as it stands in the modules: the
    course network (without the registration and the config that saving a model needs,
    which the module's copy keeps) and the minimal training step."""
    model, train_loop = project("model"), project("train_loop")
    return {
        "course": source_text(model.CourseCNN, omit=("get_config",), decorators=False),
        "train_step": source_text(train_loop.train_step),
    }


# ---------------------------------------------------------------------------------------
# Prose from answers.md
# ---------------------------------------------------------------------------------------


def github_anchor(heading):
    """The anchor GitHub gives a Markdown heading: "Task 3: a — b" -> "task-3-a--b"."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def answers_section(title):
    """(heading, body) of the "## " section of answers.md whose heading starts with
    `title`, up to the next "## " heading."""
    text = ANSWERS.read_text()
    parts = re.split(r"^## (.+)\n", text, flags=re.M)
    for heading, body in zip(parts[1::2], parts[2::2]):
        if heading.startswith(title):
            return heading, body
    raise ValueError(f"answers.md has no section '## {title}...'")


def verdict(body):
    """The opening paragraph of a section: its answer, in bold."""
    first = re.split(r"\n\s*\n", body.strip())[0]
    if not (first.startswith("**") and first.endswith("**")):
        raise ValueError(
            f"answers.md: a section opens without its answer in bold: {first}"
        )
    return first


def figures_of(body):
    """The lines that show figures/*.png in a section, in order."""
    return re.findall(r"!\[[^\]]*\]\(figures/[^)]+\.png\)", body)


def figure_names(lines):
    """The file names of figure lines."""
    return [re.search(r"figures/([^)]+)\)", line).group(1) for line in lines]


def full_answer_link(heading):
    """A link to a section of answers.md."""
    return f"[answers.md](answers.md#{github_anchor(heading)})"


def answer(title, notebook_heading, extra=""):
    """A task's markdown cell drawn from answers.md: the heading, the answer in bold, the
    section's figures and a link to the whole answer; its figure names."""
    heading, body = answers_section(title)
    figures = figures_of(body)
    link = (
        f"The whole answer, with its tables and commands: {full_answer_link(heading)}."
    )
    parts = [f"{notebook_heading} {heading}", verdict(body), *figures, link, extra]
    return "\n\n".join(part for part in parts if part), figure_names(figures)


def task1_answer():
    """Task 1 drawn from answers.md: the answer and its derivation up to the first table,
    then the course network's table as the model computes it."""
    heading, body = answers_section("Task 1")
    derivation = body.strip().split("\n| ")[0].rstrip()
    link = f"Our network's table is in {full_answer_link(heading)}."
    return "\n\n".join([f"### {heading}", derivation, course_table(), link])


def glossary():
    """The list of words that answers.md explains, as it stands there."""
    text = ANSWERS.read_text()
    start = text.index("**Words used here.**")
    return re.split(r"\n\s*\n", text[start:])[1]


def with_tables(cells):
    """The cells, every "<!-- report: NAME -->" line of their markdown followed by the
    table of that name as `python train_loop.py report` draws it from results/."""
    report = project("report")
    tables = report.report(REPOSITORY / "results")
    return [
        (
            kind,
            report.update_tables(source, tables) if kind == "markdown" else source,
        )
        for kind, source in cells
    ]


# ---------------------------------------------------------------------------------------
# The notebook
# ---------------------------------------------------------------------------------------


def cells():
    """The notebook as a list of ("markdown" | "code", source)."""
    written = written_cells()
    skeleton = shown_code()["course"]
    for kind, source in written:
        lines = source.strip("\n").splitlines()
        if kind == "code" and len(lines) > MAX_CODE_LINES and skeleton not in source:
            raise ValueError(f"a code cell of {len(lines)} lines: {lines[0]}")
    return with_tables(written)


def written_cells():
    """The cells as written below, before the tables are filled in."""
    return (
        opening_cells()
        + setup_cells()
        + data_cells()
        + course_cells()
        + our_network_cells()
        + answer_cells()
    )


def show_figures(names):
    """The code cell that shows figures in Colab, whose markdown cannot reach them."""
    return ("code", f"show_figures({', '.join(json.dumps(name) for name in names)})")


def opening_cells():
    """What the notebook is, the words it uses, and the results at a glance."""
    heading, body = answers_section("Results")
    results = "\n\n".join(
        [
            "## Results at a glance",
            verdict(body),
            "<!-- report: Results: the CPU preset and the short budget -->",
            *figures_of(body),
            RESULTS_TEXT.strip().replace("{link}", full_answer_link(heading)),
        ]
    )
    words = "## Words used here\n\n" + glossary() + "\n" + MACHINE_WORDS.strip()
    return [("markdown", INTRO), ("markdown", words), ("markdown", results)]


def setup_cells():
    """Parameters, the project's modules, installs, the machine, storage and imports."""
    required = "\n".join(
        f'    "{spec}": ("{" ".join(CHECKED[name])}", {lowest(spec)}),'
        for name, spec in requirements().items()
    )
    return [
        ("markdown", "## 1. Parameters\n\n" + PARAMETERS_TEXT),
        ("code", PARAMETERS),
        ("markdown", "## 2. Setup\n\nAre we in Colab?"),
        ("code", 'import sys\n\nIS_COLAB = "google.colab" in sys.modules\nIS_COLAB'),
        ("markdown", PROJECT_TEXT),
        ("code", FIND_PROJECT.replace("{modules}", modules_list())),
        ("code", FETCH_PROJECT),
        ("markdown", INSTALL_TEXT),
        ("code", REQUIRED.replace("{required}", required)),
        ("code", INSTALL),
        ("markdown", GPU_TEXT),
        ("code", VERSIONS),
        ("code", GPU),
        ("markdown", STORAGE_TEXT),
        ("code", STORAGE),
        ("markdown", "Our modules and matplotlib, then a seed."),
        ("code", IMPORTS),
        ("code", "keras.utils.set_random_seed(42)"),
        ("markdown", SHOW_FIGURES_TEXT),
        ("code", SHOW_FIGURES),
    ]


def project_modules():
    """The modules of the project's top folder that the notebook needs: those it imports
    and, in turn, those they import."""
    needed, waiting = set(), list(NOTEBOOK_IMPORTS)
    while waiting:
        name = waiting.pop()
        if name in needed or not (REPOSITORY / f"{name}.py").is_file():
            continue
        needed.add(name)
        tree = ast.parse((REPOSITORY / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                waiting += [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                waiting.append(node.module.split(".")[0])
    return sorted(needed)


def modules_list():
    """The project's modules as the lines of one string, the names apart, in the notebook."""
    lines = textwrap.wrap(" ".join(project_modules()), 80, break_long_words=False)
    # Every line but the last ends with the space that parts it from the next.
    return "\n".join([f'    "{line} "' for line in lines[:-1]] + [f'    "{lines[-1]}"'])


def data_cells():
    """The dataset and the training settings."""
    return [
        ("markdown", "## 3. Dataset\n\n" + DATASET_TEXT),
        ("code", DATASET),
        ("markdown", SAMPLES_TEXT),
        ("code", "utk_data.plot_summary(records, samples=16)\nplt.show()"),
        ("markdown", CONFIG_TEXT),
        ("code", CONFIG),
    ]


def course_cells():
    """The course network and the training step as code, Task 1, and their training."""
    shown = shown_code()
    return [
        ("markdown", "## 4. The course network\n\n" + COURSE_TEXT),
        ("code", COURSE_HELPERS + "\n\n" + shown["course"]),
        ("code", COURSE),
        ("markdown", task1_answer()),
        ("code", TASK1),
        ("markdown", STEP_TEXT),
        ("code", shown["train_step"]),
        ("markdown", FEW_STEPS_TEXT),
        ("code", FEW_STEPS),
        ("markdown", COURSE_RUN_TEXT),
        ("code", COURSE_RUN),
        ("code", COURSE_RESULT),
    ]


def our_network_cells():
    """Our network, its training and the evaluation."""
    return [
        ("markdown", "## 5. Our network\n\n" + OURS_TEXT),
        ("code", OURS),
        ("markdown", "## 6. Training\n\n" + TRAINING_TEXT),
        ("code", ESTIMATE),
        ("markdown", TENSORBOARD_TEXT),
        ("code", TENSORBOARD),
        ("code", "run = train_loop.train(config)"),
        ("code", "plots.plot_history(run.history)\nplt.show()"),
        ("markdown", "## 7. Evaluation on the test split\n\n" + EVALUATION_TEXT),
        ("code", EVALUATION),
        ("code", PLOTS),
        ("markdown", "The faces the model gets most wrong (true → predicted age):"),
        ("code", WORST),
        ("markdown", SANITY_TEXT),
        ("code", SANITY),
        ("markdown", REPORTED_TEXT),
        show_figures(figure_names(figures_of(answers_section("Results")[1]))),
    ]


def answer_cells():
    """Tasks 2 and 3, the optional task and a photo of your own, from answers.md."""
    task2, task2_figures = answer("Task 2", "## 8.", TASK2_TEXT.strip())
    task3, task3_figures = answer("Task 3", "## 9.")
    optional, optional_figures = answer(
        "Optional task", "## 10.", OPTIONAL_TEXT.strip()
    )
    photo, _ = answer("Your own photo", "## 11.")
    return [
        ("markdown", task2),
        show_figures(task2_figures),
        ("code", TASK2),
        ("markdown", task3),
        show_figures(task3_figures),
        ("markdown", optional),
        show_figures(optional_figures),
        ("code", OPTIONAL),
        ("markdown", photo + "\n\n" + PHOTO_TEXT),
        ("code", SHOW_AGE),
        ("code", TEST_FACE),
        ("markdown", PICKER_TEXT),
        ("code", PICKER),
        ("code", PICKER_CALLBACK),
        ("code", PICKER_BUTTON),
        ("markdown", PAGE_TEXT),
        ("code", PAGE),
    ]


def notebook():
    """The notebook as a JSON-ready dict, with stable cell ids and no outputs."""

    def cell(number, kind, source):
        if kind == "markdown":  # Texts joined with their own blank lines get one.
            source = re.sub(r"\n{3,}", "\n\n", source)
        lines = source.strip("\n").splitlines(keepends=True)
        entry = {"cell_type": kind, "id": f"cell-{number:02d}", "metadata": {}}
        if kind == "code":
            entry.update(execution_count=None, outputs=[])
        entry["source"] = lines
        return entry

    return {
        "cells": [cell(n, kind, source) for n, (kind, source) in enumerate(cells())],
        "metadata": {
            "accelerator": "GPU",
            "colab": {"provenance": []},
            "kernelspec": {
                "display_name": "Python 3",
                "language": "python",
                "name": "python3",
            },
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def render():
    """The notebook file's text."""
    return json.dumps(notebook(), indent=1, ensure_ascii=False) + "\n"


def main(argv=None):
    """Write the notebook, or with --check say whether it is up to date."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    arguments = parser.parse_args(argv)
    text = render()
    if arguments.check:
        if NOTEBOOK.read_text() != text:
            print(f"{NOTEBOOK.name} is out of date: run python tools/make_notebook.py")
            return 1
        return 0
    NOTEBOOK.write_text(text)
    print(f"wrote {NOTEBOOK.name}")
    return 0


# ---------------------------------------------------------------------------------------
# The cells
# ---------------------------------------------------------------------------------------

INTRO = """
# Age regression on UTKFace

**The task:** infer a person's age from a portrait. We train convolutional networks from
scratch on the UTKFace faces, with Keras 3 and our own `tf.GradientTape` training loop, and
answer the assignment's three tasks and the optional one with numbers from real runs.

**To read it** as it stands: every answer is in the text below, with its key figures, and
[answers.md](answers.md) has the whole reasoning, every table and the command of every run.
The course network and its training step stand as code cells taken from `model.py` and
`train_loop.py`; everything else calls the project's modules.

**To run it in Colab:** choose *Runtime → Change runtime type → GPU*, then *Runtime → Run
all*. The notebook asks two things at the start: the project (one upload: the zip that
GitHub's *Code → Download ZIP* gives; nothing when `REPO_URL` is set), and permission to keep
the runs on your Google Drive. Nothing waits for you after that. The last section has a
button for a photo of your own, to use when you like.
"""

RESULTS_TEXT = """
The table and the figures are drawn from the runs kept in `results/` by `python
train_loop.py report`; the figures show the CPU preset's seed-0 run: its learning curve, and
its test predictions with the MAE by age. Every task's answer follows below; the commands
and all the tables are in {link}.
"""

MACHINE_WORDS = """
- **Mixed precision**: most of the network computed with 16-bit numbers (float16 on a GPU;
  *bfloat16*, a 16-bit format with float32's range, on processors and TPUs built for it),
  the weights and the ages kept in 32 bits: faster, and nearly as exact.
- **XLA**: TensorFlow's compiler, which fuses the operations of a training step into fewer,
  faster ones; it is on with a GPU.
- **Replica**: a copy of the model on one device (a GPU, or a core of a TPU). With several,
  each takes a share of every batch, and their gradients are summed before each update.
- **Straight-through ReLU**: an output that is `max(0, z)`, whose gradient in training
  passes below 0 as if the ReLU were not there (Task 2).
- **GPU preset**: what `train` runs with a GPU: a wider and deeper `AgeCNN` at 128 px,
  batches of 128, 60 epochs. Its time on a Colab GPU has never been measured; the notebook
  estimates it before training.
"""

PARAMETERS_TEXT = """
Edit these values in Colab if you need to; the defaults need no edit. With `QUICK = False`
the notebook trains the full models: the course network, then ours with the GPU preset when a
GPU is present, the CPU preset otherwise. `QUICK = True` runs every cell on a small subset
with small images in a few minutes, to try the notebook out. The environment variable
`AGE_REGRESSION_QUICK`, when it is set, decides instead (`1`: quick; the tests set it).
`TIME_BUDGET` (minutes) fits the number of epochs of our network and its learning-rate
schedule to the time you have, from the measured speed of this runtime.
"""

PARAMETERS = """
import os

QUICK = False  # True: a small run of a few minutes
if "AGE_REGRESSION_QUICK" in os.environ:  # The tests set it.
    QUICK = os.environ["AGE_REGRESSION_QUICK"] == "1"
DATA = os.environ.get("UTKFACE_DATA") or None  # a folder, archive or URL; None: the default
REPO_URL = ""  # Colab: a git URL to clone the project from; "": upload its zip
USE_DRIVE = True  # Colab: keep runs and the data on Google Drive (False: a disconnect loses them)
DRIVE_MOUNT = "/content/drive"  # where Colab mounts Google Drive
TIME_BUDGET = None  # minutes of training, e.g. 30; None: the preset's epochs
QUICK
"""

PROJECT_TEXT = """
The project's modules must sit in this folder or in a folder just below it (a clone, an
unzipped download): the first cell looks for them. The second fetches them when they are
missing. With `REPO_URL` set, it clones the project once. Otherwise, in Colab, **one**
upload dialog asks for the project: the zip that GitHub's *Code → Download ZIP* gives (it
holds a folder `NAME-main/`), or all its `.py` files at once. A rerun, or a rerun after
*Runtime → Restart*, finds them and asks nothing.
"""

FIND_PROJECT = """
import subprocess
from pathlib import Path

MODULES = (  # the project's modules that the notebook needs
{modules}
).split()


def find_project():
    \"\"\"The folder that holds every module: this one, or one just below it.\"\"\"
    for folder in [Path.cwd(), *sorted(p for p in Path.cwd().iterdir() if p.is_dir())]:
        if all((folder / f"{name}.py").is_file() for name in MODULES):
            return folder
"""

FETCH_PROJECT = """
if find_project() is None and REPO_URL:  # A clone, once: a rerun finds it.
    subprocess.run(["git", "clone", "--depth", "1", REPO_URL, "age_regression"], check=True)
elif find_project() is None and IS_COLAB:  # The one upload dialog.
    import zipfile
    from google.colab import files
    print("Upload the project: its zip (GitHub: Code → Download ZIP) or all its .py files.")
    for name in files.upload():
        if name.endswith(".zip"):
            zipfile.ZipFile(name).extractall()
PROJECT = find_project()
if PROJECT is None:
    raise FileNotFoundError(f"no project in {Path.cwd()}: upload its zip, or set REPO_URL")
os.chdir(PROJECT)  # Runs and downloads are kept here unless they go to the Drive.
sys.path.insert(0, str(PROJECT))
PROJECT
"""

INSTALL_TEXT = """
Then what is missing or too old is installed, *before* anything imports it: the lines of
`requirements.txt` that the notebook needs, each with the packages that provide it and its
lowest version. Colab already has all of it, so nothing is installed there.
"""

REQUIRED = """
import importlib.metadata
import re

# A line of requirements.txt -> (the packages that provide it, its lowest version)
REQUIRED = {
{required}
}
"""

INSTALL = """
def version(packages):
    \"\"\"(major, minor, patch) of the first of these packages installed; (0,): none is.\"\"\"
    for name in packages.split():
        try:
            found = importlib.metadata.version(name)
            return tuple(int(part) for part in re.findall(r"\\d+", found)[:3])
        except importlib.metadata.PackageNotFoundError:
            pass
    return (0,)


to_install = [spec for spec, (packages, least) in REQUIRED.items() if version(packages) < least]
if to_install:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *to_install], check=True)
to_install
"""

GPU_TEXT = """
**The GPU.** In Colab choose *Runtime → Change runtime type → GPU* (a T4 is enough). Training
then uses mixed precision and XLA by itself. Without a GPU everything still runs, with the
smaller CPU preset and more slowly: the cell below warns, it does not stop. A TPU runtime, or
several GPUs, also work: each batch is then split between the replicas (the TPU path has not
been tried on a real TPU).
"""

VERSIONS = """
import warnings

# devices before TensorFlow: it chooses Keras's backend and TensorFlow's fast oneDNN CPU
# kernels, which TensorFlow reads only when it is first imported.
import devices

import keras
import tensorflow as tf

print("TensorFlow", tf.__version__, "| Keras", keras.__version__, "| backend", keras.backend.backend())
print("oneDNN CPU kernels:", devices.onednn_enabled())
"""

GPU = """
gpus = tf.config.list_physical_devices("GPU")
print("GPUs:", gpus or "none")
if not gpus:
    warnings.warn("No GPU found: training runs on the CPU preset (smaller model, slower).")
"""

STORAGE_TEXT = """
**Storage.** Where the runs (model, checkpoints, history) and the downloaded data are kept.
In Colab they go to your Google Drive unless `USE_DRIVE = False`: a Colab runtime forgets
its files when it disconnects, and a run kept on the Drive resumes from its last finished
epoch. Colab asks for permission to use the Drive: the notebook's last question.
"""

STORAGE = """
import tempfile

ON_DRIVE = IS_COLAB and USE_DRIVE
if ON_DRIVE:
    from google.colab import drive

    drive.mount(DRIVE_MOUNT)
STORAGE = Path(DRIVE_MOUNT) / "MyDrive" / "age_regression" if ON_DRIVE else Path.cwd()
# A quick run starts afresh unless it is kept on Drive; a full run resumes from its folder.
RUNS = STORAGE / "runs" if ON_DRIVE or not QUICK else Path(tempfile.mkdtemp(prefix="quick-"))
DOWNLOADS = STORAGE / "data" if ON_DRIVE else None  # None: the Keras cache, ~/.keras
if IS_COLAB and not ON_DRIVE:
    print("USE_DRIVE is off: a disconnect loses the run and the downloaded data.")
RUNS
"""

IMPORTS = """
import dataclasses

import matplotlib.pyplot as plt
from IPython.display import Markdown

import evaluation
import metrics
import model
import photos
import plots
import train_loop
import utk_data
"""

SHOW_FIGURES_TEXT = """
The figures of the reported runs stand in the markdown as links to the project's `figures/`,
which GitHub and Jupyter show. Colab's markdown cannot reach those files, so in Colab the
code cell under each such text shows them.
"""

SHOW_FIGURES = """
from IPython.display import Image, display


def show_figures(*names):
    \"\"\"In Colab, the figures/ files that the markdown above shows on GitHub.\"\"\"
    if not IS_COLAB:
        return  # GitHub and Jupyter show the markdown's images.
    found = [Path("figures", name) for name in names if Path("figures", name).is_file()]
    if len(found) < len(names):
        print("Some figures are missing here (the zip has them all): see answers.md.")
    display(*[Image(str(path), width=720) for path in found])
"""

DATASET_TEXT = """
UTKFace: aligned and cropped 200×200 faces whose file names carry the labels,
`[age]_[gender]_[race]_[date&time].jpg.chip.jpg`. Unless `DATA` says otherwise, the archive is
downloaded once from a public mirror at a fixed revision and extracted; a download with fewer
than 20,000 labelled faces is refused. Files that cannot be used are skipped with a reason,
never silently.

The runs reported in [answers.md](answers.md) used a copy of 21,352 faces. The mirror's
archive is said to hold all 23,708; that was not checked face by face, and no hash is pinned.
A face's split depends on its file name alone, so the test split here holds the reported
test faces and about a tenth of the others: the numbers of this notebook will differ
somewhat from those of answers.md.
"""

DATASET = """
folder = utk_data.locate(DATA, download_dir=DOWNLOADS)
records, skipped = utk_data.load_records(folder)
print(utk_data.describe(records, skipped))
"""

SAMPLES_TEXT = """
Sample faces with their ages, and the age histogram: many babies and twenty-somethings, few
faces above 80.
"""

CONFIG_TEXT = """
The training settings of our network: one `TrainConfig`, as on the command line, filled from
the preset of this machine. The run folder is named after the settings, so that rerunning
this notebook with the same settings resumes the run, and other settings (a new
`TIME_BUDGET`, say) start a new one. The split is a hash of each file name (80/10/10 %), so
every model is compared on the same test faces.
"""

CONFIG = """
quick = dict(limit=3000, image_size=64, batch_size=32, epochs=4) if QUICK else {}
config = train_loop.TrainConfig(data=str(folder), time_budget=TIME_BUDGET, **quick)
config = train_loop.resolve_config(config)
config = dataclasses.replace(config, out=str(RUNS / train_loop.run_name(config)))
train_records, val_records, test_records = train_loop.prepare_data(config)
print(f"run folder: {config.out}")
len(train_records), len(val_records), len(test_records)
"""

COURSE_TEXT = """
The assignment's skeleton, filled in. The next cell is `CourseCNN` as it stands in
`model.py` (a test keeps the two the same), and it runs: the cells after it build the
network, list its feature maps for Task 1 and train it for a few steps. It is a
`keras.Model` subclass that builds its layers in `__init__` and runs them in `call`, through
`forward`, which can also note every layer's output for Task 1's table. Its output is a
one-unit dense layer with a **ReLU**, whose bias starts at the mean training age. Only the
lines that save and load a model are left out here (its registration with Keras and its
`get_config`); `model.py` keeps them.
"""

COURSE_HELPERS = """
# The helpers of model.py that the class calls: _apply runs a layer (and notes its output for
# Task 1), output_activation_function gives the output's activation, and _widening keeps an
# optional readout setting (None here).
from keras import layers

from model import _apply, _widening, output_activation_function
"""

COURSE = """
course = CourseCNN(image_size=200, initial_age=33.0)  # the course's 200 × 200 faces
course(model.example_inputs(course))  # Keras creates the weights on the first call.
course.summary()
"""

TASK1 = "Markdown(model.format_feature_map_table(model.feature_map_table(course)))"

STEP_TEXT = """
### The training step

The step at the heart of training, as it stands in `train_loop.py` (a test keeps the two the
same): the forward pass under a `tf.GradientTape` with `training=True` (dropout on), the
loss, its gradients, and the optimizer's update. `train_loop.train` runs these lines inside
`Trainer.update`, which adds what this notebook leaves to the module: mixed precision (the
loss scaled so that small gradients survive float16), replicas, and the average of the
weights.
"""

FEW_STEPS_TEXT = """
A few steps of the course network with that step, on the course's settings (200 px faces,
RMSprop with a learning rate of 1e-3, batches of 64, the L1 loss): each prints the loss of
its batch, the mean error in years.
"""

FEW_STEPS = """
optimizer = keras.optimizers.RMSprop(learning_rate=1e-3)
loss_fn = keras.losses.MeanAbsoluteError()  # the L1 loss: the mean error in years
batches = utk_data.make_dataset(train_records[:384], 200, 64, training=True)
for step, (images, ages) in enumerate(batches.take(6), start=1):
    loss = train_step(course, optimizer, loss_fn, images, ages)
    print(f"step {step}: loss {float(loss):.2f} years")
"""

COURSE_RUN_TEXT = """
### The course network, trained

`train_loop.train` trains the course network with the course's settings (200 px, RMSprop
1e-3, batch 64, 20 epochs, no augmentation), as a yardstick for ours. It builds `CourseCNN`
from `model.py` and runs the step above in its loop: it validates after every epoch, keeps
the weights of the best validation epoch, stops early when the validation error stops
improving, and writes a checkpoint after every epoch. **If the runtime disconnects, run the
notebook again**: with the runs on the Drive, each training resumes from its last finished
epoch and ends where an uninterrupted run would have ended.

It takes minutes on a GPU, and about 3 minutes on a 2-core CPU (its 20 epochs took 2.2–2.4
minutes on a 2-core Intel Xeon). With `QUICK`, it trains for one epoch on 800 faces.
"""

COURSE_RUN = """
course_quick = dict(limit=800, epochs=1) if QUICK else {}
course_config = train_loop.TrainConfig(arch="course_cnn", data=str(folder), **course_quick)
course_folder = RUNS / train_loop.run_name(course_config)
course_config = dataclasses.replace(course_config, out=str(course_folder))
course_run = train_loop.train(course_config)
"""

COURSE_RESULT = """
print(
    f"the course network: test MAE {course_run.metrics['test_mae']:.2f} years on "
    f"{course_run.metrics['test_images']:,} faces (best epoch {course_run.metrics['best_epoch']})"
)
"""

OURS_TEXT = """
`AgeCNN` is ours: residual blocks with batch normalisation, global average pooling and
dropout, ending in the same one-unit ReLU output. Its sizes come from the preset of this
machine, which `train_loop.make_model` reads; the input size is the model's own
`image_size`. On a CPU it is three small networks of one shape, trained together, each
held to the ages by its own loss; its age is the ReLU of their mean output (the table lists
the first network's layers, and the others in a row each). Its feature maps:
"""

OURS = """
ours = train_loop.make_model(config, initial_age=33.0)
print(f"{ours.count_params():,} parameters, input {ours.image_size} × {ours.image_size} × 3")
Markdown(model.format_feature_map_table(model.feature_map_table(ours)))
"""

TRAINING_TEXT = """
Our network trains in the same loop with its preset's settings: AdamW, a learning rate that
warms up and then decays along a cosine, augmented faces and the average of the weights;
after training come the test-time views and the widening (see *Words used here*).

First an estimate of how long the training will take on this runtime, from a few timed
steps (a rerun that resumes needs only the epochs that are left; early stopping may end it
sooner). The GPU preset's time on a Colab GPU has never been measured: this estimate is the
guide. Then the training itself, the longest cell of the notebook.
"""

ESTIMATE = """
estimate = train_loop.estimate_training(config, train_records, val_records)
print(
    f"about {estimate.minutes:.1f} minutes of training on this runtime "
    f"({estimate.seconds_per_step:.2f} s a step, {estimate.steps} steps an epoch, "
    f"{estimate.epochs} epochs)"
)
"""

TENSORBOARD_TEXT = """
The training's curves in TensorBoard, live while the next cell trains (in Colab; in quick
mode and elsewhere the cell says where they are): the training loss every 20 steps and, per
epoch, the training and validation MAE, the learning rate and the images a second.
"""

TENSORBOARD = """
LOGS = Path(config.out) / "logs"
if IS_COLAB and not QUICK:  # As the magics %load_ext tensorboard, %tensorboard --logdir LOGS
    get_ipython().run_line_magic("load_ext", "tensorboard")
    get_ipython().run_line_magic("tensorboard", f"--logdir {LOGS}")
else:
    print(f"TensorBoard curves in {LOGS}: tensorboard --logdir {LOGS}")
"""

EVALUATION_TEXT = """
The metrics `train` computed on the test split with the best weights, beside the simplest
baseline: predicting the median training age for every face. The presets validate and save
the average of the weights, and each face's age is averaged over its test-time views; the
second line shows what the views changed ([EXPERIMENTS.md](EXPERIMENTS.md) has both
measured over three seeds).
"""

EVALUATION = """
baseline = metrics.median_baseline(train_records, test_records)
print(
    f"test MAE {run.metrics['test_mae']:.2f} years, RMSE {run.metrics['test_rmse']:.2f}, "
    f"on {run.metrics['test_images']:,} faces (best epoch {run.metrics['best_epoch']})"
)
print(f"one image per face, no views: test MAE {run.metrics['test_mae_no_tta']:.2f}")
print(f"predicting the median age ({baseline['median_age']:g}) for everyone: MAE {baseline['mae']:.2f}")
"""

PLOTS = """
plots.plot_evaluation(run.test.true, run.test.predicted)
plt.show()
"""

WORST = """
plots.plot_worst(run.test.records, run.test.true, run.test.predicted)
plt.show()
"""

SANITY_TEXT = """
A loose sanity check: the model must clearly beat the median predictor (about 15 years on the
full test split), and a full run without a short time budget must beat the course network
(about 7 years).
"""

SANITY = """
assert run.metrics["test_mae"] < 0.85 * baseline["mae"], run.metrics["test_mae"]
if not QUICK and TIME_BUDGET is None:
    assert run.metrics["test_mae"] < 7.0, run.metrics["test_mae"]
"""

REPORTED_TEXT = """
In Colab, the figures of *Results at a glance*: the reported CPU preset's run, to compare
with this one.
"""

TASK2_TEXT = """
The cell below counts this run's test faces predicted exactly 0 and below 0 (each face alone,
without its other views).
"""

TASK2 = """
single = evaluation.predict_records(run.model, run.test.records, config.batch_size, tta=False)
int((single.predicted == 0).sum()), int((single.predicted < 0).sum()), len(single.predicted)
"""

OPTIONAL_TEXT = "The multi-task model, one network, has two outputs:"

OPTIONAL = """
multi_config = dataclasses.replace(config, gender_head=True, members=1)
multi = train_loop.make_model(multi_config, initial_age=33.0)
{name: tuple(output.shape) for name, output in multi(model.example_inputs(multi)).items()}
"""

PHOTO_TEXT = """
Without a photo of yours, the cells below show a test face: the astronaut Eileen Collins, a
NASA portrait in the public domain that ships with scikit-image (Colab has it), or, without
scikit-image, a face of the test split. Outside Colab, set the environment variable
`AGE_PHOTO` to a picture's path to see it instead.
"""

SHOW_AGE = """
import base64
import html
import io

from IPython.display import HTML


def age_figure(path):
    \"\"\"A picture, its faces framed as UTKFace frames them, and their ages; the rows.\"\"\"
    rows, skipped = photos.predict_paths(run.model, [str(path)], tta=run.config.tta, crop="auto")
    return photos.plot_photo(photos.read_photo(path), rows), rows or skipped
"""

TEST_FACE = """
try:  # Eileen Collins, a NASA portrait in the public domain that ships with scikit-image
    from skimage import data

    TEST_FACE = Path(tempfile.gettempdir()) / "astronaut.png"
    plt.imsave(TEST_FACE, data.astronaut())
except ImportError:  # without scikit-image: a face of the test split
    TEST_FACE = run.test.records[0].path
figure, found = age_figure(os.environ.get("AGE_PHOTO") or TEST_FACE)
plt.show()
found
"""

PICKER_TEXT = """
**A photo of your own, whenever you like.** In Colab the last cell shows a button: choose a
photo, and its faces and their ages appear under the button. Nothing waits for it, so *Run
all* ends here. Your browser shrinks the photo to at most 1,600 pixels a side and sends it
to this runtime only, where the model reads it.
"""

PICKER = '''
PICKER = """
<input type="file" accept="image/*" id="age-photo"><div id="age-result"></div>
<script>
document.getElementById("age-photo").onchange = async (event) => {
  const picture = await createImageBitmap(event.target.files[0]);
  const scale = Math.min(1, 1600 / Math.max(picture.width, picture.height));
  const canvas = document.createElement("canvas");
  [canvas.width, canvas.height] = [picture.width * scale, picture.height * scale];
  canvas.getContext("2d").drawImage(picture, 0, 0, canvas.width, canvas.height);
  const photo = canvas.toDataURL("image/jpeg", 0.92);
  const answer = await google.colab.kernel.invokeFunction("age_photo", [photo], {});
  document.getElementById("age-result").innerHTML = answer.data["text/html"];
};
</script>
"""
'''

PICKER_CALLBACK = """
def age_photo(data_url):
    \"\"\"The button's callback: the photo's faces and their ages, as HTML for the page.\"\"\"
    path = Path(tempfile.gettempdir()) / "my_photo.jpg"
    path.write_bytes(base64.b64decode(data_url.split(",", 1)[1]))
    try:
        figure, _ = age_figure(path)
    except Exception as error:  # Say on the page why the picture could not be read.
        return HTML(f"<p>{html.escape(str(error))}</p>")
    png = io.BytesIO()
    figure.savefig(png, format="png", bbox_inches="tight")
    plt.close(figure)
    return HTML(f'<img src="data:image/png;base64,{base64.b64encode(png.getvalue()).decode()}">')
"""

PICKER_BUTTON = """
if IS_COLAB:  # The button calls age_photo when a photo is chosen; nothing waits for it.
    from google.colab import output

    output.register_callback("age_photo", age_photo)
    display(HTML(PICKER))
else:
    print("In Colab a button here takes a photo of your own; elsewhere set AGE_PHOTO.")
"""

PAGE_TEXT = """
**Live, with the camera.** The cell below serves the project's page from this runtime (the
`serve` command of the README): upload a photo or start the camera, and each face is boxed
with its age and the error the model made at that age on its test faces. In Colab it opens
in the notebook; nothing waits for it, and nothing is kept.
"""

PAGE = """
import serve

server, address = serve.start(Path(run.config.out) / "model.keras")
if IS_COLAB:  # The page, in a frame of this notebook; the camera asks your permission.
    from google.colab import output

    output.serve_kernel_port_as_iframe(server.server_address[1], height=900)
else:
    print("the page:", address)
"""


if __name__ == "__main__":
    sys.exit(main())
