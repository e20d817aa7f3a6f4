"""Write age_regression.ipynb from the cells below (the notebook is committed without outputs).

    python tools/make_notebook.py            # rewrite the notebook
    python tools/make_notebook.py --check    # exit 1 if the notebook differs from this source

The Task 1 table comes from `model.feature_map_table`, the versions the notebook installs
from requirements.txt, and the code it shows (the course network, the training step) from
the modules' source, so that none of them is typed twice.
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
    "opencv-python-headless": (
        "opencv-python-headless",
        "opencv-python",
        "opencv-contrib-python",
        "opencv-contrib-python-headless",
    ),
}


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


def source_text(code, omit=()):
    """The source of a class or function of our modules, dedented, without the methods
    named in `omit` (with their decorators)."""
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
    for node in methods:
        if node.name in omit:
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)]) - 1
            # The blank line that separates the method from the one above goes with it.
            if first > 0 and not lines[first - 1].strip():
                first -= 1
            dropped.update(range(first, node.end_lineno))
    kept = [line for number, line in enumerate(lines) if number not in dropped]
    return "\n".join(kept).strip("\n") + "\n"


def python_block(text):
    """Code as a fenced block of markdown, so that it reads unexecuted on GitHub."""
    return f"```python\n{text}```"


def shown_code():
    """{name: source text} of the code the notebook shows, from the modules."""
    model, train_loop = project("model"), project("train_loop")
    return {
        "course": source_text(model.CourseCNN, omit=("get_config",)),
        "train_step": source_text(train_loop.Trainer.update),
    }


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


def cells():
    """The notebook as a list of ("markdown" | "code", source)."""
    return with_tables(written_cells())


def written_cells():
    """The cells as written below, before the tables are filled in."""
    return setup_cells() + model_and_training_cells() + answer_cells()


def setup_cells():
    """Parameters, setup, GPU support and the dataset."""
    install_table = "\n".join(
        f"    {name!r}: ({spec!r}, {CHECKED[name]!r}),"
        for name, spec in requirements().items()
    )
    return [
        ("markdown", INTRO),
        ("markdown", "## 1. Parameters\n\n" + PARAMETERS_TEXT),
        ("code", PARAMETERS),
        ("markdown", "## 2. Setup\n\nAre we in Colab?"),
        ("code", 'import sys\n\nIS_COLAB = "google.colab" in sys.modules\nIS_COLAB'),
        ("markdown", MODULES_TEXT),
        ("code", MODULES),
        ("markdown", INSTALL_TEXT),
        ("code", INSTALL.replace("{table}", install_table)),
        ("markdown", "## 3. GPU support\n\n" + GPU_TEXT),
        ("code", VERSIONS),
        ("code", GPU),
        ("markdown", STORAGE_TEXT),
        ("code", STORAGE),
        ("markdown", "Our modules and matplotlib, then a seed."),
        ("code", IMPORTS),
        ("code", "keras.utils.set_random_seed(42)"),
        ("markdown", "## 4. Dataset\n\n" + DATASET_TEXT),
        ("code", DATASET),
        ("markdown", SAMPLES_TEXT),
        ("code", "utk_data.plot_summary(records, samples=16)\nplt.show()"),
        ("markdown", CONFIG_TEXT),
        ("code", CONFIG),
    ]


def model_and_training_cells():
    """The model (with Task 1), the training of both networks and the evaluation."""
    shown = {name: python_block(text) for name, text in shown_code().items()}
    return [
        ("markdown", "## 5. Keras model\n\n" + MODEL_TEXT + "\n" + shown["course"]),
        ("code", COURSE),
        ("markdown", TASK1_TEXT.replace("{table}", course_table())),
        ("code", TASK1),
        ("markdown", OURS_TEXT),
        ("code", OURS),
        ("markdown", "## 6. Training\n\n" + TRAINING_TEXT + "\n" + shown["train_step"]),
        ("markdown", RUN_TEXT),
        ("code", COURSE_RUN),
        ("code", COURSE_RESULT),
        ("markdown", OUR_RUN_TEXT),
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
    ]


def answer_cells():
    """Tasks 2 and 3, the optional task and a photo of your own."""
    return [
        ("markdown", "## 8. Task 2: the ReLU output\n" + TASK2_TEXT),
        ("code", TASK2),
        ("markdown", "## 9. Task 3: age as classification\n" + TASK3_TEXT),
        ("markdown", "## 10. Optional task: gender, race and age\n" + OPTIONAL_TEXT),
        ("code", OPTIONAL),
        ("markdown", "## 11. Your own photo\n\n" + PHOTO_TEXT),
        ("code", PHOTO),
    ]


def notebook():
    """The notebook as a JSON-ready dict, with stable cell ids and no outputs."""

    def cell(number, kind, source):
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

**The task:** infer a person's age from a portrait. We train convolutional networks on the
UTKFace faces with Keras 3 and our own `tf.GradientTape` training loop, and answer the
assignment's three tasks (and the optional one) with numbers from real runs.

The code lives in modules that this notebook imports and calls: `utk_data.py` (the data),
`model.py` (the networks) and `train_loop.py` (the training loop), beside smaller ones for
the settings, a run's files, the readout of a saved model, evaluation, reports, photos and
export (the README lists them). The model class and the training step are shown below as
they stand in the modules. [answers.md](answers.md) holds the full evidence for every answer: the
commands, the tables and the figures.

**In Colab:** choose *Runtime → Change runtime type → GPU*, then *Runtime → Run all*. The setup
cell asks you to upload the modules (or clones them once when you set `REPO_URL`), and
keeps the data and the run on your Google Drive, so that rerunning after a disconnect
resumes the training.

**Words used below.** *MAE*: mean absolute error in years, on the test faces. *Seed*: fixes a
run's initial weights, data order and augmentation; "± " is the spread over three seeds.
*Interval*: the 95 % interval of a difference, resampling the seeds and the test faces; a
difference is *measurable* when it excludes 0. *Preset*: the settings `train` picks for this
machine (a smaller network on a CPU). *Short budget*: 64 px for 8 epochs, so that three seeds
of every variant could be trained. *Test-time views*: each face is predicted as it is and
zoomed in on its centre by 6 % and 12 % (as training crops it), each view also mirrored,
and the six ages averaged. *Widening*: after training, every predicted age is moved away
from the middle ages by a few per cent, a factor fitted on the validation faces so that
every decade of age counts the same: fewer old faces are predicted too young.
"""

