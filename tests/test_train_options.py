"""The heads and options that answers.md reports, each trained through train() on tiny data
once for this module, and what each one changes in the run.

Each option alone trains for ten seconds or so: the plain network runs in the quick suite,
the others with the slow tests (`pytest -m "not slow"` skips them).
"""

import dataclasses
import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest

import devices
import evaluation
import readout
import runs
import train_loop
from synthetic import make_folder

OPTIONS = {
    "plain": {},
    "classification": {"head": "classification"},
    "ordinal": {"head": "ordinal"},
    "gender_head": {"gender_head": True},
    "attribute_inputs": {"attribute_inputs": True},
    "distribution_head": {"distribution_head": True},
    # The trained weights validated every epoch beside their average (the preset: every
    # fourth and the last).
    "ema": {"ema": 0.9, "validate_trained_every": 1},
    "tta": {"tta": True},
    "straight_through": {"relu_gradient": "straight_through"},
    "lds": {"loss_weighting": "lds"},
    "widen": {"widen": True},
    "widened_classification": {"head": "classification", "widen": True},
    "bfloat16": {"precision": "mixed_bfloat16"},
    "wider_deeper": {"width": 1.25, "blocks": "1,1,2,2"},
    "members": {"members": 2},
    "shared_members": {"members": 2, "members_share": "stage1"},
    # Each member's head reads its whole last map, the views of the readout too.
    "flattened_map": {"members": 2, "pooling": "flatten", "tta": True},
    "linear_schedule": {"schedule": "linear"},
}
# Each option alone, on one network without the preset's teacher head, EMA, TTA and
# widening.
PLAIN = dict(members=1, distribution_head=False, ema=0.0, tta=False, widen=False)
STEM = ["stem_conv", "stem_norm", "stem_relu"]
QUANTILES = ("q05", "q25", "q75", "q95")
# The readouts that only some options write, to metrics.json or as prediction columns.
OWN_READOUTS = {
    "ema": {"val_mae_without_ema"},
    "classification": set(QUANTILES),
    "attribute_inputs": {
        "test_mae_attributes_unknown",
        *runs.UNKNOWN_ATTRIBUTES_COLUMNS.values(),  # both readouts
    },
    "widen": {"age_widening", runs.UNWIDENED_COLUMNS[False]},
    "widened_classification": {
        *QUANTILES,
        "age_widening",
        runs.UNWIDENED_COLUMNS[False],
    },
}


def tiny_config(data, out, **options):
    """One epoch on 24 images of 32 pixels: a second or two of training on the CPU."""
    settings = dict(
        data=str(data), out=str(out), preset="cpu", image_size=32, batch_size=8,
        epochs=1, limit=24, precision="float32", jit_compile=False,
    )  # fmt: skip
    return train_loop.TrainConfig(**{**settings, **PLAIN, **options})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """trained(name): the Run of OPTIONS[name] (its folder is run.config.out), trained at
    its first use and shared by every test of the module; a run that failed fails again
    without training."""
    data = make_folder(tmp_path_factory.mktemp("tiny") / "UTKFace", 64, seed=7)
    found = {}

    def run_of(name):
        if name not in found:
            config = tiny_config(data, tmp_path_factory.mktemp(name), **OPTIONS[name])
            try:
                found[name] = train_loop.train(config, verbose=0)
            except Exception as error:
                found[name] = error
        if isinstance(found[name], Exception):
            raise found[name]
        return found[name]

    return run_of


def each_option(*names):
    """Parametrize a test by option name (all of OPTIONS when none is given): the plain
    network in the quick suite, the others with the slow tests."""
    return pytest.mark.parametrize(
        "name",
        [
            pytest.param(name, marks=[] if name == "plain" else [pytest.mark.slow])
            for name in names or OPTIONS
        ],
    )


def predictions_of(run):
    """The columns of the test predictions that the run wrote."""
    return runs.read_predictions(Path(run.config.out) / runs.PREDICTIONS)


@each_option()
def test_each_option_trains_and_is_kept_in_the_model_or_the_settings(trained, name):
    run = trained(name)
    assert np.isfinite(run.metrics["test_mae"]) and run.metrics["epochs_run"] == 1
    for option, value in OPTIONS[name].items():
        holder = run.model if hasattr(run.model, option) else run.config
        assert getattr(holder, option) == value


@each_option("wider_deeper")
def test_width_and_blocks_shape_the_network(trained, name):
    model = trained(name).model
    # The preset's widths (16, 32, 80, 160) times 1.25, in multiples of 16.
    assert model.widths == (16, 32, 96, 192)
    assert model.blocks_per_stage == (1, 1, 2, 2)
    assert "stage4_block2" in [layer.name for layer in model.body]


