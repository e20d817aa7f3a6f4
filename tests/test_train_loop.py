"""Tests of train_loop: the GradientTape loop, resume, determinism, the command line.

The tests marked slow train for tens of seconds each; `pytest -m "not slow"` skips them.
"""

import csv
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import keras
import numpy as np
import pytest
import tensorflow as tf

import augmentation
import evaluation
import losses
import plots
import report
import devices
import train_loop
import readout
import runs
from losses import balanced_mse, log_age_prior
from processes import kill_at_first_checkpoint
from synthetic import make_folder, write_image

REPOSITORY = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """Sixty-four small synthetic images named like UTKFace."""
    return make_folder(tmp_path_factory.mktemp("tiny") / "UTKFace", 64, seed=7)


def tiny_config(data, out, **changes):
    """A configuration that trains in a second or two on the CPU: one network (members=1;
    members=None gives the preset's three, which take about three times as long to
    build and trace)."""
    settings = dict(
        data=str(data), out=str(out), preset="cpu", image_size=32, batch_size=8,
        epochs=2, precision="float32", jit_compile=False, members=1,
    )  # fmt: skip
    return train_loop.TrainConfig(**{**settings, **changes})


@pytest.mark.slow
def test_tiny_overfit(tiny_data, tmp_path):
    # One full batch of 32 images a step, no augmentation: the loop must memorise them.
    config = tiny_config(
        tiny_data, tmp_path, limit=32, batch_size=32, epochs=80, augment=False,
        warmup_epochs=0.0, learning_rate=1e-2, weight_decay=0.0, patience=1000,
    )  # fmt: skip
    # The training MAE of the ReLU output: the age itself, whatever else a loss may hold.
    errors = [row["mae"] for row in train_loop.train(config, verbose=0).history]
    assert len(errors) == 80
    assert np.mean(errors[-5:]) <= 0.2 * errors[0], errors


@pytest.mark.slow
def test_same_seed_gives_same_metrics(tiny_data, tmp_path):
    first = train_loop.train(tiny_config(tiny_data, tmp_path / "a"), verbose=0)
    second = train_loop.train(tiny_config(tiny_data, tmp_path / "b"), verbose=0)
    # The preset's average of the weights; its trained weights validated in the last of
    # the two epochs (and every fourth).
    assert [row.get("val_mae_without_ema") is not None for row in first.history] == [
        False,
        True,
    ]
    other = train_loop.train(tiny_config(tiny_data, tmp_path / "c", seed=1), verbose=0)
    timed = ("seconds", "images_per_second")  # all but these must be the same
    assert [
        {k: v for k, v in row.items() if k not in timed} for row in first.history
    ] == [{k: v for k, v in row.items() if k not in timed} for row in second.history]
    assert first.metrics["test_mae"] == second.metrics["test_mae"]
    assert other.metrics["test_mae"] != first.metrics["test_mae"]


