"""evaluation.py: predictions (with test-time augmentation, with gender and race hidden),
metrics by age, gender and race, and the per-face predictions file."""

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import evaluation
import train_loop
import utk_data
import metrics
import readout
import runs


def test_evaluate_gives_mae_by_age_bin():
    model = keras.Sequential(
        [keras.layers.Input((4, 4, 3)), keras.layers.Flatten(), keras.layers.Dense(1)]
    )
    images = tf.zeros((6, 4, 4, 3))
    ages = tf.constant([[5.0], [15.0], [25.0], [85.0], [90.0], [100.0]])
    model.layers[-1].bias.assign([10.0])
    dataset = tf.data.Dataset.from_tensor_slices((images, ages)).batch(4)
    result = metrics.evaluate_predictions(*evaluation.predict_dataset(model, dataset))
    assert result["mae_by_age"]["0-9"] == {"mae": 5.0, "mean_error": 5.0, "count": 1}
    assert result["mae_by_age"]["80+"]["count"] == 3
    assert result["mae_by_age"]["80+"]["mae"] == pytest.approx(245 / 3)
    assert result["mae_by_age"]["80+"]["mean_error"] == pytest.approx(-245 / 3)
    assert result["mae"] == pytest.approx(np.mean([5, 5, 15, 75, 80, 90]))


def test_evaluate_gives_mae_by_gender_and_race_in_one_pass():
    model = keras.Sequential(
        [keras.layers.Input((4, 4, 3)), keras.layers.Flatten(), keras.layers.Dense(1)]
    )
    model.layers[-1].bias.assign([30.0])
    labels = {
        "age": tf.constant([[20.0], [40.0], [30.0], [60.0], [10.0]]),
        "gender": tf.constant([0, 0, 1, 1, 1]),
        "race": tf.constant([0, 1, 2, 3, 4]),
    }
    dataset = tf.data.Dataset.from_tensor_slices((tf.zeros((5, 4, 4, 3)), labels))
    predictions = evaluation.predict_dataset(model, dataset.batch(2), with_groups=True)
    result = metrics.evaluate_predictions(*predictions)
    assert result["mae_by_gender"]["male"] == {"mae": 10.0, "mean_error": 0, "count": 2}
    assert result["mae_by_gender"]["female"]["mae"] == pytest.approx(50 / 3)
    assert result["mae_by_race"]["Others"] == {
        "mae": 20.0,
        "mean_error": 20.0,
        "count": 1,
    }
    assert result["mae_by_race"]["Asian"] == {"mae": 0.0, "mean_error": 0, "count": 1}


def test_predict_dataset_can_hide_gender_and_race():
    import model as models

    keras.utils.set_random_seed(0)
    model = models.build_model(
        "age_cnn",
        attribute_inputs=True,
        initial_age=30.0,
        image_size=32,
        widths=(8, 16),
        blocks_per_stage=(1, 1),
        stem_stride=2,
        head_units=16,
        dropout=0.3,
    )
    images = tf.random.uniform((4, 32, 32, 3), seed=1)
    labels = {
        "age": tf.constant([[20.0], [40.0], [30.0], [60.0]]),
        "gender": tf.constant([0, 1, 1, 0]),
        "race": tf.constant([0, 2, 4, 1]),
    }
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(3)
    _, known = evaluation.predict_dataset(model, dataset)
    _, hidden = evaluation.predict_dataset(model, dataset, attributes_known=False)
    unknown = -tf.ones(4, tf.int32)
    expected = model({"image": images, "gender": unknown, "race": unknown})
    np.testing.assert_allclose(hidden, np.asarray(expected)[:, 0], rtol=1e-5)
    assert not np.allclose(hidden, known)
    # predict_ages, for new photos, gives "unknown" too.
    np.testing.assert_allclose(
        evaluation.predict_ages(model, images.numpy()), hidden, rtol=1e-5
    )


