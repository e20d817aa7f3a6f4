"""The notebook as a grader reads it unexecuted, on GitHub: what it shows, where each part
comes from, and how long its cells are.

nbmake runs the notebook in place (pytest.ini); tests/test_colab.py runs it as Colab does.
"""

import importlib.util
import json
import re
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import model
import train_loop

REPOSITORY = Path(__file__).resolve().parents[1]
NOTEBOOK = REPOSITORY / "age_regression.ipynb"
ANSWERS = (REPOSITORY / "answers.md").read_text()
CELLS = json.loads(NOTEBOOK.read_text())["cells"]


def _load_generator():
    spec = importlib.util.spec_from_file_location(
        "make_notebook", REPOSITORY / "tools" / "make_notebook.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GENERATOR = _load_generator()


def _source(cell):
    return "".join(cell["source"])


def _code_cells():
    return [_source(cell) for cell in CELLS if cell["cell_type"] == "code"]


def _section(markdown, heading):
    """The markdown from a heading up to the next heading of the same or a higher level."""
    start = markdown.index(heading)
    body = markdown.index("\n", start)
    level = len(heading.split(" ")[0])
    following = re.search(rf"^#{{1,{level}}} ", markdown[body:], re.M)
    return markdown[start : body + following.start() if following else len(markdown)]


def _answers_headings():
    return re.findall(r"^## (.+)$", ANSWERS, re.M)


# --- made by its generator, from the modules, answers.md and results/ --------------------


def test_the_notebook_is_what_its_generator_writes():
    assert NOTEBOOK.read_text() == GENERATOR.render()


def test_the_notebook_is_committed_without_outputs():
    assert all(not cell.get("outputs") for cell in CELLS if cell["cell_type"] == "code")


def test_the_course_network_and_the_train_step_are_code_cells_of_the_modules_source():
    # They run in the notebook, and are the very text of the modules: never kept twice.
    course = GENERATOR.source_text(model.CourseCNN, ("get_config",), decorators=False)
    step = GENERATOR.source_text(train_loop.train_step)
    cells = _code_cells()
    assert sum(cell.endswith("\n" + course.rstrip("\n")) for cell in cells) == 1
    assert step.rstrip("\n") in cells
    for line in ("class CourseCNN(keras.Model):", "def __init__", "def forward"):
        assert line in course
    assert "def get_config" not in course and "with tf.GradientTape() as tape:" in step
    # The notebook uses both on the course network before train_loop.train trains it.
    uses = [i for i, cell in enumerate(cells) if "train_step(course," in cell]
    trains = [
        i for i, cell in enumerate(cells) if "train_loop.train(course_config)" in cell
    ]
    assert uses and trains and uses[0] < trains[0]
    assert any("CourseCNN(image_size=200" in cell for cell in cells)


def test_the_shown_step_is_the_trainers_update_without_its_additions():
    """One step of train_step and one of Trainer.update, from the same weights on the same
    batch (the course settings, float32, one device), give the same weights."""
    config = train_loop.resolve_config(
        train_loop.TrainConfig(arch="course_cnn", image_size=48, precision="float32")
    )
    models = []
    for _ in range(2):  # The same initial weights and dropout seeds.
        keras.utils.set_random_seed(3)
        models.append(model.build_model("course_cnn", image_size=48, initial_age=33.0))
    trainer = train_loop.Trainer(
        models[0], train_loop.make_optimizer(config, 10), config
    )
    optimizer = train_loop.make_optimizer(config, 10)
    generator = np.random.default_rng(0)
    images = tf.constant(generator.random((8, 48, 48, 3), np.float32))
    ages = tf.constant(generator.integers(1, 90, (8, 1)).astype(np.float32))
    loss_fn = keras.losses.MeanAbsoluteError()
    for _ in range(2):
        expected = trainer.update(images, ages)
        loss = train_loop.train_step(models[1], optimizer, loss_fn, images, ages)
        np.testing.assert_allclose(float(loss), float(expected), rtol=1e-5)
    for mine, theirs in zip(models[1].weights, models[0].weights):
        np.testing.assert_allclose(mine.numpy(), theirs.numpy(), atol=1e-5)


def test_shown_source_leaves_out_only_what_is_asked():
    text = GENERATOR.source_text(model.CourseCNN, omit=("get_config",))
    assert text.startswith("@keras.saving.register_keras_serializable")
    assert "\n\n\n" not in text and text.endswith(
        "return self.forward(inputs, training)\n"
    )
    bare = GENERATOR.source_text(model.CourseCNN, ("get_config",), decorators=False)
    assert bare == text.split("\n", 1)[1]
    with pytest.raises(ValueError, match="no method"):
        GENERATOR.source_text(model.CourseCNN, omit=("fit_to_the_course",))


def test_task1_markdown_agrees_with_the_model(notebook_markdown):
    task1 = _section(notebook_markdown, "### Task 1")
    course = train_loop.make_model(train_loop.TrainConfig(arch="course_cnn"))
    assert model.format_feature_map_table(model.feature_map_table(course)) in task1
    shapes = [row.shape for row in model.feature_map_table(course)]
    for size in ("200 × 200 × 3", "49 × 49 × 8", "12 × 12 × 16", "2,304", "128", "64"):
        assert size in task1
    assert shapes[1] == (49, 49, 8) and shapes[2] == (12, 12, 16)


def test_every_answer_is_drawn_from_answers_md(notebook_markdown):
    """answers.md is where an answer is written: the notebook shows each section's opening
    verdict as it stands there, its figures, and a link to the whole answer."""
    for title in ("Task 1", "Task 2", "Task 3", "Optional task", "Results", "Your own"):
        heading, body = GENERATOR.answers_section(title)
        verdict = re.split(r"\n\s*\n", body.strip())[0]
        assert verdict.startswith("**") and verdict.endswith("**"), title
        assert verdict in notebook_markdown, title
        for figure in re.findall(r"\(figures/[^)]+\.png\)", body):
            assert figure in notebook_markdown, (title, figure)
        anchor = f"](answers.md#{GENERATOR.github_anchor(heading)})"
        assert anchor in notebook_markdown, title
    for task in ("## 8. Task 2", "## 9. Task 3", "## 10. Optional task"):
        section = _section(notebook_markdown, task)
        # The verdict first, then the figures and the link: short, the tables in answers.md.
        assert re.split(r"\n\s*\n", section)[1].startswith("**")
        assert len(section.strip().splitlines()) <= 30 and "| --- |" not in section


def test_github_anchors_are_those_of_the_headings():
    assert (
        GENERATOR.github_anchor("Task 3: age as classification — for and against")
        == "task-3-age-as-classification--for-and-against"
    )
    assert GENERATOR.github_anchor("Optional task: gender, race and age") == (
        "optional-task-gender-race-and-age"
    )
    assert all(GENERATOR.github_anchor(heading) for heading in _answers_headings())


def test_the_results_table_and_key_figures_show_unexecuted(
    notebook_markdown, report_tables
):
    # The table as the report draws it from results/, near the top.
    name = "Results: the CPU preset and the short budget"
    at_a_glance = _section(notebook_markdown, "## Results at a glance")
    assert f"<!-- report: {name} -->\n{report_tables[name]}\n" in at_a_glance
    # The figures the report draws (results/report.json), linked from figures/.
    drawn = {
        entry["figure"]
        for entry in json.loads((REPOSITORY / "results" / "report.json").read_text())
        if entry.get("figure")
    }
    linked = re.findall(r"!\[[^\]]+\]\(figures/([^)]+)\)", notebook_markdown)
    for figure in (
        "learning_curve.png",  # the learning curve
        "evaluation.png",  # the error by age
        "relu_vs_linear.png",  # Task 2
        "course_relu_vs_linear.png",
    ):
        assert figure in linked and figure in drawn, figure
    assert all((REPOSITORY / "figures" / figure).is_file() for figure in linked)
    assert {"learning_curve.png", "evaluation.png"} <= set(
        re.findall(r"figures/([^)]+)\)", at_a_glance)
    )
    # In Colab, whose markdown cannot reach figures/, a code cell shows each of them.
    shown = set(re.findall(r'"([^"]+\.png)"', "".join(_code_cells())))
    assert set(linked) <= shown


# --- short cells, plain words ------------------------------------------------------------


def test_no_code_cell_is_longer_than_15_lines_but_the_course_network():
    course = GENERATOR.source_text(model.CourseCNN, ("get_config",), decorators=False)
    long = [
        cell.splitlines()[0]
        for cell in _code_cells()
        if len(cell.splitlines()) > GENERATOR.MAX_CODE_LINES
        and course not in cell + "\n"
    ]
    assert long == []


def test_the_first_cell_fits_on_one_screen():
    first = _source(CELLS[0])
    assert CELLS[0]["cell_type"] == "markdown" and first.startswith("# ")
    assert len(first.splitlines()) <= 20
    assert all(len(line) <= 100 for line in first.splitlines())


def test_every_technical_term_is_explained_near_the_top_or_avoided():
    text = "\n".join(_source(cell) for cell in CELLS)
    # Avoided: the names of tf.distribute's machinery.
    for avoided in ("MirroredStrategy", "TPUStrategy", "all-reduce", "all_reduce"):
        assert avoided not in text, avoided
    # Explained in "Words used here", the second cell, before any other cell uses them.
    assert _source(CELLS[1]).startswith("## Words used here")
    glossary = _source(CELLS[1])
    for term in (
        "MAE",
        "Seed",
        "Interval",
        "Widening",
        "Mixed precision",
        "XLA",
        "Replica",
    ):
        assert f"**{term}**" in glossary, term
    assert "*bfloat16*" in glossary
    first = _source(CELLS[0]).lower()
    for term in ("xla", "replica", "bfloat16", "precision", "widening", "interval"):
        assert term not in first, term


# --- Run all, unattended --------------------------------------------------------------------


def test_dialogs_only_in_the_setup_and_none_that_waits_after_it():
    cells = _code_cells()
    mount = next(i for i, cell in enumerate(cells) if "drive.mount(" in cell)
    upload = [i for i, cell in enumerate(cells) if "files.upload(" in cell]
    assert len(upload) == 1 and upload[0] < mount
    after = "\n".join(cells[mount + 1 :])
    for waits in ("files.upload(", "drive.mount(", "eval_js(", "input(", "getpass"):
        assert waits not in after, waits
    # The own photo: a button wired by a callback, not a dialog.
    assert "output.register_callback(" in after
    assert 'invokeFunction("age_photo"' in after


def test_quick_is_a_plain_line_that_the_environment_overrides():
    source = next(cell for cell in _code_cells() if "REPO_URL =" in cell)
    assert re.search(r"^QUICK = False  # ", source, re.M)
    for environment, quick in ({}, False), ({"AGE_REGRESSION_QUICK": "1"}, True):
        namespace = {}
        with pytest.MonkeyPatch.context() as patch:
            patch.delenv("AGE_REGRESSION_QUICK", raising=False)
            for name, value in environment.items():
                patch.setenv(name, value)
            exec(source, namespace)
        assert namespace["QUICK"] is quick


def test_the_notebook_installs_what_requirements_txt_asks_for():
    requirements = GENERATOR.requirements()
    source = "".join(_code_cells())
    for spec in requirements.values():
        assert f'"{spec}": (' in source
        assert f"{GENERATOR.lowest(spec)}),\n" in source
    assert GENERATOR.minimum_version(requirements["tensorflow"]) == "2.19"
    assert GENERATOR.lowest("opencv-python-headless>=4.10.0.84,<5") == (4, 10, 0)