def _interrupt_after_first_checkpoint(monkeypatch):
    save = runs.save_checkpoint

    def save_then_stop(*args, **kwargs):
        save(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(runs, "save_checkpoint", save_then_stop)


@pytest.mark.slow
def test_resume_ends_where_an_uninterrupted_run_ends(tiny_data, tmp_path, monkeypatch):
    # The preset's networks (members=None: three), whose every member must resume.
    whole = train_loop.train(
        tiny_config(tiny_data, tmp_path / "whole", members=None), verbose=0
    )
    config = tiny_config(tiny_data, tmp_path / "resumed", members=None)
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


def _saved_run(config, history=()):
    """A checkpoint (and model.keras) of `config` written directly, without training:
    (model, optimizer) as saved."""
    config = train_loop.resolve_config(config)
    model = train_loop.make_model(config, initial_age=30.0)
    optimizer = train_loop.make_optimizer(config, 3)
    optimizer.build(model.trainable_variables)
    Path(config.out).mkdir(parents=True, exist_ok=True)
    model.save(Path(config.out) / "model.keras")
    runs.save_checkpoint(config.out, model, optimizer, config, list(history))
    return model, optimizer


@pytest.mark.parametrize("kind", ["adamw", "lion"])
def test_weight_decay_shrinks_the_kernels_only(tmp_path, kind):
    # With zero gradients, an AdamW or Lion step is its weight decay alone.
    config = train_loop.resolve_config(
        tiny_config(
            "unused", tmp_path, warmup_epochs=0.0, unnormalized_parts=2,
            standardized_kernels=True, optimizer=kind,
        )
    )  # fmt: skip
    model = train_loop.make_model(config, initial_age=30.0)
    optimizer = train_loop.make_optimizer(config, 3)
    assert type(optimizer).__name__.lower() == kind
    before = [np.array(variable) for variable in model.trainable_variables]
    optimizer.apply(
        [np.zeros_like(value) for value in before], model.trainable_variables
    )
    changed = {}
    for variable, value in zip(model.trainable_variables, before):
        if np.any(value):  # zero stays zero, decayed or not
            name = variable.path.rsplit("/", 1)[-1]
            changed.setdefault(name, set()).add(not np.allclose(variable, value))
    assert changed == {
        "kernel": {True},
        "bias": {False},
        "gamma": {False},
        "gain": {False},
    }


def test_a_lion_checkpoint_restores_its_momentum(tmp_path):
    config = train_loop.resolve_config(
        tiny_config("unused", tmp_path, optimizer="lion")
    )
    model = train_loop.make_model(config, initial_age=30.0)
    saved, restored = (train_loop.make_optimizer(config, 3) for _ in range(2))
    for optimizer in (saved, restored):
        optimizer.build(model.trainable_variables)
    momenta = [v for v in saved.variables if "momentum" in v.path]
    assert len(momenta) == len(model.trainable_variables)
    for variable in momenta:
        variable.assign(np.random.default_rng(0).normal(size=variable.shape))
    runs.save_checkpoint(tmp_path, model, saved, config, [])
    runs.restore_checkpoint(runs.read_checkpoint(tmp_path), model, restored)
    for before, after in zip(saved.variables, restored.variables):
        np.testing.assert_array_equal(before, after)


def test_resume_refuses_other_settings(tiny_data, tmp_path):
    _saved_run(tiny_config(tiny_data, tmp_path, epochs=1))
    with pytest.raises(ValueError, match="--learning-rate 0.003 there, 0.5 here"):
        train_loop.train(
            tiny_config(tiny_data, tmp_path, epochs=1, learning_rate=0.5), verbose=0
        )


def _as_an_older_version_saved_it(folder, settings):
    """Rewrite the checkpoint in `folder` as a version without `settings` would have."""
    path = Path(folder) / runs.CHECKPOINT
    with np.load(path) as archive:
        arrays = {name: archive[name] for name in archive.files}
    state = json.loads(str(arrays["state"]))
    for name in settings:
        del state["config"][name]
    arrays["state"] = np.array(json.dumps(state))
    with open(path, "wb") as file:
        np.savez(file, **arrays)


def test_a_run_of_an_older_version_goes_on_where_it_can(tiny_data, tmp_path):
    # A finished run, saved before these settings existed, read out again.
    config = tiny_config(tiny_data, tmp_path, epochs=1, ema=0.0)
    _saved_run(config, [{"epoch": 1, "val_mae": 9.0, "seconds": 1.0}])
    newer = [
        "squeeze_excite", "pooled_shortcut", "members_share", "start_image_size",
        "start_fraction", "start_view", "selective_backprop", "rank_sim",
        "validate_trained_every", "pooling", "eca", "blur", "mutual",
        "activation", "dropout", "stem", "unnormalized_parts",
        "standardized_kernels",
    ]  # fmt: skip
    _as_an_older_version_saved_it(tmp_path, newer)
    asking = tiny_config(tiny_data, tmp_path, epochs=1, ema=0.0, squeeze_excite=4)
    with pytest.raises(
        ValueError, match="no --squeeze-excite: .*, or without --squeez"
    ):
        train_loop.train(asking, verbose=0)
    run = train_loop.train(config, verbose=0)
    assert run.metrics["epochs_run"] == 1
    assert (run.config.selective_backprop, run.config.squeeze_excite) == (1.0, 0)
    # No version trained without a learning rate.
    _as_an_older_version_saved_it(tmp_path, ["learning_rate"])
    with pytest.raises(
        ValueError, match="no --learning-rate: .* that version, or choo"
    ):
        train_loop.train(config, verbose=0)


def test_run_names_change_with_the_training_alone():
    def name(**settings):
        # Precision and XLA named: "auto" resolves to this machine's.
        settings = dict(precision="float32", jit_compile=False, **settings)
        return train_loop.run_name(train_loop.TrainConfig(**settings))

    # Pinned: a setting added with the values that do what the code did before it (its
    # `absent`) leaves these names, and a rerun after such an update finds its run. A
    # preset's new value changes them, and this list with it, on purpose.
    presets = [
        name(preset="cpu"), name(arch="course_cnn"), name(preset="gpu", time_budget=30)
    ]  # fmt: skip
    assert presets == ["cpu-9c0dd0", "course-3bb9e7", "gpu-30min-d4aadf"]
    assert name(preset="cpu", selective_backprop=0.5) != presets[0]
    # Where the run is, and how it is read out, are no part of it.
    read_out = dict(tta=False, widen=False, validate_trained_every=1)
    assert name(preset="cpu", data="elsewhere", out="there", **read_out) == presets[0]


def test_a_run_moved_elsewhere_records_where_it_is_now(tiny_data, tmp_path):
    # A finished run, its folder and its data moved (or reached by another path).
    before = tiny_config(tiny_data, tmp_path / "before", epochs=1, ema=0.0)
    _saved_run(before, [{"epoch": 1, "val_mae": 9.0, "seconds": 1.0}])
    (tmp_path / "before").rename(tmp_path / "after")
    data = tmp_path / "data"
    data.symlink_to(tiny_data)
    after = tiny_config(data, tmp_path / "after", epochs=1, ema=0.0)
    run = train_loop.train(after, verbose=0)
    written = json.loads((tmp_path / "after" / "metrics.json").read_text())
    for config in (run.config, train_loop.TrainConfig(**written["config"])):
        assert (config.out, config.data) == (str(tmp_path / "after"), str(data))


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
        "--epochs", 12, "--precision", "float32", "--no-jit-compile", "--members", 1,
    ]  # fmt: skip
    whole = _run_command(*arguments, "--out", tmp_path / "whole")
    assert whole.wait(timeout=300) == 0, whole.stdout.read().decode()
    killed = _run_command(*arguments, "--out", tmp_path / "killed")
    checkpoint = tmp_path / "killed" / runs.CHECKPOINT
    kill_at_first_checkpoint(killed, checkpoint, timeout=120)
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
    good = (tmp_path / runs.CHECKPOINT).read_bytes()
    terms = train_loop.loss_terms
    poisoned = lambda *args, **kwargs: {
        "total": terms(*args, **kwargs)["total"] * float("nan")
    }  # noqa: E731
    monkeypatch.setattr(train_loop, "loss_terms", poisoned)
    with pytest.raises(train_loop.TrainingDiverged, match="nan at epoch 2"):
        train_loop.train(config, verbose=0)
    assert (tmp_path / runs.CHECKPOINT).read_bytes() == good