PARAMETERS_TEXT = """
Edit these values in Colab if you need to; the defaults need no edit. With `QUICK = False`
the notebook trains the full models: the course network, then ours with the GPU preset when a
GPU is present, the CPU preset otherwise. `QUICK = True` runs every cell on a small subset
with small images in a minute or two, to try the notebook out. The environment variable
`AGE_REGRESSION_QUICK`, when it is set, decides instead (`1`: quick; the tests set it).
`TIME_BUDGET` (minutes) fits the number of epochs of our network and its learning-rate
schedule to the time you have, from the measured speed of this machine.
"""

PARAMETERS = """
import os

QUICK = False  # True: a small run of a minute or two
if "AGE_REGRESSION_QUICK" in os.environ:  # The tests set it.
    QUICK = os.environ["AGE_REGRESSION_QUICK"] == "1"
DATA = os.environ.get("UTKFACE_DATA") or None  # a folder, archive or URL; None: the default
REPO_URL = ""  # Colab: a git URL of this project to clone the modules from; "": upload them
USE_DRIVE = True  # Colab: keep runs and the data on Google Drive (False: a disconnect loses them)
DRIVE_MOUNT = "/content/drive"  # where Colab mounts Google Drive
TIME_BUDGET = None  # minutes of training, e.g. 30; None: the preset's epochs
QUICK
"""

MODULES_TEXT = """
The project's modules must sit beside the notebook. In Colab, when they are missing, an
upload dialog asks for them (every `.py` file of the project's top folder, from a copy of
this project on your computer): select them all at once in the dialog, which takes several
files. With `REPO_URL` set, the project is cloned once into `age_regression/`. A rerun,
or a rerun after *Runtime → Restart*, reuses what is there.
"""