def test_test_time_augmentation_averages_every_zoom_and_its_mirror():
    import model as models

    keras.utils.set_random_seed(0)
    network = train_loop.make_model(
        train_loop.TrainConfig(preset="cpu", image_size=32), initial_age=30.0
    )
    images = tf.random.stateless_uniform((5, 32, 32, 3), seed=(3, 4))

    def alone(views):
        return evaluation.predict_ages(network, views, batch_size=2, tta=False)

    plain = alone(images)
    expected = np.asarray(models.ages_from_outputs(network, network(images)))[:, 0]
    np.testing.assert_allclose(plain, expected, rtol=1e-5)
    # Mirror images only (the zoom 1.0 alone).
    mirrored = alone(tf.reverse(images, axis=[2]))
    assert not np.allclose(plain, mirrored)
    flipped = evaluation.predict_ages(network, images, batch_size=2, tta=(1.0,))
    np.testing.assert_allclose(flipped, (plain + mirrored) / 2, rtol=1e-5)
    # The default: every zoom of TTA_ZOOMS, as a training crop of the centre would be.
    views = []
    for zoom in readout.TTA_ZOOMS:
        margin = (1.0 - zoom) / 2
        box = tf.constant([[margin, margin, margin + zoom, margin + zoom]] * 5)
        zoomed = tf.image.crop_and_resize(images, box, tf.range(5), (32, 32))
        views += [alone(zoomed), alone(tf.reverse(zoomed, axis=[2]))]
    averaged = evaluation.predict_ages(network, images, batch_size=2, tta=True)
    np.testing.assert_allclose(averaged, np.mean(views, axis=0), rtol=1e-4)
    assert not np.allclose(averaged, flipped)


def test_test_time_zooms_must_be_fractions_of_the_side():
    assert readout.tta_zooms(False) == ()
    assert readout.tta_zooms(True) == readout.TTA_ZOOMS
    assert readout.tta_zooms([1, 0.9]) == (1.0, 0.9)
    for wrong in ([0.0], [1.2], [-0.5]):
        with pytest.raises(ValueError, match="test-time zooms must lie in"):
            readout.tta_zooms(wrong)


def test_the_balanced_mae_weighs_every_age_bin_alike():
    true = np.array([5.0, 5.0, 5.0, 85.0])
    predicted = np.array([6.0, 6.0, 6.0, 75.0])
    # All faces: (1 + 1 + 1 + 10) / 4; balanced: the bins 0-9 and 80+ alike.
    assert metrics.evaluate_predictions(true, predicted)["mae"] == 13 / 4
    assert metrics.balanced_mae(true, predicted) == (1 + 10) / 2


def test_widening_moves_ages_from_the_centre_and_keeps_them_at_0_or_above():
    ages = np.array([0.0, 10.0, 30.0, 70.0], np.float32)
    widened = readout.widen_ages(ages, (30.0, 1.5, 1.5))
    np.testing.assert_allclose(widened, [0.0, 0.0, 30.0, 90.0])
    assert widened.dtype == np.float32
    as_tensor = readout.widen_ages(tf.constant(ages), (30.0, 1.5, 1.5))
    np.testing.assert_allclose(as_tensor.numpy(), widened)
    assert readout.widen_ages(ages, None) is ages


def test_each_side_of_the_centre_is_widened_by_its_own_factor():
    ages = np.array([10.0, 20.0, 30.0, 50.0, 70.0], np.float32)
    for widening, expected in (
        ((30.0, 1.0, 1.5), [10.0, 20.0, 30.0, 60.0, 90.0]),
        ((30.0, 1.5, 1.0), [0.0, 15.0, 30.0, 50.0, 70.0]),
    ):
        np.testing.assert_allclose(readout.widen_ages(ages, widening), expected)
        as_tensor = readout.widen_ages(tf.constant(ages), widening)
        np.testing.assert_allclose(as_tensor.numpy(), expected)