@pytest.mark.slow
def test_gpu_paths_mixed_precision_and_xla_run_on_the_cpu(tiny_data, tmp_path):
    # RandAugment's tones, XLA-compiled of their own, inside the compiled step too.
    config = tiny_config(
        tiny_data, tmp_path, precision="mixed_float16", jit_compile=True, epochs=1,
        rand_augment=0.5,
    )  # fmt: skip
    run = train_loop.train(config, verbose=0)
    # The optimizer that trained was a loss-scale optimizer: its scale is checkpointed.
    names = np.load(tmp_path / runs.CHECKPOINT).files
    assert "optimizer/dynamic_scale" in names, names
    assert keras.config.dtype_policy().name == "float32"  # restored after building
    assert np.isfinite(run.metrics["test_mae"])
    loaded = keras.models.load_model(tmp_path / "model.keras")
    images = tf.random.stateless_uniform((4, 32, 32, 3), seed=(1, 2))
    assert loaded(images).dtype == tf.float32
    assert loaded.layers[0].dtype_policy.name == "float32"


def test_a_bfloat16_model_trains_as_the_benchmark_trains_it():
    config = train_loop.resolve_config(
        train_loop.TrainConfig(
            out="unused", image_size=32, batch_size=4, balanced_mse=0.0
        )
    )
    with train_loop.dtype_policy("mixed_bfloat16"):
        model = train_loop.make_model(config, initial_age=30.0)
    assert keras.config.dtype_policy().name == "float32"  # restored after building
    assert {layer.dtype_policy.name for layer in model.layers} >= {"mixed_bfloat16"}
    trainer = train_loop.Trainer(model, train_loop.make_optimizer(config, 10), config)
    images = tf.random.stateless_uniform((4, 32, 32, 3), seed=(1, 2))
    loss = trainer.train_step(images, tf.fill((4, 1), 30.0))
    assert np.isfinite(float(loss)) and model(images).dtype == tf.float32


def test_deferred_weighting_weighs_the_faces_only_in_the_last_epochs():
    config = train_loop.resolve_config(
        train_loop.TrainConfig(
            out="unused", image_size=32, batch_size=4, precision="float32", epochs=5,
            loss_weighting="lds", loss_weighting_epochs=2, balanced_mse=0.0,
        )
    )  # fmt: skip
    model = train_loop.make_model(config, initial_age=30.0)
    weights = np.linspace(0.5, 2.0, 117).astype("float32")
    trainer = train_loop.Trainer(model, train_loop.make_optimizer(config, 10), config)
    weighted = train_loop.Trainer(
        model, train_loop.make_optimizer(config, 10), config, weights
    )
    outputs = tf.constant([[10.0], [40.0], [70.0], [90.0]])
    labels = tf.constant([[12.0], [35.0], [80.0], [60.0]])
    found = []
    for epoch in range(config.epochs):
        weighted.weigh_epoch(epoch)
        found.append(float(weighted.loss(outputs, labels)))
    plain = float(trainer.loss(outputs, labels))
    assert found[:3] == pytest.approx([plain] * 3)  # every face the same at first
    errors, ages = np.array([2.0, 5.0, 10.0, 30.0]), [12, 35, 80, 60]
    expected = (weights[ages] * errors).mean()
    assert found[3:] == pytest.approx([expected] * 2)  # then by age
    with pytest.raises(ValueError, match="needs --loss-weighting lds"):
        train_loop._age_weights(dataclasses.replace(config, loss_weighting="none"), [])
    # train refuses a wrong value before it reads any image.
    wrong = dataclasses.replace(config, data="no such folder", loss_weighting_epochs=6)
    with pytest.raises(ValueError, match=r"must lie in 1\.\.5 \(the epochs\), got 6"):
        train_loop.train(wrong, verbose=0)


def test_a_balanced_mse_term_is_added_to_the_l1_loss_with_its_weight():
    config = train_loop.resolve_config(
        train_loop.TrainConfig(
            out="unused", image_size=32, precision="float32", balanced_mse=0.0
        )
    )
    model = train_loop.make_model(config, initial_age=30.0)
    prior = log_age_prior([25] * 50 + [70] * 2, 116)
    outputs = tf.constant([[10.0], [40.0], [70.0], [90.0]])
    labels = tf.constant([[12.0], [35.0], [80.0], [60.0]])
    plain = train_loop.Trainer(model, train_loop.make_optimizer(config, 10), config)
    weighted_config = dataclasses.replace(config, balanced_mse=0.5)
    weighted = train_loop.Trainer(
        model, train_loop.make_optimizer(config, 10), weighted_config, age_prior=prior
    )
    term = np.mean(balanced_mse(outputs, labels, prior).numpy())
    assert float(plain.loss(outputs, labels)) == pytest.approx(np.mean([2, 5, 10, 30]))
    expected = np.mean([2, 5, 10, 30]) + 0.5 * term
    assert float(weighted.loss(outputs, labels)) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="needs the training ages"):
        train_loop.Trainer(
            model, train_loop.make_optimizer(config, 10), weighted_config
        )