MODULES = """
import subprocess
from pathlib import Path

MODULE_FILES = [
    "utk_data.py", "model.py", "train_loop.py", "config.py", "runs.py", "readout.py",
    "evaluation.py", "metrics.py", "plots.py", "report.py", "photos.py", "export.py",
    "devices.py",
]
CLONE = Path("age_regression")  # where REPO_URL is cloned


def missing_modules():
    return [name for name in MODULE_FILES if not Path(name).is_file()]


if missing_modules() and REPO_URL:
    if not (CLONE / ".git").is_dir():
        subprocess.run(["git", "clone", "--depth", "1", REPO_URL, str(CLONE)], check=True)
    else:
        print(f"reusing the clone in {CLONE.resolve()}")
    os.chdir(CLONE)
elif missing_modules() and IS_COLAB:
    from google.colab import files

    while missing_modules():
        print("Upload these files from your copy of the project:", ", ".join(missing_modules()))
        if not files.upload():
            break  # The dialog was cancelled.
if missing_modules():
    where = "upload them when asked, or set REPO_URL" if IS_COLAB else "open the notebook beside them"
    raise FileNotFoundError(f"{', '.join(missing_modules())} missing in {Path.cwd()}: {where}")
sys.path.insert(0, str(Path.cwd()))
print("modules in", Path.cwd())
"""

INSTALL_TEXT = """
Install what is missing or too old, *before* anything imports it (the versions are those of
`requirements.txt`). Colab already has all of it, so nothing is installed there.
"""

INSTALL = """
import importlib.metadata
import re

# requirement -> (what pip installs, the distributions that provide it)
REQUIRED = {
{table}
}


def version_of(distributions):
    for distribution in distributions:
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            pass
    return None


def numbers(version):
    return tuple(int(part) for part in re.findall(r"\\d+", version)[:2])


to_install = []
for spec, distributions in REQUIRED.values():
    version = version_of(distributions)
    minimum = re.search(r">=([\\d.]+)", spec).group(1)
    if version is None or numbers(version) < numbers(minimum):
        to_install.append(spec)
if to_install:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *to_install], check=True)
to_install
"""

GPU_TEXT = """
In Colab choose *Runtime → Change runtime type → GPU* (a T4 is enough). Training then uses
mixed precision and XLA by itself. Without a GPU everything still runs, with a smaller model
and more slowly; the cell below warns, it does not stop. A *TPU* runtime also works: the
training then spreads its batches over the TPU's cores (`tf.distribute.TPUStrategy`, in
bfloat16), with the GPU preset's network; this path has not been tried on a real TPU. With
several GPUs, each takes a share of every batch (`MirroredStrategy`).
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
Where the run (model, checkpoints, history) and the downloaded data archive are kept. In Colab
they go to your Google Drive unless `USE_DRIVE = False`: a Colab runtime forgets its files
when it disconnects, and a run kept on Drive resumes from its last finished epoch. Colab asks
for permission to mount the Drive.
"""

STORAGE = """
import tempfile

ON_DRIVE = IS_COLAB and USE_DRIVE
if ON_DRIVE:
    from google.colab import drive

    drive.mount(DRIVE_MOUNT)
    STORAGE = Path(DRIVE_MOUNT) / "MyDrive" / "age_regression"
    print("runs and the data archive are kept on Google Drive, in", STORAGE)
else:
    STORAGE = Path.cwd()
    if IS_COLAB:
        print("USE_DRIVE is off: a disconnect loses the run and the downloaded data.")
# A quick run starts afresh unless it is kept on Drive; a full run resumes from its folder.
RUNS = STORAGE / "runs" if ON_DRIVE or not QUICK else Path(tempfile.mkdtemp(prefix="quick-"))
DOWNLOADS = STORAGE / "data" if ON_DRIVE else None  # None: the Keras cache, ~/.keras
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

DATASET_TEXT = """
UTKFace: aligned and cropped 200×200 faces whose file names carry the labels,
`[age]_[gender]_[race]_[date&time].jpg.chip.jpg`. Unless `DATA` says otherwise, the archive is
downloaded once from a public mirror at a fixed revision and extracted. Files that cannot be
used are skipped with a reason, never silently.

