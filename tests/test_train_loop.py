"""Tests of train_loop: the GradientTape loop, resume, determinism, the command line.

The tests marked slow train for tens of seconds each; `pytest -m "not slow"` skips them.
"""

import csv
import dataclasses
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import evaluation
import report
import train_loop
from synthetic import make_folder, write_image

REPOSITORY = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """Sixty-four small synthetic images named like UTKFace."""
    return make_folder(tmp_path_factory.mktemp("tiny") / "UTKFace", 64, seed=7)


def tiny_config(data, out, **changes):
    """A configuration that trains in a second or two on the CPU."""
    settings = dict(
        data=str(data), out=str(out), preset="cpu", image_size=32, batch_size=8,
        epochs=2, mixed_precision=False, jit_compile=False,
    )  # fmt: skip
    return train_loop.TrainConfig(**{**settings, **changes})


@pytest.mark.slow
def test_tiny_overfit(tiny_data, tmp_path):
    # One full batch of 32 images a step, no augmentation: the loop must memorise them.
    config = tiny_config(
        tiny_data, tmp_path, limit=32, batch_size=32, epochs=80, augment=False,
        warmup_epochs=0.0, learning_rate=1e-2, weight_decay=0.0, patience=1000,
    )  # fmt: skip
    # The training MAE (of the ReLU output), whatever else the loss holds (the preset's
    # teacher head adds a cross-entropy that cannot fall to zero).
    errors = [row["mae"] for row in train_loop.train(config, verbose=0).history]
    assert len(errors) == 80
    assert np.mean(errors[-5:]) <= 0.2 * errors[0], errors


@pytest.mark.slow
def test_same_seed_gives_same_metrics(tiny_data, tmp_path):
    first = train_loop.train(tiny_config(tiny_data, tmp_path / "a"), verbose=0)
    second = train_loop.train(tiny_config(tiny_data, tmp_path / "b"), verbose=0)
    other = train_loop.train(tiny_config(tiny_data, tmp_path / "c", seed=1), verbose=0)
    assert first.history == [
        dict(row, seconds=r["seconds"]) for row, r in zip(second.history, first.history)
    ]
    assert first.metrics["test_mae"] == second.metrics["test_mae"]
    assert other.metrics["test_mae"] != first.metrics["test_mae"]