@each_option("members", "shared_members")
def test_members_train_together_and_predict_one_age(trained, name):
    model = trained(name).model
    assert [member.name for member in model.member_networks] == ["member1", "member2"]
    shared = [layer.name for layer in model.shared_body]
    assert shared == ([] if name == "members" else [*STEM, "stage1_block1"])
    images = np.random.rand(3, 32, 32, 3).astype("float32")
    assert model(images).shape == (3, 1)
    assert model(images, training=True).shape == (3, 2)


@each_option()
def test_the_saved_model_predicts_what_the_trained_one_predicted(trained, name):
    run = trained(name)
    reported = "test_mae_tta" if run.config.tta else "test_mae_no_tta"
    assert run.metrics["test_mae"] == run.metrics[reported]
    # Read out as evaluate reads it: with the widening saved in the model, if any.
    reloaded = readout.load_model(Path(run.config.out) / runs.MODEL)
    again = evaluation.predict_records(
        reloaded,
        run.test.records,
        8,
        tta=run.config.tta,
        widening=reloaded.age_widening,
    )
    np.testing.assert_allclose(again.predicted, run.test.predicted, rtol=1e-5)


@each_option()
def test_an_option_writes_its_own_readouts_and_no_others(trained, name):
    run = trained(name)
    columns = [
        *QUANTILES,
        *runs.UNKNOWN_ATTRIBUTES_COLUMNS.values(),
        *runs.UNWIDENED_COLUMNS.values(),
    ]
    written = predictions_of(run)
    found = {column for column in columns if written.get(column) is not None}
    metrics = ("val_mae_without_ema", "test_mae_attributes_unknown", "age_widening")
    found |= {key for key in metrics if run.metrics.get(key) is not None}
    if any(row.get("val_mae_without_ema") is not None for row in run.history):
        found.add("val_mae_without_ema")
    assert found == OWN_READOUTS.get(name, set())


def test_the_run_records_whether_onednn_ran(trained):
    # devices switches oneDNN's kernels on before TensorFlow is imported, where the build
    # has them (TensorFlow for macOS, for one, has none).
    run = trained("plain")
    written = json.loads((Path(run.config.out) / "metrics.json").read_text())
    assert run.metrics["onednn"] == written["onednn"] == devices.onednn_enabled()


@pytest.mark.slow
def test_a_weight_average_also_validates_the_trained_weights(trained):
    run = trained("ema")
    without = [row["val_mae_without_ema"] for row in run.history]
    assert np.isfinite(without).all() and without != [run.metrics["val_mae"]]
    assert run.metrics["val_mae_without_ema"] == min(without)


@each_option("classification", "widened_classification")
def test_a_classification_head_keeps_its_50_and_90_percent_intervals(trained, name):
    written = predictions_of(trained(name))
    quantiles = [written[column] for column in QUANTILES]
    assert (np.diff(quantiles, axis=0) >= 0).all()  # q05 <= q25 <= q75 <= q95
    assert (quantiles[3] > quantiles[0]).any()  # intervals of some width


@pytest.mark.slow
def test_attribute_inputs_are_also_read_out_unknown(trained):
    run = trained("attribute_inputs")
    reloaded = keras.models.load_model(Path(run.config.out) / runs.MODEL)
    hidden = evaluation.predict_records(
        reloaded, run.test.records, 8, attributes_known=False, tta=run.config.tta
    )
    written = predictions_of(run)
    column = runs.UNKNOWN_ATTRIBUTES_COLUMNS[run.config.tta]
    np.testing.assert_allclose(written[column], hidden.predicted, atol=1e-4)
    assert run.metrics["test_mae_attributes_unknown"] == pytest.approx(
        np.abs(hidden.predicted - hidden.true).mean(), abs=1e-4
    )
    assert not np.allclose(written[column], written["predicted_no_tta"])


@each_option("widen", "widened_classification")
def test_a_widened_readout_is_saved_in_the_model_beside_the_readout_before(
    trained, name
):
    run = trained(name)
    widening = tuple(run.metrics["age_widening"])
    reloaded = keras.models.load_model(Path(run.config.out) / runs.MODEL)
    assert reloaded.age_widening == widening
    written = predictions_of(run)
    before = written[runs.UNWIDENED_COLUMNS[run.config.tta]]
    reported = written[runs.PREDICTION_COLUMNS[run.config.tta]]
    np.testing.assert_allclose(
        readout.widen_ages(before, widening), reported, atol=2e-4
    )
    assert run.metrics["test_mae_unwidened"] == pytest.approx(
        np.abs(before - written["age"]).mean(), abs=1e-3
    )


@each_option("widen", "widened_classification")
def test_a_finished_run_is_read_out_again_without_its_widening(trained, tmp_path, name):
    # A copy: the run stays widened for the other tests.
    run = trained(name)
    out = shutil.copytree(run.config.out, tmp_path / "copy")
    config = dataclasses.replace(run.config, out=str(out), widen=False)
    again = train_loop.train(config, verbose=0)
    assert again.metrics["epochs_run"] == 1  # read out, not trained again
    assert "age_widening" not in again.metrics
    assert keras.models.load_model(out / runs.MODEL).age_widening is None