The mirror holds the full set of 23,708 faces. The runs reported in
[answers.md](answers.md) used a copy of 21,352 of them, the rest kept aside for an
independent evaluation. A face's split depends on its file name alone, so the test split here
holds the same test faces and about a tenth of the others as well: the numbers of this
notebook will differ somewhat from those of answers.md.
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
The training settings: one `TrainConfig`, as on the command line, filled from the preset of
this machine. The run folder is named after the settings, so that rerunning this notebook with
the same settings resumes the run, and other settings (a new `TIME_BUDGET`, say) start a new
one. The split is a hash of each file name (80/10/10 %), so every model is compared on the
same test faces.
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

MODEL_TEXT = """
The assignment's skeleton, filled in: `CourseCNN` is the course's network, a `keras.Model`
subclass that builds its layers in `__init__` and runs them in `call` (through `forward`, which
can also note every layer's output for Task 1). Its output is a one-unit dense layer with a
**ReLU**, whose bias starts at the mean training age. Here is the class as it stands in
`model.py` (without its `get_config`, which lets a saved model be loaded again):
"""

COURSE = """
course = train_loop.make_model(train_loop.TrainConfig(arch="course_cnn"), initial_age=33.0)
course.summary()
"""

TASK1_TEXT = """
### Task 1: the sizes of the input, every feature map and the output

**The input is 200 × 200 × 3; conv1 gives 49 × 49 × 8, conv2 12 × 12 × 16; flattening gives
2,304 values, the dense layers 128 and 64, and the output is 1 value, the age.**

A convolution with a `k × k` kernel, stride `s` and padding `p` maps a side of `n` pixels to
`⌊(n + 2p − k) / s⌋ + 1`. The course network uses 5 × 5 kernels, stride 4 and no padding
(`"valid"`), so:

- conv1: `⌊(200 − 5) / 4⌋ + 1 = ⌊48.75⌋ + 1 = 49`, a feature map of **49 × 49 × 8**;
- conv2: `⌊(49 − 5) / 4⌋ + 1 = 11 + 1 = 12`, a feature map of **12 × 12 × 16**;
- flattening gives 12 · 12 · 16 = **2,304** values, the dense layers **128** and **64**, and
  the **output** is **1** value, the age.

Parameters: a convolution has `k · k · c_in · c_out + c_out` (conv1: 5 · 5 · 3 · 8 + 8 = 608),
a dense layer `n_in · n_out + n_out` (dense1: 2,304 · 128 + 128 = 295,040). The whole table,
computed from the model by `model.feature_map_table` (the cell below computes it again):

{table}
"""

TASK1 = "Markdown(model.format_feature_map_table(model.feature_map_table(course)))"

OURS_TEXT = """
`AgeCNN` is ours: residual blocks with batch normalisation, global average pooling and
dropout, ending in the same one-unit ReLU output. Its sizes come from the preset of this
machine (a smaller one on a CPU), which `train_loop.make_model` reads; the input size is
the model's own `image_size`. Its feature maps:
"""

OURS = """
ours = train_loop.make_model(config, initial_age=33.0)
print(f"{ours.count_params():,} parameters, input {ours.image_size} × {ours.image_size} × 3")
Markdown(model.format_feature_map_table(model.feature_map_table(ours)))
"""

TRAINING_TEXT = """
Our own loop, `train_loop.train`, not `fit()`. Here is its training step: the forward pass runs
under a `tf.GradientTape` with `training=True` (dropout on, batch normalisation learning from
the batch), the L1 loss is scaled for mixed precision, and the optimizer (AdamW with warm-up
and cosine decay) applies the gradients:
"""

