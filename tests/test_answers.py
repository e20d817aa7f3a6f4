"""answers.md: the Task 1 tables must be what the code computes, never typed by hand."""

from pathlib import Path

import model

ANSWERS = (Path(__file__).resolve().parents[1] / "answers.md").read_text()


def test_task1_table_of_the_course_network():
    course = model.build_model("course_cnn")
    assert model.format_feature_map_table(model.feature_map_table(course)) in ANSWERS


def test_task1_table_of_our_network_at_its_cpu_preset():
    ours = model.build_model("age_cnn", preset="cpu")
    assert model.format_feature_map_table(model.feature_map_table(ours)) in ANSWERS