def test_a_mutual_term_holds_each_member_to_the_others_mean_held_fixed():
    config = train_loop.resolve_config(
        train_loop.TrainConfig(
            out="unused", image_size=32, members=3, balanced_mse=0.0, mutual=0.5
        )
    )
    model = train_loop.make_model(config, initial_age=30.0)
    trainer = train_loop.Trainer(model, train_loop.make_optimizer(config, 10), config)
    outputs = tf.Variable([[10.0, 16.0, 13.0], [40.0, 40.0, 46.0]])  # (batch, members)
    labels = tf.constant([[12.0], [44.0]])
    # The others' means: 14.5, 11.5, 13; 43, 43, 40. The gaps: 4.5, 4.5, 0; 3, 3, 6.
    gaps = np.mean([[4.5, 4.5, 0.0], [3.0, 3.0, 6.0]], axis=-1)
    np.testing.assert_allclose(losses.mutual_disagreement(outputs), gaps, rtol=1e-6)
    l1 = np.mean(np.abs(outputs.numpy() - labels.numpy()))
    with tf.GradientTape() as tape:
        loss = trainer.loss(outputs, labels)
    assert float(loss) == pytest.approx(l1 + 0.5 * np.mean(gaps), rel=1e-6)
    # Held fixed, the others' mean passes no gradient: each member is pushed by the
    # sign of its own gap alone (a member on the others' mean, by its label alone).
    label_part = np.sign(outputs.numpy() - labels.numpy()) / 6
    gap_part = 0.5 * np.array([[-1.0, 1.0, 0.0], [-1.0, -1.0, 1.0]]) / 6
    np.testing.assert_allclose(
        tape.gradient(loss, outputs).numpy(), label_part + gap_part, rtol=1e-6
    )
    np.testing.assert_array_equal(losses.mutual_disagreement(outputs[:, :1]), [0, 0])


def test_a_rank_sim_term_ranks_each_members_features(monkeypatch):
    config = train_loop.resolve_config(
        train_loop.TrainConfig(
            out="unused", image_size=32, batch_size=8, members=2, balanced_mse=0.0,
            rank_sim=100.0,
        )
    )  # fmt: skip
    with train_loop.dtype_policy("mixed_bfloat16"):
        model = train_loop.make_model(config, initial_age=30.0)
    images = tf.random.stateless_uniform((8, 32, 32, 3), seed=(1, 2))
    ages = tf.constant([[3], [9], [18], [27], [40], [55], [71], [86]], "float32")
    # The features each member's head reads, one tensor a member; the ages unchanged.
    embeddings = []
    np.testing.assert_array_equal(
        model.forward(images, False, embeddings=embeddings).numpy(),
        model(images).numpy(),
    )
    units = train_loop.PRESETS["cpu"]["network"]["head_units"]
    assert [tuple(features.shape) for features in embeddings] == [(8, units)] * 2
    trainer = train_loop.Trainer(model, train_loop.make_optimizer(config, 10), config)
    terms = [float(losses.rank_similarity(features, ages)) for features in embeddings]
    found = float(trainer._rank_similarity(embeddings, ages))
    assert found == pytest.approx(100.0 * np.mean(terms), rel=1e-5)
    # The train step adds the weighted term of the members' features to its loss.
    given = []

    def constant_term(features, ages):
        given.append(tuple(features.shape))
        return 1000.0 + 0.0 * tf.reduce_sum(tf.cast(features, "float32"))

    monkeypatch.setattr(train_loop, "rank_similarity", constant_term)
    trainer = train_loop.Trainer(model, train_loop.make_optimizer(config, 10), config)
    loss = float(trainer.train_step(images, ages))
    assert given == [(8, units)] * 2
    assert 100_000 < loss < 100_000 + 200  # the L1 loss of a fresh model is below 200


def test_a_weighted_sample_draws_each_item_by_its_weight_without_replacement():
    weights = tf.constant([1.0, 2.0, 3.0, 4.0])
    firsts = [
        int(train_loop.weighted_sample(weights, 1, tf.constant([5, draw], tf.int64))[0])
        for draw in range(2000)
    ]
    shares = np.bincount(firsts, minlength=4) / len(firsts)
    np.testing.assert_allclose(shares, [0.1, 0.2, 0.3, 0.4], atol=0.035)
    # Drawn without replacement: every item once when all are drawn.
    every = train_loop.weighted_sample(weights, 4, tf.constant([5, 0], tf.int64))
    assert sorted(every.numpy().tolist()) == [0, 1, 2, 3]
    # The same seed, the same draw.
    again = train_loop.weighted_sample(weights, 4, tf.constant([5, 0], tf.int64))
    np.testing.assert_array_equal(every.numpy(), again.numpy())


@pytest.mark.parametrize("members", [1, 3])
def test_selective_backprop_trains_on_the_faces_predicted_worst(members):
    config = train_loop.resolve_config(
        train_loop.TrainConfig(
            out="unused", image_size=32, batch_size=4, members=members,
            precision="float32", balanced_mse=0.0, selective_backprop=0.5,
        )
    )  # fmt: skip
    assert (config.batch_size, config.read_batch_size) == (4, 8)
    model = train_loop.make_model(config, initial_age=30.0)
    trainer = train_loop.Trainer(model, train_loop.make_optimizer(config, 10), config)
    images = tf.random.stateless_uniform((8, 32, 32, 3), seed=(3, 4))
    # A fresh model predicts about the initial age for every face: the faces of 95 are
    # about 65 years off, those of 30 about 0, and are drawn about 60 times as rarely.
    ages = tf.constant([[30.0], [95.0], [30.0], [95.0], [30.0], [95.0], [30.0], [95.0]])
    predicted = trainer._predict(images, ages).numpy()
    assert np.all(np.abs(predicted - 30.0) < 5.0), predicted
    if members > 1:  # the first member's ages are its own output's
        first = model.member_networks[0](images)
        np.testing.assert_allclose(
            model.first_member_ages(images).numpy(), np.maximum(first, 0), rtol=1e-6
        )
    chosen_images, chosen_ages = trainer._hard_faces(images, ages)
    np.testing.assert_array_equal(chosen_ages.numpy(), [[95.0]] * 4)
    # The images go with their ages: the second, fourth, sixth and eighth.
    order = sorted(
        int(np.argmin(np.abs(images.numpy() - image).sum(axis=(1, 2, 3))))
        for image in chosen_images.numpy()
    )
    assert order == [1, 3, 5, 7]
    # The step reads eight faces and trains on four: its loss is theirs.
    loss = float(trainer.train_step(images, ages))
    assert 55.0 < loss < 75.0, loss