RUN_TEXT = """
Around that step, `train` validates after every epoch, keeps the weights of the best
validation epoch, stops early when the validation error stops improving, and writes a
checkpoint after every epoch. **If the runtime disconnects, run the notebook again**: with the
runs on Drive, each training cell resumes from the last finished epoch and ends where an
uninterrupted run would have ended.

### The course network first

The course network with the course's settings (200 px, RMSprop 1e-3, batch 64, 20 epochs, no
augmentation), as a yardstick for ours. It takes minutes on a GPU, and about 3 minutes of
training on a 2-core CPU (its 20 epochs took 2.2–2.4 minutes on a 2-core Intel Xeon).
With `QUICK`, it trains for one epoch on 800 faces.
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

OUR_RUN_TEXT = """
### Our network

First an estimate of how long its training will take on this runtime, from a few timed
steps (a rerun that resumes needs only the epochs that are left; early stopping may end it
sooner). Then the training itself, the longest cell of the notebook.
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

ESTIMATE = """
estimate = train_loop.estimate_training(config, train_records, val_records)
print(
    f"about {estimate.minutes:.1f} minutes of training on this runtime "
    f"({estimate.seconds_per_step:.2f} s a step, {estimate.steps} steps an epoch, "
    f"{estimate.epochs} epochs)"
)
"""

EVALUATION_TEXT = """
The metrics `train` computed on the test split with the best weights, beside the simplest
baseline: predicting the median training age for every face. The presets validate and save
an average of the weights, and each face's age is averaged over its test-time views; the
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

TASK2_TEXT = """
**A ReLU output works because an age is never negative and `max(0, z)` gives exactly the
non-negative numbers, unchanged above 0. Its advantage over a linear output: it never
predicts a negative age, and clipping a negative prediction to 0 always moves it closer to
the truth. Measured over three seeds each, the advantage is small: on the course network
both outputs did equally well (+0.00 [−0.20, +0.19] years); on ours the linear output was
measurably better (−0.17 [−0.28, −0.06]), because the ReLU's flat zero stops learning.**

- **Why it works.** Above 0 the ReLU is the identity: it neither squashes nor saturates the
  ages, and the L1 loss's gradient is ±1 at every age.
- **The advantage.** `|0 − age| < |negative − age|` for every age ≥ 0: the constraint is
  built into the model instead of being learned.
- **The risk.** Where `z < 0` the gradient is 0: such a face teaches the output nothing.
  After 8 epochs the plain ReLU of our network held 1,637 of its 17,019 training faces at
  exactly 0, nearly all children. Its bias starts at the mean training age (about 33).
- **Without the dead zone.** Our network keeps `max(0, z)` as its output but lets the
  gradient through below 0 while training (`--relu-gradient straight_through`): a face
  predicted 0 still pulls `z` up. It then trains as a linear output does and clips its
  rare negative ages: −0.21 [−0.32, −0.10] against the plain ReLU, 4 ± 2 faces at 0
  instead of 189 ± 6.

