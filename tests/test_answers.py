"""answers.md: the Task 1 tables must be what the code computes, never typed by hand."""

from pathlib import Path

import model
import train_loop

ANSWERS = (Path(__file__).resolve().parents[1] / "answers.md").read_text()


def test_task1_table_of_the_course_network():
    course = train_loop.make_model(train_loop.TrainConfig(arch="course_cnn"))
    assert model.format_feature_map_table(model.feature_map_table(course)) in ANSWERS


def test_task1_table_of_our_network_at_its_cpu_preset():
    ours = train_loop.make_model(train_loop.TrainConfig(preset="cpu"))
    assert model.format_feature_map_table(model.feature_map_table(ours)) in ANSWERS
