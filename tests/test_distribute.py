"""Training past one device (tf.distribute), its TensorBoard curves, and the exported model.

MirroredStrategy runs over this machine's CPU split into two logical devices, in processes
of their own (tests/on_cpus.py); MultiWorkerMirroredStrategy over two worker processes on
127.0.0.1. The TPU path cannot run here.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import devices
import evaluation
import train_loop
import readout
import runs
from processes import kill_at_first_checkpoint
from synthetic import make_folder

REPOSITORY = Path(__file__).resolve().parents[1]
ON_CPUS = REPOSITORY / "tests" / "on_cpus.py"


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """Sixty-four small synthetic images named like UTKFace."""
    return make_folder(tmp_path_factory.mktemp("tiny") / "UTKFace", 64, seed=7)


def _arguments(data, out, epochs=2, *more):
    return [
        "train", "--data", str(data), "--out", str(out), "--preset", "cpu",
        "--image-size", "32", "--batch-size", "8", "--epochs", str(epochs),
        "--precision", "float32", "--no-jit-compile", "--ema", "0.9", "--members", "1",
        *more,
    ]  # fmt: skip


def _start(arguments, replicas=1, **environment):
    """A process running `arguments` on CPU_REPLICAS logical CPU devices."""
    env = {**os.environ, "CPU_REPLICAS": str(replicas), **environment}
    return subprocess.Popen(
        [sys.executable, str(ON_CPUS), *arguments],
        cwd=REPOSITORY,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(process, timeout=300):
    """The output of a process that must succeed within `timeout` seconds."""
    try:
        output = process.communicate(timeout=timeout)[0]
    finally:
        process.kill()
    assert process.returncode == 0, output
    return output


# --- MirroredStrategy over two logical CPU devices --------------------------------------


@pytest.mark.slow
def test_mirrored_replicas_update_the_weights_as_one_device_does():
    # The same global batch of 8 images, split 4 and 4: the loss is averaged over the
    # global batch and batch norm takes the global batch's statistics, so three steps
    # (with the average of the weights) end with the same weights, up to float round-off.
    found = json.loads(_finish(_start(["one-step"], replicas=2)).splitlines()[-1])
    assert found["replicas"] == [1, 2]
    assert found["losses"][0] == pytest.approx(found["losses"][1], rel=1e-5)
    assert found["difference"] < 1e-5


@pytest.mark.slow
# Selective backprop draws each replica's faces from a seed of the step and the replica.
@pytest.mark.parametrize(
    "epochs, more", [(6, ()), (3, ("--selective-backprop", "0.5"))]
)
def test_a_mirrored_run_killed_and_rerun_ends_as_an_uninterrupted_one(
    tiny_data, tmp_path, epochs, more
):
    mirrored = ["--strategy", "mirrored", *more]

    def run(name):
        return _arguments(tiny_data, tmp_path / name, epochs, *mirrored)

    whole = _finish(_start(run("whole"), 2))
    assert "resuming" not in whole
    killed = _start(run("killed"), 2)
    checkpoint = tmp_path / "killed" / runs.CHECKPOINT
    kill_at_first_checkpoint(killed, checkpoint, timeout=240)
    rerun = _finish(_start(run("killed"), 2))
    assert "resuming" in rerun, rerun
    finished = [
        json.loads((tmp_path / n / "metrics.json").read_text())
        for n in ("whole", "killed")
    ]
    assert finished[0]["replicas"] == finished[1]["replicas"] == 2
    assert finished[0]["strategy"] == "mirrored"
    histories = [
        json.loads((tmp_path / n / "history.json").read_text())
        for n in ("whole", "killed")
    ]
    assert [row["val_mae"] for row in histories[1]] == [
        row["val_mae"] for row in histories[0]
    ]
    assert finished[1]["test_mae"] == finished[0]["test_mae"]


# --- MultiWorkerMirroredStrategy: two worker processes on this machine ------------------


def _free_ports(count):
    """Ports free on 127.0.0.1 just now."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@pytest.mark.slow
def test_two_workers_train_and_only_the_chief_writes(tiny_data, tmp_path):
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    out = tmp_path / "workers"
    workers = [
        _start(
            _arguments(tiny_data, out, 2, "--strategy", "multi_worker"),
            TF_CONFIG=json.dumps(
                {"cluster": cluster, "task": {"type": "worker", "index": i}}
            ),
        )
        for i in range(2)
    ]
    try:
        outputs = [_finish(worker, timeout=300) for worker in workers]
    finally:
        for worker in workers:
            worker.kill()
    assert "test MAE" in outputs[0] and "test MAE" not in outputs[1]
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["strategy"], metrics["replicas"]) == ("multi_worker", 2)
    assert sorted(path.name for path in out.iterdir() if not path.name.startswith(".")) == [
        "checkpoint.npz", "history.json", "logs", "metrics.json", "model.keras",
        "test_predictions.csv",
    ]  # fmt: skip
    # One process, the same global batch: each replica draws its own augmentation and
    # dropout, and all-reduced sums round otherwise, so the two runs follow nearby paths,
    # not the same one. After two epochs the test MAE (about 25 years on these random
    # images) agrees to within a year.
    one = train_loop.train(train_loop.config_from_arguments(
        train_loop._parser().parse_args(_arguments(tiny_data, tmp_path / "one", 2))
    ), verbose=0)  # fmt: skip
    assert abs(metrics["test_mae"] - one.metrics["test_mae"]) < 1.0