def _interrupt_after_first_checkpoint(monkeypatch):
    save = train_loop.save_checkpoint

    def save_then_stop(*args, **kwargs):
        save(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(train_loop, "save_checkpoint", save_then_stop)


@pytest.mark.slow
def test_resume_ends_where_an_uninterrupted_run_ends(tiny_data, tmp_path, monkeypatch):
    whole = train_loop.train(tiny_config(tiny_data, tmp_path / "whole"), verbose=0)
    config = tiny_config(tiny_data, tmp_path / "resumed")
    with monkeypatch.context() as patch:
        _interrupt_after_first_checkpoint(patch)
        with pytest.raises(KeyboardInterrupt):
            train_loop.train(config, verbose=0)
    resumed = train_loop.train(config, verbose=0)
    assert resumed.metrics["epochs_run"] == 2
    assert resumed.metrics["test_mae"] == pytest.approx(
        whole.metrics["test_mae"], abs=1e-3
    )
    assert [row["val_mae"] for row in resumed.history] == [
        row["val_mae"] for row in whole.history
    ]
    assert resumed.metrics["train_seconds"] == pytest.approx(
        sum(row["seconds"] for row in resumed.history)
    )


def test_resume_refuses_other_settings(tiny_data, tmp_path):
    train_loop.train(tiny_config(tiny_data, tmp_path, epochs=1), verbose=0)
    with pytest.raises(ValueError, match="learning_rate"):
        train_loop.train(
            tiny_config(tiny_data, tmp_path, epochs=1, learning_rate=0.5), verbose=0
        )


def _run_command(*arguments, **options):
    command = [sys.executable, str(REPOSITORY / "train_loop.py"), *map(str, arguments)]
    return subprocess.Popen(
        command,
        cwd=REPOSITORY,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        **options,
    )


@pytest.mark.slow
def test_kill_9_then_rerun_equals_uninterrupted(tiny_data, tmp_path):
    arguments = [
        "train", "--data", tiny_data, "--preset", "cpu", "--image-size", 32, "--batch-size", 8,
        "--epochs", 12, "--no-mixed-precision", "--no-jit-compile",
    ]  # fmt: skip
    whole = _run_command(*arguments, "--out", tmp_path / "whole")
    assert whole.wait(timeout=300) == 0, whole.stdout.read().decode()
    killed = _run_command(*arguments, "--out", tmp_path / "killed")
    checkpoint = tmp_path / "killed" / train_loop.CHECKPOINT
    deadline = time.time() + 120
    while not checkpoint.exists() and time.time() < deadline and killed.poll() is None:
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    state = json.loads(str(np.load(checkpoint)["state"]))
    assert len(state["history"]) < 12  # the kill landed before the end
    rerun = _run_command(*arguments, "--out", tmp_path / "killed")
    output = rerun.communicate(timeout=300)[0].decode()
    assert rerun.returncode == 0 and "resuming" in output, output
    metrics = [
        json.loads((tmp_path / name / "metrics.json").read_text())
        for name in ("whole", "killed")
    ]
    assert metrics[1]["test_mae"] == pytest.approx(metrics[0]["test_mae"], abs=1e-3)
    assert metrics[1]["epochs_run"] == metrics[0]["epochs_run"]


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(
    tiny_data, tmp_path, monkeypatch
):
    config = tiny_config(tiny_data, tmp_path)
    with monkeypatch.context() as patch:
        _interrupt_after_first_checkpoint(patch)
        with pytest.raises(KeyboardInterrupt):
            train_loop.train(config, verbose=0)
    good = (tmp_path / train_loop.CHECKPOINT).read_bytes()
    terms = train_loop.loss_terms
    poisoned = lambda *args, **kwargs: {
        "total": terms(*args, **kwargs)["total"] * float("nan")
    }  # noqa: E731
    monkeypatch.setattr(train_loop, "loss_terms", poisoned)
    with pytest.raises(train_loop.TrainingDiverged, match="nan at epoch 2"):
        train_loop.train(config, verbose=0)
    assert (tmp_path / train_loop.CHECKPOINT).read_bytes() == good


@pytest.mark.slow
def test_gpu_paths_mixed_precision_and_xla_run_on_the_cpu(tiny_data, tmp_path):
    config = tiny_config(
        tiny_data, tmp_path, mixed_precision=True, jit_compile=True, epochs=1
    )
    run = train_loop.train(config, verbose=0)
    # The optimizer that trained was a loss-scale optimizer: its scale is checkpointed.
    names = np.load(tmp_path / train_loop.CHECKPOINT).files
    assert "optimizer/dynamic_scale" in names, names
    assert keras.config.dtype_policy().name == "float32"  # restored after building
    assert np.isfinite(run.metrics["test_mae"])
    loaded = keras.models.load_model(tmp_path / "model.keras")
    images = tf.random.stateless_uniform((4, 32, 32, 3), seed=(1, 2))
    assert loaded(images).dtype == tf.float32
    assert loaded.layers[0].dtype_policy.name == "float32"


def test_a_bfloat16_model_trains_as_the_benchmark_trains_it():
    config = train_loop.resolve_config(
        train_loop.TrainConfig(out="unused", image_size=32, batch_size=4)
    )
    with train_loop.dtype_policy("mixed_bfloat16"):
        model = train_loop.make_model(config, initial_age=30.0)
    assert keras.config.dtype_policy().name == "float32"  # restored after building
    assert {layer.dtype_policy.name for layer in model.layers} >= {"mixed_bfloat16"}
    trainer = train_loop.Trainer(model, train_loop.make_optimizer(config, 10), config)
    images = tf.random.stateless_uniform((4, 32, 32, 3), seed=(1, 2))
    loss = trainer.train_step(images, tf.fill((4, 1), 30.0))
    assert np.isfinite(float(loss)) and model(images).dtype == tf.float32


def test_mixed_precision_uses_a_loss_scale_optimizer():
    config = train_loop.TrainConfig(out="unused", mixed_precision=True, epochs=1)
    optimizer = train_loop.make_optimizer(train_loop.resolve_config(config), 10)
    assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)


