"""answers.md: its tables must be what the code computes or draws from the committed
results/, never typed by hand."""

import json
from pathlib import Path

import model
import train_loop

REPOSITORY = Path(__file__).resolve().parents[1]
ANSWERS = (REPOSITORY / "answers.md").read_text()


def test_task1_table_of_the_course_network():
    course = train_loop.make_model(train_loop.TrainConfig(arch="course_cnn"))
    assert model.format_feature_map_table(model.feature_map_table(course)) in ANSWERS


def test_task1_table_of_our_network_at_its_cpu_preset():
    ours = train_loop.make_model(train_loop.TrainConfig(preset="cpu"))
    assert model.format_feature_map_table(model.feature_map_table(ours)) in ANSWERS


# --- the tables and figures drawn from the committed results/ --------------------------

RESULTS = REPOSITORY / "results"


def test_every_table_of_the_report_is_in_answers_as_drawn():
    """The tables in answers.md are what `python train_loop.py report` prints from the
    committed results/, to the last digit: no number typed by hand can drift."""
    tables = train_loop.report(RESULTS)
    assert tables
    for name, table in tables.items():
        assert (
            table in ANSWERS
        ), f"answers.md lacks the table {name!r} as drawn:\n{table}"


def test_a_figure_is_redrawn_from_the_committed_results(tmp_path):
    entries = json.loads((RESULTS / train_loop.REPORT).read_text())
    figures = [entry["figure"] for entry in entries if entry.get("figure")]
    assert figures
    train_loop.report(RESULTS, tmp_path)
    for figure in figures:
        assert (tmp_path / figure).stat().st_size > 10_000
        assert f"figures/{figure}" in ANSWERS  # the figure answers.md shows


def test_every_result_names_its_command_and_machine():
    for metrics_file in sorted(RESULTS.glob("*/metrics.json")):
        metrics = json.loads(metrics_file.read_text())
        assert metrics["command"].endswith(f"--out runs/{metrics_file.parent.name}")
        assert "CPU cores" in metrics["machine"]
        for name in ("history.json", train_loop.PREDICTIONS):
            assert (metrics_file.parent / name).exists()