def test_several_workers_refuse_a_time_budget(monkeypatch, tmp_path):
    # Each worker would time its own steps and might plan another number of epochs; the one
    # that trained longer would then wait for the others for ever.
    monkeypatch.setattr(devices, "strategy_name", lambda strategy: "multi_worker")
    config = train_loop.TrainConfig(out=str(tmp_path / "run"), time_budget=5.0)
    with pytest.raises(ValueError, match="--time-budget with several workers"):
        train_loop.train(config, verbose=0)
    assert not (tmp_path / "run").exists()


# --- TensorBoard ------------------------------------------------------------------------


def _scalars(folder):
    """{tag: [(step, value)]} of every event file under `folder`, in writing order."""
    found = {}
    for path in sorted(Path(folder).glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                number = float(tf.make_ndarray(value.tensor))
                found.setdefault(value.tag, []).append((event.step, number))
    return found


@pytest.mark.slow
def test_the_curves_are_the_history_and_a_resume_repeats_no_step(tiny_data, tmp_path):
    out = tmp_path / "run"
    config = train_loop.config_from_arguments(
        # The trained weights validated every epoch too: every curve has every epoch.
        train_loop._parser().parse_args(
            _arguments(tiny_data, out, 3, "--validate-trained-every", "1")
        )
    )
    save = runs.save_checkpoint
    saves = []

    def stop_after_two(*args, **kwargs):
        save(*args, **kwargs)
        saves.append(1)
        if len(saves) == 2:
            raise KeyboardInterrupt

    runs.save_checkpoint = stop_after_two
    try:
        with pytest.raises(KeyboardInterrupt):
            train_loop.train(config, verbose=0)
    finally:
        runs.save_checkpoint = save
    run = train_loop.train(config, verbose=0)
    scalars = _scalars(out / runs.LOGS)
    for name, tag in runs.CURVES.items():
        steps = [step for step, _ in scalars[tag]]
        assert steps == [1, 2, 3], (tag, steps)  # each epoch once, in order
        expected = [row[name] for row in run.history]
        assert [value for _, value in scalars[tag]] == pytest.approx(expected, rel=1e-6)
    per_step = [step for step, _ in scalars["train/loss_per_step"]]
    assert per_step == sorted(set(per_step)) and per_step[0] == 0
    assert len(per_step) == 3 * len(range(0, 6, runs.LOG_EVERY))  # 6 steps an epoch


# --- export -------------------------------------------------------------------------------


def test_the_serving_model_averages_the_views_predict_averages():
    keras.utils.set_random_seed(1)
    config = train_loop.TrainConfig(preset="cpu", image_size=32)
    model = train_loop.make_model(config, initial_age=30.0)
    images = np.random.default_rng(1).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    for tta in (False, (1.0,), True):
        served = readout.serving_model(model, tta)(images).numpy()
        predicted = evaluation.predict_ages(model, images / 255.0, tta=tta)
        np.testing.assert_allclose(served, predicted, rtol=1e-4, atol=1e-4)
    # A widening is applied after the views, in the served model as in predict.
    widened = readout.serving_model(model, True, (25.0, 1.1, 1.2))(images).numpy()
    assert not np.allclose(widened, served)
    np.testing.assert_allclose(
        widened, readout.widen_ages(served, (25.0, 1.1, 1.2)), rtol=1e-4, atol=1e-4
    )
    predicted = evaluation.predict_ages(
        model, images / 255.0, tta=True, widening=(25.0, 1.1, 1.2)
    )
    np.testing.assert_allclose(widened, predicted, rtol=1e-4, atol=1e-4)


def test_auto_picks_the_strategy_of_the_machine(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:2"]}}))
    assert devices.auto_strategy() == "multi_worker"
    monkeypatch.delenv("TF_CONFIG")
    for name in devices.TPU_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COLAB_TPU_ADDR", "10.0.0.2:8470")
    assert devices.auto_strategy() == "tpu" and devices.auto_precision(False) == (
        "mixed_bfloat16"
    )
    monkeypatch.delenv("COLAB_TPU_ADDR")
    gpus = {"GPU": ["gpu0", "gpu1"]}
    monkeypatch.setattr(
        tf.config, "list_physical_devices", lambda kind: gpus.get(kind, [])
    )
    assert devices.auto_strategy() == "mirrored"
    gpus["GPU"] = ["gpu0"]
    assert devices.auto_strategy() == "one"
    assert devices.strategy_name(devices.make_strategy("one")) == "one"
    with pytest.raises(ValueError, match="strategy must be one of"):
        devices.make_strategy("several")