@pytest.mark.slow
def test_time_budget_fixes_epochs_and_a_resume_keeps_them(
    tiny_data, tmp_path, monkeypatch
):
    config = tiny_config(tiny_data, tmp_path, time_budget=0.6, epochs=None)
    with monkeypatch.context() as patch:
        _interrupt_after_first_checkpoint(patch)
        with pytest.raises(KeyboardInterrupt):
            train_loop.train(config, verbose=0)
    state = json.loads(str(np.load(tmp_path / train_loop.CHECKPOINT)["state"]))
    planned = state["config"]["epochs"]
    assert planned >= 1

    def must_not_measure(*args):
        raise AssertionError("a resumed run must keep the epochs fitted at its start")

    monkeypatch.setattr(train_loop, "fit_to_time_budget", must_not_measure)
    run = train_loop.train(config, verbose=0)
    assert run.config.epochs == planned == run.metrics["epochs_planned"]


def test_epochs_for_budget_keeps_a_margin_and_time_for_the_test():
    margin = train_loop.SPEED_MARGIN
    # 100 train and 30 validation steps of 1 s: an epoch of 110 s, planned with the margin.
    epochs, epoch_seconds = train_loop.epochs_for_budget(3600, 60, 1.0, 100, 30)
    assert epoch_seconds == pytest.approx(110 * margin)
    assert epochs == int((3600 - 60 - 2 * 110 * margin / 3 - 30) // (110 * margin))
    assert epochs * epoch_seconds < 3600 - 60
    # A budget shorter than one epoch still trains one.
    assert train_loop.epochs_for_budget(60, 50, 1.0, 100, 30)[0] == 1


def test_presets_and_explicit_flags():
    resolved = train_loop.resolve_config(
        train_loop.TrainConfig(out="x", preset="cpu", batch_size=7)
    )
    assert resolved.batch_size == 7 and resolved.arch == "age_cnn" and resolved.epochs
    assert not resolved.mixed_precision  # no GPU here
    course = train_loop.resolve_config(
        train_loop.TrainConfig(out="x", arch="course_cnn")
    )
    assert (
        course.image_size,
        course.optimizer,
        course.learning_rate,
        course.epochs,
    ) == (200, "rmsprop", 1e-3, 20)
    gpu = train_loop.resolve_config(train_loop.TrainConfig(out="x", preset="gpu"))
    assert gpu.image_size > resolved.image_size


@pytest.mark.slow
def test_the_three_commands(tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_loop.main([
        "train", "--data", str(tiny_data), "--preset", "cpu", "--image-size", "32", "--epochs", "1",
        "--batch-size", "8", "--seed", "3", "--out", str(out),
    ]) == 0  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("test_mae", "val_mae", "test_rmse", "train_seconds", "epochs_run"):
        assert key in metrics
    assert sum(row["count"] for row in metrics["test_mae_by_race"].values()) == (
        metrics["test_images"]
    )
    assert metrics["test_negative_predictions"] == 0  # a ReLU output
    assert json.loads((out / "history.json").read_text())[0]["epoch"] == 1
    # The test predictions behind metrics.json, both readouts, a row per test face.
    faces, true, predicted = evaluation.run_predictions(out)
    assert len(set(faces)) == len(faces) == metrics["test_images"]
    assert np.abs(predicted - true).mean() == pytest.approx(
        metrics["test_mae"], abs=1e-3
    )
    _, _, plain = evaluation.run_predictions(out, "predicted_no_tta")
    assert np.abs(plain - true).mean() == pytest.approx(
        metrics["test_mae_no_tta"], abs=1e-3
    )
    capsys.readouterr()
    written = tmp_path / "evaluated.csv"
    assert (
        train_loop.main([
            "evaluate", "--model", str(out / "model.keras"), "--data", str(tiny_data),
            "--predictions", str(written),
        ])
        == 0
    )  # fmt: skip
    evaluated = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert evaluated["mae"] == pytest.approx(metrics["test_mae"], abs=1e-4)
    again = evaluation.read_predictions(written)
    assert list(again["face"]) == list(faces)
    assert again["predicted_tta"] == pytest.approx(predicted, abs=1e-3)
    assert again["predicted_no_tta"] == pytest.approx(plain, abs=1e-3)
    assert (
        sum(row["count"] for row in evaluated["mae_by_race"].values())
        == evaluated["count"]
    )
    figures = tmp_path / "figures"
    model_file = str(out / "model.keras")
    with pytest.raises(SystemExit):
        train_loop.main(["evaluate", "--model", model_file, "--unknown-attributes"])
    assert "has no gender and race inputs" in capsys.readouterr().err
    arguments = [
        "evaluate",
        "--model",
        model_file,
        "--data",
        str(tiny_data),
        "--figures",
        str(figures),
    ]
    assert train_loop.main(arguments) == 0
    assert sorted(path.name for path in figures.iterdir()) == [
        "evaluation.png",
        "learning_curve.png",
    ]
    capsys.readouterr()
    assert (
        train_loop.main(["compare", str(out), "--plot", str(figures / "curves.png")])
        == 0
    )
    row = capsys.readouterr().out.splitlines()[2]
    assert row.startswith(
        f"| run | 1 | {metrics['val_mae']:.2f} | — | {metrics['test_mae']:.2f} |"
    )
    assert (figures / "curves.png").exists()

    photos = tmp_path / "photos"
    photos.mkdir()
    write_image(photos / "anyname.jpg", size=(90, 120))
    write_image(photos / "with_alpha.png", mode="RGBA")
    write_image(photos / "gray.jpg", mode="L")
    (photos / "broken.jpg").write_text("not an image")
    (photos / "notes.txt").write_text("x")
    assert (
        train_loop.main(
            [
                "predict",
                "--model",
                str(out / "model.keras"),
                "--crop",
                "none",  # Faces are looked for in tests/test_faces.py.
                "--out",
                str(tmp_path / "p.csv"),
                str(photos),
            ]
        )
        == 0
    )
    rows = list(csv.reader(open(tmp_path / "p.csv")))
    assert rows[0][:3] == ["path", "predicted_age", "crop"]
    assert {row[2] for row in rows[1:]} == {"as is"}
    assert sorted(Path(row[0]).name for row in rows[1:]) == [
        "anyname.jpg",
        "gray.jpg",
        "with_alpha.png",
    ]
    assert all(0 <= float(row[1]) <= 200 for row in rows[1:])
    errors = capsys.readouterr().err
    assert "broken.jpg" in errors and "notes.txt" in errors and "skipped 2" in errors


def test_course_cnn_command_with_course_settings(tiny_data, tmp_path):
    out = tmp_path / "course"
    assert (
        train_loop.main(
            [
                "train",
                "--data",
                str(tiny_data),
                "--arch",
                "course_cnn",
                "--epochs",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    config = json.loads((out / "metrics.json").read_text())["config"]
    assert (config["image_size"], config["optimizer"], config["batch_size"]) == (
        200,
        "rmsprop",
        64,
    )


def test_evaluate_gives_mae_by_age_bin():
    model = keras.Sequential(
        [keras.layers.Input((4, 4, 3)), keras.layers.Flatten(), keras.layers.Dense(1)]
    )
    images = tf.zeros((6, 4, 4, 3))
    ages = tf.constant([[5.0], [15.0], [25.0], [85.0], [90.0], [100.0]])
    model.layers[-1].bias.assign([10.0])
    dataset = tf.data.Dataset.from_tensor_slices((images, ages)).batch(4)
    result = evaluation.evaluate_predictions(
        *evaluation.predict_dataset(model, dataset)
    )
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
    result = evaluation.evaluate_predictions(*predictions)
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


def test_compare_against_minutes_marks_test_mae_at_training_time(tmp_path):
    import matplotlib.pyplot as plt

    for name, test_mae, seconds in (("short", 7.0, [60, 60]), ("long", 5.0, [90] * 4)):
        run = tmp_path / name
        run.mkdir()
        history = [
            {"epoch": epoch + 1, "val_mae": 10.0 - epoch, "seconds": duration}
            for epoch, duration in enumerate(seconds)
        ]
        (run / "history.json").write_text(json.dumps(history))
        metrics = {"test_mae": test_mae, "test_rmse": 9.0, "val_mae": 8.0}
        metrics.update(best_epoch=len(seconds), epochs_run=len(seconds))
        metrics["train_seconds"] = sum(seconds)
        (run / "metrics.json").write_text(json.dumps(metrics))
    plt.close("all")
    table = report.compare_runs(
        [tmp_path / "short", tmp_path / "long"], x_axis="minutes"
    )
    # No seeds recorded, no predictions: no differences, the test MAE from metrics.json.
    assert "| long | 1 | 8.00 | — | 5.00 | — | 4 | 6 |" in table
    lines = plt.gcf().axes[0].get_lines()
    curve, dot = lines[2].get_xydata(), lines[3].get_xydata()
    assert curve[:, 0].tolist() == [1.5, 3.0, 4.5, 6.0]
    assert dot.tolist() == [[6.0, 5.0]]
    with pytest.raises(ValueError, match="x_axis"):
        report.compare_runs([tmp_path / "long"], x_axis="steps")


def test_median_baseline_command(tiny_data, capsys):
    assert train_loop.main(["baseline", "--data", str(tiny_data)]) == 0
    result = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    train, _, test = train_loop.prepare_data(
        train_loop.TrainConfig(data=str(tiny_data))
    )
    ages = np.array([record.age for record in test])
    median = np.median([record.age for record in train])
    assert result["median_age"] == median
    assert result["mae"] == pytest.approx(np.abs(ages - median).mean())


# --- the heads and options that answers.md reports, through train() -------------------


@pytest.mark.parametrize(
    "options",
    [
        {"head": "classification"},
        {"head": "ordinal"},
        {"gender_head": True},
        {"attribute_inputs": True},
        {"distribution_head": True},
        {"ema": 0.9},
        {"tta": True},
        {},
    ],
    ids=[
        "classification",
        "ordinal",
        "gender_head",
        "attribute_inputs",
        "distribution_head",
        "ema",
        "tta",
        "plain",
    ],
)
def test_train_every_head_and_option(tiny_data, tmp_path, options):
    # Each option alone, on the network without the preset's teacher head, EMA and TTA.
    plain = dict(distribution_head=False, ema=0.0, tta=False)
    config = tiny_config(
        tiny_data, tmp_path, epochs=1, limit=24, **{**plain, **options}
    )
    run = train_loop.train(config, verbose=0)
    assert np.isfinite(run.metrics["test_mae"]) and run.metrics["epochs_run"] == 1
    for name, value in options.items():
        assert (
            getattr(run.model if hasattr(run.model, name) else run.config, name)
            == value
        )
    assert run.metrics["tta"] == run.config.tta and run.metrics["ema"] == run.config.ema
    # The saved model predicts what the trained one predicted.
    reloaded = keras.models.load_model(tmp_path / "model.keras")
    readout = "test_mae_tta" if run.config.tta else "test_mae_no_tta"
    assert run.metrics["test_mae"] == run.metrics[readout]
    again = evaluation.predict_records(
        reloaded, run.test.records, 8, tta=run.config.tta
    )
    np.testing.assert_allclose(again.predicted, run.test.predicted, rtol=1e-5)
    # With an average of the weights, each epoch also validates the trained weights.
    without = [row.get("val_mae_without_ema") for row in run.history]
    if run.config.ema:
        assert np.isfinite(without).all() and without != [run.metrics["val_mae"]]
        assert run.metrics["val_mae_without_ema"] == min(without)
    else:
        assert without == [None] and run.metrics["val_mae_without_ema"] is None
    assert run.metrics["onednn"] in (True, False, None)
    assert set(run.metrics["cpu_bfloat16_units"]) <= {"amx_bf16", "avx512_bf16"}
    # A classification head's test predictions keep its 50 % and 90 % intervals.
    written = evaluation.read_predictions(tmp_path / evaluation.PREDICTIONS)
    quantiles = [written.get(name) for name in ("q05", "q25", "q75", "q95")]
    if options.get("head") == "classification":
        assert (np.diff(quantiles, axis=0) >= 0).all()  # q05 <= q25 <= q75 <= q95
        assert ((quantiles[0] <= quantiles[1]) & (quantiles[1] <= quantiles[3])).all()
    else:
        assert quantiles == [None] * 4
    # A model with gender and race inputs is also read out with them "unknown".
    unknown = [written.get(c) for c in evaluation.UNKNOWN_ATTRIBUTES_COLUMNS.values()]
    if options.get("attribute_inputs"):
        hidden = evaluation.predict_records(
            reloaded, run.test.records, 8, attributes_known=False, tta=run.config.tta
        )
        column = evaluation.UNKNOWN_ATTRIBUTES_COLUMNS[run.config.tta]
        np.testing.assert_allclose(written[column], hidden.predicted, atol=1e-4)
        assert run.metrics["test_mae_attributes_unknown"] == pytest.approx(
            np.abs(hidden.predicted - hidden.true).mean(), abs=1e-4
        )
        assert not np.allclose(written[column], written["predicted_no_tta"])
    else:
        assert unknown == [None, None]
        assert "test_mae_attributes_unknown" not in run.metrics


@pytest.mark.slow
def test_a_multi_output_run_resumes_exactly(tiny_data, tmp_path, monkeypatch):
    options = dict(
        gender_head=True, distribution_head=True, ema=0.9, epochs=3, limit=24
    )
    whole = train_loop.train(tiny_config(tiny_data, tmp_path / "whole", **options), 0)
    config = tiny_config(tiny_data, tmp_path / "resumed", **options)
    with monkeypatch.context() as patch:
        _interrupt_after_first_checkpoint(patch)
        with pytest.raises(KeyboardInterrupt):
            train_loop.train(config, verbose=0)
    # A model built before this one makes Keras number the names of this process's
    # objects differently: the checkpoint must not depend on those numbers.
    train_loop.make_model(config)
    resumed = train_loop.train(config, verbose=0)
    assert [row["val_mae"] for row in resumed.history] == [
        row["val_mae"] for row in whole.history
    ]
    np.testing.assert_allclose(resumed.test.predicted, whole.test.predicted, rtol=1e-5)


def test_a_checkpoint_of_another_model_is_refused(tiny_data, tmp_path):
    config = tiny_config(tiny_data, tmp_path, epochs=1, limit=24)
    train_loop.train(config, verbose=0)
    checkpoint = train_loop.read_checkpoint(tmp_path)
    for other in (dict(head="ordinal"), dict(arch="course_cnn", image_size=32)):
        changed = train_loop.resolve_config(dataclasses.replace(config, **other))
        model = train_loop.make_model(changed, initial_age=30.0)
        optimizer = train_loop.make_optimizer(changed, 3)
        optimizer.build(model.trainable_variables)
        with pytest.raises(ValueError, match="saved from another model") as raised:
            train_loop.restore_checkpoint(checkpoint, model, optimizer)
        assert str(tmp_path / train_loop.CHECKPOINT) in str(raised.value)


def test_progress_is_derived_from_the_history():
    config = train_loop.TrainConfig(epochs=6, patience=2)
    rows = [
        {"epoch": epoch, "val_mae": mae, "seconds": 10.0}
        for epoch, mae in enumerate([9.0, 7.0, 7.0, 8.0], start=1)
    ]
    state = train_loop.progress(rows[:3], config)
    assert (state.best_epoch, state.bad_epochs, state.finished) == (2, 1, False)
    state = train_loop.progress(rows, config)
    assert (state.best_epoch, state.best_val_mae, state.bad_epochs) == (2, 7.0, 2)
    assert state.finished and state.train_seconds == 40.0
    assert not train_loop.progress([], config).finished


def test_presets_build_and_cost():
    from model import forward_flops, feature_map_table

    models = {
        preset: train_loop.make_model(train_loop.TrainConfig(preset=preset))
        for preset in train_loop.PRESETS
    }
    for preset, model in models.items():
        assert model.image_size == train_loop.PRESETS[preset]["image_size"]
        assert sum(row.parameters for row in feature_map_table(model)) == (
            model.count_params()
        )
    # 76 MFLOPs at 96 px: 50 epochs take about 20 minutes on 2 CPU cores (answers.md);
    # a preset much dearer than 100 MFLOPs would not fit a 30-minute CPU run.
    assert 20e6 < forward_flops(models["cpu"]) <= 100e6
    assert forward_flops(models["gpu"]) > 10 * forward_flops(models["cpu"])
    course = train_loop.make_model(train_loop.TrainConfig(arch="course_cnn"))
    assert course.image_size == 200 and course.count_params() == 307_185


def test_flip_averaging_is_the_mean_of_a_face_and_its_mirror():
    import model as models

    keras.utils.set_random_seed(0)
    network = train_loop.make_model(
        train_loop.TrainConfig(preset="cpu", image_size=32), initial_age=30.0
    )
    images = tf.random.stateless_uniform((5, 32, 32, 3), seed=(3, 4))
    plain = evaluation.predict_ages(network, images, batch_size=2, tta=False)
    mirrored = evaluation.predict_ages(
        network, tf.reverse(images, axis=[2]), batch_size=2, tta=False
    )
    averaged = evaluation.predict_ages(network, images, batch_size=2, tta=True)
    np.testing.assert_allclose(averaged, (plain + mirrored) / 2, rtol=1e-5)
    assert not np.allclose(plain, mirrored)
    expected = np.asarray(models.ages_from_outputs(network, network(images)))[:, 0]
    np.testing.assert_allclose(plain, expected, rtol=1e-5)


def test_the_weight_average_follows_and_swaps_the_weights():
    network = keras.Sequential([keras.layers.Input((2,)), keras.layers.Dense(1)])
    average = train_loop.WeightAverage(network, momentum=0.5)
    kernel = network.layers[0].kernel
    start = kernel.numpy().copy()
    for _ in range(3):
        kernel.assign(kernel + 1.0)
        average.update()
    # The decays are min(0.5, (1 + n) / (10 + n)) = 2/11, then 3/12, then 4/13.
    expected = start
    for step, decay in enumerate((2 / 11, 3 / 12, 4 / 13), start=1):
        expected = decay * expected + (1 - decay) * (start + step)
    np.testing.assert_allclose(average.averages[0].numpy(), expected, rtol=1e-5)
    with average.applied():
        np.testing.assert_allclose(kernel.numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(kernel.numpy(), start + 3)