Measured with `python train_loop.py train --arch course_cnn --seed 0 --out runs/course`
(the course network, 200 px, 20 epochs) and `python train_loop.py train --epochs 8
--image-size 64 --seed 0 --out runs/e8_relu` (ours at the short budget), each also with
`--output-activation linear` and seeds 1 and 2; tables and curves in
[answers.md](answers.md#task-2-why-a-relu-output-works-here-and-its-advantage-over-a-linear-output).
This run's test faces at exactly 0 and below 0 (each face alone, without its other views):
"""

TASK2 = """
single = evaluation.predict_records(run.model, run.test.records, config.batch_size, tta=False)
int((single.predicted == 0).sum()), int((single.predicted < 0).sum()), len(single.predicted)
"""

TASK3_TEXT = """
**For: a softmax over the ages 0–116 gives a distribution (its uncertainty, not one number),
a cross-entropy gradient that shrinks near the target, and, with soft targets, tolerance for
noisy labels. Against: plain classes ignore the order of ages, 117 classes split the data
thinly, and cross-entropy does not measure years of error. Measured at the short budget,
three seeds each, the classifier read out as an expected value was best: −0.52 [−0.67, −0.38]
years against the L1 regression.**

For:
- A distribution can say "25 or 35" and how sure it is; its expected value turns it back into
  one age (DEX: Rothe, Timofte and Van Gool, 2015).
- The L1 loss's gradient is ±1 however close a prediction is; cross-entropy trains 117
  outputs per face, and its gradient shrinks near the target.
- Noisy labels (801 faces labelled 35 against 373 labelled 34): with soft targets, a Gaussian
  over the neighbouring ages, a label a few years off costs little; with one-hot classes, as
  `--head classification` trains, 34 is as wrong as 70.

Against:
- Classes ignore the order: 30 for 31 costs as much cross-entropy as 30 for 70.
- Thin classes: at least 132 faces for each age from 20 to 35, 0 to 17 for each over 90.
- The argmax jumps between neighbours; only an expected-value or median readout competes,
  which brings back the regression view.

A middle way keeps the order: ordinal regression (CORAL: Cao, Mirjalili and Raschka, 2020),
measurably better than the ReLU regression (−0.23 [−0.37, −0.08]). The classifier's 50 % and
90 % intervals held 52.0 ± 0.3 % and 91.1 ± 0.2 % of the true ages; its most confident quarter
of faces had a MAE of 2.70 ± 0.06, its least 9.05 ± 0.20. Measured with
`python train_loop.py train --epochs 8 --image-size 64 --seed 0 --head classification --out
runs/e8_classification` and `--head ordinal`, seeds 0–2; [answers.md](answers.md#task-3-age-as-classification--for-and-against) has the tables.
"""

OPTIONAL_TEXT = """
**Gender and race given as inputs lowered the test MAE measurably, by 0.15 years
(−0.15 [−0.28, −0.04]), but only with the true labels; given "unknown", as for a new photo,
they did not help (−0.02 [−0.15, +0.11]). Predicting gender as a second output made no
measurable difference (−0.09 [−0.22, +0.03]), though it would need nothing but the photo.**

- **(i) Multi-task:** a second output predicts gender (`--gender-head`), so that the shared
  features learn from both labels. At prediction time it needs nothing but the photo.
- **(ii) Attributes as inputs:** gender and race enter the network as learned embeddings next
  to the image features (`--attribute-inputs`). This helps only when someone gives them for
  the photo; "unknown" has its own embedding, but almost every training face has both labels,
  so the network has barely seen it.

Measured at the short budget, three seeds each: `python train_loop.py train --epochs 8
--image-size 64 --seed 0 --gender-head --out runs/e8_gender_head`, the same with
`--attribute-inputs`, and seeds 1 and 2; tables in
[answers.md](answers.md#optional-task-gender-race-and-age).

The multi-task model has two outputs:
"""

OPTIONAL = """
multi = train_loop.make_model(dataclasses.replace(config, gender_head=True), initial_age=33.0)
{name: tuple(output.shape) for name, output in multi(model.example_inputs(multi)).items()}
"""

PHOTO_TEXT = """
Any photo with a face works: `predict` finds the faces with OpenCV's frontal-face detector
and frames each one as UTKFace frames its faces (a picture that already is a tight face
crop, like UTKFace's, is taken as it is). In Colab an upload button appears (cancel it to use
a test face); elsewhere set the environment variable `AGE_PHOTO` to a path. The detector
looks for frontal, upright faces: a profile, a strongly tilted head or a tiny face may not
be found.
"""

PHOTO = """
PHOTO = os.environ.get("AGE_PHOTO", "")
if IS_COLAB and not PHOTO:
    from google.colab import files

    uploaded = [name for name in files.upload() if name.lower().endswith(utk_data.IMAGE_SUFFIXES)]
    PHOTO = uploaded[0] if uploaded else ""
PHOTO = PHOTO or str(run.test.records[0].path)
rows, skipped = photos.predict_paths(run.model, [PHOTO], tta=run.config.tta, crop="auto")
photos.plot_photo(photos.read_photo(PHOTO), rows)
plt.show()
rows or skipped
"""


if __name__ == "__main__":
    sys.exit(main())
