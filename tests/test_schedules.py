"""The learning-rate schedules: the warm-up, the two decays to zero, the constant rate, and
the optimizer that train builds from them."""

import dataclasses

import keras
import numpy as np
import pytest

import train_loop
from schedules import SCHEDULES, WarmupLinearDecay, learning_rate_schedule

PEAK, TOTAL, WARMUP = 3e-3, 1000, 100


def rates(schedule, steps):
    return np.array([float(schedule(step)) for step in steps])


@pytest.mark.parametrize("name", ["cosine", "linear"])
def test_a_warm_up_rises_to_the_peak_and_the_decay_ends_at_zero(name):
    schedule = learning_rate_schedule(name, PEAK, TOTAL, WARMUP)
    start, middle_of_warmup, peak, last = rates(schedule, [0, 50, WARMUP, TOTAL])
    assert start == pytest.approx(PEAK / 100)
    assert start < middle_of_warmup < peak
    assert peak == pytest.approx(PEAK)
    assert last == pytest.approx(0.0, abs=1e-9)
    decay = rates(schedule, range(WARMUP, TOTAL + 1, 50))
    assert np.all(np.diff(decay) < 0)


def test_the_linear_decay_is_a_straight_line_and_stays_at_zero():
    schedule = learning_rate_schedule("linear", PEAK, TOTAL, WARMUP)
    halfway = WARMUP + (TOTAL - WARMUP) // 2
    assert float(schedule(halfway)) == pytest.approx(PEAK / 2)
    quarter = rates(schedule, [WARMUP, WARMUP + 225, WARMUP + 450, WARMUP + 675])
    assert np.diff(quarter) == pytest.approx([-PEAK / 4] * 3, rel=1e-5)
    # Past the planned steps (a resumed run that trains longer) the rate stays at 0.
    assert rates(schedule, [TOTAL + 1, 2 * TOTAL]) == pytest.approx([0.0, 0.0])


def test_the_decays_differ_where_cosine_holds_the_peak_longer():
    """Both average about half the peak over a run; cosine stays higher early and lower
    late, the straight line the other way round."""
    cosine = learning_rate_schedule("cosine", PEAK, TOTAL, 0)
    linear = learning_rate_schedule("linear", PEAK, TOTAL, 0)
    steps = np.arange(TOTAL)
    assert rates(cosine, steps).mean() == pytest.approx(PEAK / 2, rel=0.01)
    assert rates(linear, steps).mean() == pytest.approx(PEAK / 2, rel=0.01)
    assert float(cosine(250)) > float(linear(250))
    assert float(cosine(900)) < float(linear(900))


def test_without_a_warm_up_the_first_step_has_the_peak_rate():
    for name in ("cosine", "linear"):
        schedule = learning_rate_schedule(name, PEAK, TOTAL, 0)
        assert float(schedule(0)) == pytest.approx(PEAK)
    assert learning_rate_schedule("constant", PEAK, TOTAL, WARMUP) == PEAK


def test_a_warm_up_longer_than_the_run_is_cut_and_a_bad_name_refused():
    schedule = learning_rate_schedule("linear", PEAK, 10, 50)
    assert schedule.warmup_steps == 9 and float(schedule(9)) == pytest.approx(PEAK)
    with pytest.raises(ValueError, match="schedule: 'step' is not one of"):
        learning_rate_schedule("step", PEAK, TOTAL, WARMUP)
    with pytest.raises(ValueError, match="warmup_steps"):
        WarmupLinearDecay(PEAK, 10, 10)


def test_a_schedule_round_trips_through_its_config():
    schedule = WarmupLinearDecay(PEAK, TOTAL, WARMUP)
    again = WarmupLinearDecay.from_config(schedule.get_config())
    steps = [0, 50, WARMUP, 600, TOTAL]
    assert rates(again, steps) == pytest.approx(rates(schedule, steps))


@pytest.mark.parametrize("name", SCHEDULES)
def test_the_optimizer_of_each_schedule_follows_it_step_by_step(name):
    config = dataclasses.replace(
        train_loop.resolve_config(train_loop.TrainConfig(preset="cpu")),
        schedule=name,
        epochs=4,
        warmup_epochs=1.0,
    )
    optimizer = train_loop.make_optimizer(config, steps_per_epoch=10)
    weight = keras.Variable(np.ones(3, "float32"))
    optimizer.build([weight])
    seen = []
    for _ in range(41):
        seen.append(float(train_loop._current_learning_rate(optimizer)))
        optimizer.apply([keras.ops.ones(3)], [weight])
    expected = learning_rate_schedule(name, config.learning_rate, 40, 10)
    if name == "constant":
        assert seen == pytest.approx([config.learning_rate] * 41)
    else:
        assert seen == pytest.approx(rates(expected, range(41)), abs=1e-9)
        assert seen[10] == pytest.approx(config.learning_rate)
        assert seen[40] == pytest.approx(0.0, abs=1e-9)