@pytest.mark.slow
def test_a_selective_run_reads_every_face_an_epoch_and_repeats_itself(
    tiny_data, tmp_path, monkeypatch
):
    steps, train_steps = [], train_loop._train_steps

    def counted(trainer, epochs, epoch, progress_bar):
        steps.append(epochs.steps)
        return train_steps(trainer, epochs, epoch, progress_bar)

    monkeypatch.setattr(train_loop, "_train_steps", counted)
    first, second = [
        train_loop.train(
            tiny_config(tiny_data, tmp_path / name, selective_backprop=0.5), verbose=0
        )
        for name in ("a", "b")
    ]
    # Each step reads 16 faces and trains on 8 of them: an epoch of the training faces
    # takes half the steps of batches of 8.
    assert steps == [first.metrics["train_images"] // 16] * 4
    timed = ("seconds", "images_per_second")
    assert [
        {k: v for k, v in row.items() if k not in timed} for row in first.history
    ] == [{k: v for k, v in row.items() if k not in timed} for row in second.history]


def test_squeeze_excite_gates_every_block_of_every_member():
    config = train_loop.resolve_config(
        train_loop.TrainConfig(out="unused", image_size=32, squeeze_excite=8)
    )
    model = train_loop.make_model(config, initial_age=30.0)
    members = model.member_networks
    assert len(members) == train_loop.PRESETS["cpu"]["members"]
    widths = train_loop.PRESETS["cpu"]["network"]["widths"]
    for member in members:
        blocks = [layer for layer in member.body if hasattr(layer, "squeeze_excite")]
        assert [block.excite.units for block in blocks] == list(widths)
        # At least 4 units: 16 // 8 would leave the narrowest stage 2.
        squeezed = [max(width // 8, 4) for width in widths]
        assert [block.squeeze.units for block in blocks] == squeezed
    plain = train_loop.make_model(
        dataclasses.replace(config, squeeze_excite=0), initial_age=30.0
    )
    assert not any(hasattr(layer, "squeeze") for layer in plain.member_networks[0].body)


def test_dropout_from_its_flag_reaches_the_head_of_every_member():
    config = train_loop.resolve_config(
        train_loop.TrainConfig(out="unused", image_size=32)
    )
    assert config.dropout == train_loop.PRESETS["cpu"]["dropout"] == 0.3
    for rate in (0.0, 0.1):
        model = train_loop.make_model(
            dataclasses.replace(config, dropout=rate), initial_age=30.0
        )
        members = model.member_networks
        assert len(members) == train_loop.PRESETS["cpu"]["members"]
        assert [member.dropout_layer.rate for member in members] == [rate] * len(
            members
        )
        assert model.get_config()["dropout"] == rate  # saved with the model


def test_the_train_step_augments_raw_batches_as_the_config_says(monkeypatch):
    config = train_loop.resolve_config(
        train_loop.TrainConfig(
            out="unused", image_size=32, precision="float32", largest_frame=1.2,
            rotation=12.0, erasing=0.3, rand_augment=0.5, balanced_mse=0.0,
        )
    )  # fmt: skip
    model = train_loop.make_model(config, initial_age=30.0)
    trainer = train_loop.Trainer(model, train_loop.make_optimizer(config, 10), config)
    seen = []
    prepare = augmentation.prepare_batch

    def spy(images, seed, settings, size, view):
        seen.append((settings, size, view))
        return prepare(images, seed, settings, size, view)

    monkeypatch.setattr(augmentation, "prepare_batch", spy)
    images = tf.cast(
        tf.random.stateless_uniform((4, 32, 32, 3), (1, 2), 0, 255), tf.uint8
    )
    seeds = tf.tile(tf.constant([[7, 8]], tf.int64), [4, 1])
    loss = trainer.train_step(images, tf.fill((4, 1), 30.0), seeds)
    # Progressive resizing's first epochs: the same faces, smaller.
    smaller = trainer.train_step(images, tf.fill((4, 1), 30.0), seeds, size=24)
    assert np.isfinite(float(loss)) and np.isfinite(float(smaller))
    settings = augmentation.Augmentation(1.2, 12.0, 0.3, rand_augment=0.5)
    assert seen == [(settings, None, "cropped"), (settings, 24, "cropped")]


def test_progressive_resizing_trains_the_first_epochs_on_smaller_images():
    def sizes(**settings):
        config = train_loop.TrainConfig(out="x", image_size=96, epochs=10, **settings)
        config = train_loop.resolve_config(config)
        return [config.train_image_size(epoch) for epoch in range(config.epochs)]

    assert sizes(start_image_size=0) == [96] * 10  # off
    assert sizes(start_image_size=64, start_fraction=0.6) == [64] * 6 + [96] * 4
    assert sizes(start_image_size=64, start_fraction=0.0) == [96] * 10
    # The last epoch is always at full size, validated, a run's best.
    assert sizes(start_image_size=48, start_fraction=0.99) == [48] * 9 + [96]
    # A time budget plans with the schedule's mean step.
    config = train_loop.resolve_config(
        train_loop.TrainConfig(out="x", start_image_size=64, start_fraction=0.6)
    )
    seconds = {64: 1.0, config.image_size: 2.0}
    assert train_loop.schedule_seconds(config, seconds.get) == pytest.approx(1.4)
    off = dataclasses.replace(config, start_image_size=0)
    assert train_loop.schedule_seconds(off, seconds.get) == 2.0


@pytest.mark.slow
def test_a_progressive_run_switches_size_and_resumes_exactly(
    tiny_data, tmp_path, monkeypatch
):
    changes = dict(image_size=40, start_image_size=32, start_fraction=0.5)
    whole = train_loop.train(tiny_config(tiny_data, tmp_path / "a", **changes), 0)
    assert [row["train_image_size"] for row in whole.history] == [32, 40]
    # The epoch on smaller images is not validated; the best model is of the last.
    assert [row["val_mae"] is None for row in whole.history] == [True, False]
    assert whole.metrics["best_epoch"] == 2 and np.isfinite(whole.metrics["val_mae"])
    curves = runs.Curves._written(tmp_path / "a" / runs.LOGS, 10**6, 2)
    validated = [step for tag, step, _ in curves if tag == runs.CURVES["val_mae"]]
    assert validated == [2]
    plots.plot_history(whole.history, tmp_path / "history.png")  # a gap, no error
    assert (tmp_path / "history.png").stat().st_size > 0
    plain = tiny_config(tiny_data, tmp_path / "b", image_size=40)
    plain = train_loop.train(plain, verbose=0)
    assert "train_image_size" not in plain.history[0]
    assert plain.history[1]["val_mae"] != whole.history[1]["val_mae"]
    config = tiny_config(tiny_data, tmp_path / "resumed", **changes)
    with monkeypatch.context() as patch:
        _interrupt_after_first_checkpoint(patch)
        with pytest.raises(KeyboardInterrupt):
            train_loop.train(config, verbose=0)
    resumed = train_loop.train(config, verbose=0)
    assert [row["val_mae"] for row in resumed.history] == [
        row["val_mae"] for row in whole.history
    ]


def test_mixed_precision_uses_a_loss_scale_optimizer():
    config = train_loop.TrainConfig(out="unused", precision="mixed_float16", epochs=1)
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
    state = json.loads(str(np.load(tmp_path / runs.CHECKPOINT)["state"]))
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


def test_a_budget_counts_the_validations_of_a_weight_average(monkeypatch):
    # 6,400 training images and 3,000 validation images in batches of 64: 100 train steps
    # and 47 validation steps an epoch, each step timed at 1 s.
    monkeypatch.setattr(train_loop, "_measure_seconds_per_step", lambda *args: 1.0)
    train_images = SimpleNamespace(records=[None] * 6400)

    def planned(ema, every=4):
        config = train_loop.TrainConfig(
            out="x",
            ema=ema,
            time_budget=60,
            batch_size=64,
            validate_trained_every=every,
        )
        config = train_loop.resolve_config(config)
        started = time.perf_counter()
        return train_loop.fit_to_time_budget(
            config, train_images, [None] * 3000, 30, started
        )

    margin = train_loop.SPEED_MARGIN
    # The average's validation every epoch; the trained weights' every 4th or every one.
    for ema, every, validations in ((0.0, 4, 1), (0.999, 4, 1.25), (0.999, 1, 2)):
        epoch = margin * (100 + validations * 47 / 3)
        assert planned(ema, every) == int((3600 - 2 * epoch / 3 - 30) // epoch)
    assert planned(0.999, 1) < planned(0.999) < planned(0.0)
    assert planned(0.999, 0) == planned(0.0)


def test_the_trained_weights_are_validated_every_nth_epoch_and_in_the_last():
    def validated(**settings):
        config = train_loop.TrainConfig(out="x", epochs=10, **settings)
        config = train_loop.resolve_config(config)
        return [epoch + 1 for epoch in range(10) if config.validates_trained(epoch)]

    assert validated(validate_trained_every=4) == [4, 8, 10]
    assert validated(validate_trained_every=1) == list(range(1, 11))
    assert validated(validate_trained_every=0) == []
    assert validated(validate_trained_every=4, ema=0.0) == []  # no average, no second


def test_an_estimate_times_a_sample_and_plans_as_a_budget_does(monkeypatch):
    # 6,400 training and 3,000 validation faces in batches of 64: 100 train steps and 47
    # validation steps an epoch, each step timed at 2 s on a few decoded batches.
    decoded = []

    def decode(records, image_size):
        decoded.append(len(records))
        return SimpleNamespace(records=records)

    monkeypatch.setattr(train_loop.utk_data, "decode_records", decode)
    monkeypatch.setattr(train_loop, "_measure_seconds_per_step", lambda *args: 2.0)
    train_records = [SimpleNamespace(age=30)] * 6400

    def estimate(**changes):
        settings = {**dict(out="x", batch_size=64, ema=0.999, epochs=50), **changes}
        config = train_loop.TrainConfig(**settings)
        return train_loop.estimate_training(config, train_records, [None] * 3000)

    margin = train_loop.SPEED_MARGIN
    # The average validated every epoch, the trained weights one epoch in 4 (the preset).
    epoch = 2.0 * margin * (100 + 1.25 * 47 / 3)
    assert estimate() == (2.0, 100, 50, pytest.approx(50 * epoch / 60))
    assert decoded == [4 * 64]  # A few batches of faces, not all of them.
    # Without an average of the weights, one validation an epoch.
    single = 2.0 * margin * (100 + 47 / 3)
    assert estimate(ema=0.0).minutes == pytest.approx(50 * single / 60)
    # A time budget: the epochs that fit it, as the run fits them.
    budgeted = estimate(time_budget=60)
    fitted = train_loop.epochs_for_budget(3600, 0, 2.0, 100, 47, 1.25)[0]
    assert budgeted.epochs == fitted == int((3600 - 2 * epoch / 3 - 30) // epoch)
    assert (
        budgeted.minutes == pytest.approx(fitted * epoch / 60) and budgeted.minutes < 60
    )
    # Progressive resizing: 60 % of the epochs at a step timed as 2 s too here, and not
    # validated.
    progressive = estimate(start_image_size=64, start_fraction=0.6)
    epoch = 2.0 * margin * (100 + 0.4 * 1.25 * 47 / 3)
    assert progressive.minutes == pytest.approx(50 * epoch / 60)


def test_bfloat16_units_are_read_from_the_processor_flags(monkeypatch):
    flags = "fpu avx2 avx512f avx512_bf16 amx_tile amx_bf16 amx_int8"
    monkeypatch.setattr(devices, "_cpu_info", {"flags": flags}.get)
    assert devices.bfloat16_units() == ["amx_bf16", "avx512_bf16"]
    monkeypatch.setattr(devices, "_cpu_info", {"flags": "fpu avx2 avx512f"}.get)
    assert devices.bfloat16_units() == []
    monkeypatch.setattr(devices, "_cpu_info", {}.get)  # not Linux
    assert devices.bfloat16_units() == []


def test_presets_and_explicit_flags(monkeypatch):
    resolved = train_loop.resolve_config(
        train_loop.TrainConfig(out="x", preset="cpu", batch_size=7)
    )
    assert resolved.batch_size == 7 and resolved.arch == "age_cnn" and resolved.epochs
    # The precision and XLA follow the machine, unless asked for.
    for gpu, units, precision in (
        (True, ["amx_bf16"], "mixed_float16"),
        (False, ["avx512_bf16"], "mixed_bfloat16"),
        (False, [], "float32"),
    ):
        monkeypatch.setattr(devices, "has_gpu", lambda: gpu)
        monkeypatch.setattr(devices, "bfloat16_units", lambda: units)
        config = train_loop.resolve_config(train_loop.TrainConfig(out="x"))
        assert (config.preset, config.precision, config.jit_compile) == (
            "gpu" if gpu else "cpu", precision, gpu,
        )  # fmt: skip
        asked = train_loop.TrainConfig(out="x", precision="float32")
        assert train_loop.resolve_config(asked).precision == "float32"
    monkeypatch.undo()
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


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    """A run trained by the `train` command: its folder and metrics."""
    out = tmp_path_factory.mktemp("commands") / "run"
    assert train_loop.main([
        "train", "--data", tiny_data, "--preset", "cpu", "--image-size", 32, "--epochs", 1,
        "--batch-size", 8, "--seed", 3, "--out", out,
    ]) == 0  # fmt: skip
    return out, json.loads((out / "metrics.json").read_text())


@pytest.mark.slow
def test_the_train_command_writes_metrics_history_and_predictions(trained):
    out, metrics = trained
    for key in ("test_mae", "val_mae", "test_rmse", "train_seconds", "epochs_run"):
        assert key in metrics
    assert metrics["command"].startswith("train_loop.py train --data ")
    assert sum(row["count"] for row in metrics["test_mae_by_race"].values()) == (
        metrics["test_images"]
    )
    assert metrics["test_negative_predictions"] == 0  # a ReLU output
    assert metrics["tta_zooms"] == list(readout.TTA_ZOOMS)
    assert json.loads((out / "history.json").read_text())[0]["epoch"] == 1
    # The test predictions behind metrics.json, both readouts, a row per test face.
    found = runs.run_predictions(out)
    assert len(set(found.face)) == len(found.face) == metrics["test_images"]
    assert np.abs(found.predicted - found.true).mean() == pytest.approx(
        metrics["test_mae"], abs=1e-3
    )
    plain = runs.run_predictions(out, "predicted_no_tta").predicted
    assert np.abs(plain - found.true).mean() == pytest.approx(
        metrics["test_mae_no_tta"], abs=1e-3
    )


def _evaluate(capsys, *arguments):
    """Run `train_loop.py evaluate ARGUMENTS`; return the metrics it prints."""
    assert train_loop.main(["evaluate", *map(str, arguments)]) == 0
    return json.loads(capsys.readouterr().out.split("\n", 1)[1])


@pytest.mark.slow
def test_the_evaluate_command(trained, tiny_data, tmp_path, capsys):
    out, metrics = trained
    model_file, written = out / "model.keras", tmp_path / "evaluated.csv"
    evaluated = _evaluate(
        capsys, "--model", model_file, "--data", tiny_data, "--predictions", written
    )
    assert evaluated["mae"] == pytest.approx(metrics["test_mae"], abs=1e-4)
    assert sum(row["count"] for row in evaluated["mae_by_race"].values()) == (
        evaluated["count"]
    )
    found = runs.run_predictions(out)
    again = runs.read_predictions(written)
    assert list(again["face"]) == list(found.face)
    assert again["predicted_tta"] == pytest.approx(found.predicted, abs=1e-3)
    plain = runs.run_predictions(out, "predicted_no_tta").predicted
    assert again["predicted_no_tta"] == pytest.approx(plain, abs=1e-3)
    with pytest.raises(SystemExit):
        train_loop.main(["evaluate", "--model", model_file, "--unknown-attributes"])
    assert "has no gender and race inputs" in capsys.readouterr().err


@pytest.mark.slow
def test_evaluate_on_the_training_faces_and_on_the_mirror_images_alone(
    trained, tiny_data, tmp_path, capsys
):
    out, metrics = trained
    arguments = ["--model", out / "model.keras", "--data", tiny_data]
    # The training faces too (as a ReLU output's zeros there give no gradient).
    on_train = _evaluate(capsys, *arguments, "--split", "train", "--no-tta")
    assert on_train["count"] == metrics["train_images"]
    # The mirror images alone: the zoom 1.0 by itself.
    mirror_only = tmp_path / "mirror_only.csv"
    _evaluate(capsys, *arguments, "--tta-zooms", "1.0", "--predictions", mirror_only)
    mirrored = runs.read_predictions(mirror_only)["predicted_tta"]
    test_faces = train_loop.prepare_data(train_loop.TrainConfig(data=tiny_data))[2]
    model = keras.models.load_model(out / "model.keras")
    expected = evaluation.predict_records(model, test_faces, tta=(1.0,)).predicted
    # The file keeps 4 decimals: the mirror readout to its rounding, and the zooms' apart.
    assert mirrored == pytest.approx(expected, abs=6e-5)
    with_zooms = runs.run_predictions(out, "predicted_tta").predicted
    assert np.abs(with_zooms - expected).max() > 1e-4


@pytest.mark.slow
def test_evaluate_draws_its_figures(trained, tiny_data, tmp_path):
    out, _ = trained
    figures = tmp_path / "figures"
    arguments = ["--model", out / "model.keras", "--data", tiny_data]
    assert (
        train_loop.main(["evaluate", *map(str, arguments), "--figures", str(figures)])
        == 0
    )
    assert sorted(path.name for path in figures.iterdir()) == [
        "evaluation.png",
        "learning_curve.png",
    ]


@pytest.mark.slow
def test_the_compare_command(trained, tmp_path, capsys):
    out, metrics = trained
    capsys.readouterr()
    assert train_loop.main(["compare", out, "--plot", tmp_path / "curves.png"]) == 0
    row = capsys.readouterr().out.splitlines()[2]
    assert row.startswith(
        f"| run | 1 | {metrics['val_mae']:.2f} | — | {metrics['test_mae']:.2f} |"
    )
    assert (tmp_path / "curves.png").exists()


@pytest.mark.slow
def test_the_predict_command(trained, tmp_path, capsys):
    out, _ = trained
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    write_image(pictures / "anyname.jpg", size=(90, 120))
    write_image(pictures / "with_alpha.png", mode="RGBA")
    write_image(pictures / "gray.jpg", mode="L")
    (pictures / "broken.jpg").write_text("not an image")
    (pictures / "notes.txt").write_text("x")
    capsys.readouterr()
    assert train_loop.main([
        "predict", "--model", out / "model.keras",
        "--crop", "none",  # Faces are looked for in tests/test_photos.py.
        "--out", tmp_path / "p.csv", pictures,
    ]) == 0  # fmt: skip
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


def test_course_cnn_command_with_course_settings():
    arguments = train_loop._parser().parse_args(
        ["train", "--arch", "course_cnn", "--epochs", "1", "--out", "runs/course"]
    )
    config = train_loop.resolve_config(train_loop.config_from_arguments(arguments))
    assert (config.image_size, config.optimizer, config.batch_size) == (
        200,
        "rmsprop",
        64,
    )
    assert (config.epochs, config.augment, config.out) == (1, False, "runs/course")


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
    _saved_run(config)
    checkpoint = runs.read_checkpoint(tmp_path)
    for other in (
        dict(head="ordinal"),
        dict(arch="course_cnn", image_size=32, members=None),
    ):
        changed = train_loop.resolve_config(dataclasses.replace(config, **other))
        model = train_loop.make_model(changed, initial_age=30.0)
        optimizer = train_loop.make_optimizer(changed, 3)
        optimizer.build(model.trainable_variables)
        with pytest.raises(ValueError, match="saved from another model") as raised:
            runs.restore_checkpoint(checkpoint, model, optimizer)
        assert str(tmp_path / runs.CHECKPOINT) in str(raised.value)


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
    # Epochs not validated (progressive resizing's first) are neither the best nor
    # count against the patience.
    unvalidated = [{**row, "val_mae": None} for row in rows[:2]] + rows[2:]
    state = train_loop.progress(unvalidated[:2], config)
    assert (state.best_epoch, state.bad_epochs, state.finished) == (None, 0, False)
    assert state.epochs_run == 2 and state.train_seconds == 20.0
    state = train_loop.progress(unvalidated, config)
    assert (state.best_epoch, state.bad_epochs, state.finished) == (3, 1, False)


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
    # 76 MFLOPs at 96 px: 54 epochs took 30 minutes on a 2-core Xeon (EXPERIMENTS.md); a
    # preset much dearer than 100 MFLOPs would not fit a CPU run of about half an hour.
    assert 20e6 < forward_flops(models["cpu"]) <= 100e6
    assert forward_flops(models["gpu"]) > 10 * forward_flops(models["cpu"])
    course = train_loop.make_model(train_loop.TrainConfig(arch="course_cnn"))
    assert course.image_size == 200 and course.count_params() == 307_185


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


def test_evaluate_and_predict_name_a_model_file_that_is_not_one(tmp_path, capsys):
    folder = tmp_path / "folder"
    folder.mkdir()
    assert train_loop.main(["evaluate", "--model", str(folder)]) == 1
    assert f"{folder}: not a Keras model file" in capsys.readouterr().err
    missing = tmp_path / "missing.keras"
    assert train_loop.main(["predict", "--model", str(missing), str(tmp_path)]) == 1
    assert f"{missing}: no such file" in capsys.readouterr().err