def test_the_fitted_widening_undoes_a_pull_to_the_middle():
    generator = np.random.default_rng(0)
    true = generator.uniform(0, 90, 4000)
    noise = generator.normal(0, 3, true.size)
    # Predictions pulled towards 30 years, as a network's are: widening helps.
    pulled = 30 + 0.85 * (true - 30) + noise
    centre, below, above = evaluation.fit_widening(true, pulled)
    assert centre == pytest.approx(np.median(pulled))
    # Both sides widened; the young side less, where ages end at 0.
    assert 1.0 < below <= above
    assert 1.1 <= above <= evaluation.WIDENING_FACTORS[-1]
    widened = readout.widen_ages(pulled, (centre, below, above))
    assert (
        metrics.balanced_mae(true, widened) < metrics.balanced_mae(true, pulled) - 0.5
    )
    # Predictions that are not pulled are left (nearly) as they are.
    assert max(evaluation.fit_widening(true, true + noise)[1:]) <= 1.01


def test_the_widening_fits_a_pull_on_one_side_only_on_that_side():
    generator = np.random.default_rng(1)
    true = generator.uniform(0, 90, 4000)
    noise = generator.normal(0, 3, true.size)
    # The old pulled down towards 30 years, the young as they are.
    pulled = np.where(true > 30, 30 + 0.85 * (true - 30), true) + noise
    centre, below, above = evaluation.fit_widening(true, pulled)
    assert below <= 1.01
    assert above >= 1.1


def test_a_model_keeps_its_widening_when_saved_and_predicts_with_it(tmp_path):
    keras.utils.set_random_seed(2)
    config = train_loop.TrainConfig(arch="course_cnn", image_size=32)
    network = train_loop.make_model(config, initial_age=30.0)
    images = tf.random.stateless_uniform((4, 32, 32, 3), seed=(1, 2))
    plain = evaluation.predict_ages(network, images, tta=True)
    widening = (20.0, 1.2, 1.5)
    widened = evaluation.predict_ages(network, images, tta=True, widening=widening)
    np.testing.assert_allclose(widened, readout.widen_ages(plain, widening), rtol=1e-5)
    assert not np.allclose(widened, plain)
    network.age_widening = widening
    network.save(tmp_path / "model.keras")
    reloaded = readout.load_model(tmp_path / "model.keras")
    assert reloaded.age_widening == widening
    again = evaluation.predict_ages(
        reloaded, images, tta=True, widening=reloaded.age_widening
    )
    np.testing.assert_allclose(again, widened, rtol=1e-5)


def test_a_widening_saved_with_one_factor_loads_with_it_on_both_sides():
    config = train_loop.TrainConfig(arch="course_cnn", image_size=32)
    network = train_loop.make_model(config, initial_age=30.0)
    network.age_widening = None
    rebuilt = type(network).from_config(
        {**network.get_config(), "age_widening": [20.0, 1.5]}
    )
    assert rebuilt.age_widening == (20.0, 1.5, 1.5)
    for bad in ([20.0], [20.0, 1.0, 1.0, 1.0], [20.0, 1.0, 0.0]):
        with pytest.raises(ValueError, match="age_widening"):
            type(network).from_config({**network.get_config(), "age_widening": bad})


def test_predictions_round_trip_with_unknown_labels(tmp_path):
    records = [
        utk_data.Record(Path("/x/25_1_2_2017.jpg.chip.jpg"), 25, 1, 2),
        utk_data.Record(Path("/y/3_0_2017.jpg.chip.jpg"), 3, 0, None),
    ]
    found = evaluation.Predictions(
        records, np.array([25.0, 3.0]), np.array([24.12346, 0.0]), {}
    )
    runs.write_predictions(tmp_path / "p.csv", {"predicted_tta": found})
    table = runs.read_predictions(tmp_path / "p.csv")
    assert list(table["face"]) == [runs.face_id(r.path) for r in records]
    assert runs.face_id(records[0].path) == runs.face_id(
        "25_1_2_2017.jpg.chip.jpg"
    )  # the file name, not where it lies
    assert "2017" not in (tmp_path / "p.csv").read_text()
    assert table["race"][0] == 2 and np.isnan(table["race"][1])
    assert table["predicted_tta"] == pytest.approx([24.1235, 0.0])
