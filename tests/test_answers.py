"""answers.md: its tables must be what the code computes or draws from the committed
results/, never typed by hand."""

import json
import re
from pathlib import Path

import model
import report
import train_loop
import runs

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


DOCUMENTS = {
    name: (REPOSITORY / name).read_text()
    for name in ("answers.md", "EXPERIMENTS.md", "README.md")
}
# answers.md and the engineering record together show every table and figure of the report.
RECORD = ANSWERS + DOCUMENTS["EXPERIMENTS.md"]


def test_every_table_of_the_report_is_in_answers_as_drawn(report_tables):
    """The tables in answers.md, EXPERIMENTS.md and the README are what `python
    train_loop.py report` draws from the committed results/, to the last digit: no number
    typed by hand can drift (`report --update answers.md EXPERIMENTS.md README.md`
    rewrites them)."""
    assert report_tables
    for name, text in DOCUMENTS.items():
        assert (
            report.update_tables(text, report_tables) == text
        ), f"{name} is out of date"
    for name, table in report_tables.items():
        assert (
            f"<!-- report: {name} -->\n{table}\n" in RECORD
        ), f"neither answers.md nor EXPERIMENTS.md has the table {name!r} as drawn"


def test_every_mean_sd_and_interval_quoted_in_words_is_one_the_report_draws(
    report_tables, notebook_markdown
):
    """A "5.08 ± 0.08" or a "[-0.17, -0.06]" quoted in the text of answers.md, the README
    or the notebook must be in a table that the report draws from results/. The README
    links the results instead of quoting them, so it may quote none."""
    drawn = "\n".join(report_tables.values())
    texts = {**DOCUMENTS, "the notebook": notebook_markdown}
    pattern = r"[+-]?\d+\.\d+ ± \d+\.\d+|\[[+-]?\d+\.\d+, [+-]?\d+\.\d+\]"
    for name, text in texts.items():
        quoted = set(re.findall(pattern, text.replace("−", "-")))
        assert quoted or name == "README.md", f"{name} quotes no result"
        missing = sorted(number for number in quoted if number not in drawn)
        assert (
            not missing
        ), f"{name} quotes numbers that no report table holds: {missing}"


def test_a_figure_is_redrawn_from_the_committed_results(tmp_path):
    entries = json.loads((RESULTS / report.REPORT).read_text())
    figures = [entry["figure"] for entry in entries if entry.get("figure")]
    assert figures
    report.report(RESULTS, tmp_path)
    for figure in figures:
        assert (tmp_path / figure).stat().st_size > 10_000
        assert f"figures/{figure}" in RECORD  # a figure the documents show


def test_every_result_names_its_command_and_machine():
    for metrics_file in sorted(RESULTS.glob("*/metrics.json")):
        metrics = json.loads(metrics_file.read_text())
        # NAME_mirror_only and NAME_unwidened keep earlier readouts of the run NAME, and
        # NAME_two_sided a later one (a widening factor on each side), with its command.
        run = re.sub("_(mirror_only|unwidened|two_sided)", "", metrics_file.parent.name)
        assert metrics["command"].endswith(f"--out runs/{run}")
        assert "CPU cores" in metrics["machine"]
        for name in ("history.json", runs.PREDICTIONS):
            assert (metrics_file.parent / name).exists()


# --- answers.md as a grader reads it ----------------------------------------------------


def _sections(text):
    """{heading: body} of the "## " sections of a Markdown text."""
    parts = re.split(r"^## (.+)$", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def test_answers_md_answers_first_and_links_the_engineering_record():
    assert len(ANSWERS.splitlines()) <= 400
    assert (
        "(EXPERIMENTS.md)" in ANSWERS and "(EXPERIMENTS.md)" in DOCUMENTS["README.md"]
    )
    sections = _sections(ANSWERS)
    tasks = [name for name in sections if name.startswith(("Task", "Optional"))]
    assert len(tasks) == 4, list(sections)
    for name in tasks:
        # Each task opens with its answer, in bold, before any reasoning.
        first = sections[name].strip().split("\n\n")[0]
        assert first.startswith("**") and first.endswith("**"), name


def _sentences(text):
    """The sentences of a Markdown text, tables and code left out, lines joined."""
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    prose = "\n".join(line for line in prose.splitlines() if not line.startswith("|"))
    return [
        sentence
        for paragraph in re.split(r"\n\s*\n", prose)
        for sentence in re.split(
            r"(?<=[.:;])\s+(?=[A-Z*(])", paragraph.replace("\n", " ")
        )
    ]


def test_every_measurable_difference_holds_across_seeds_and_faces(notebook_markdown):
    """Where a sentence calls a difference measurable, the interval quoted nearest excludes
    0; where it calls one not measurable, it holds 0 (the intervals resample the seeds and
    the test faces)."""
    texts = {**DOCUMENTS, "the notebook": notebook_markdown}
    interval = r"\[([+-]?\d+\.\d+), ([+-]?\d+\.\d+)\]"
    checked = 0
    for name, text in texts.items():
        for sentence in _sentences(text.replace("−", "-")):
            found = list(re.finditer(interval, sentence))
            for said in re.finditer(r"(not |no |nothing )?measurabl", sentence, re.I):
                if not found:
                    continue
                nearest = min(found, key=lambda match: abs(match.start() - said.end()))
                low, high = map(float, nearest.groups())
                negative = said.group(1) is not None
                assert (low <= 0 <= high) == negative, f"{name}: {sentence}"
                checked += 1
    assert checked >= 5
