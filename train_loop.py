"""Train, evaluate and use the age models with a hand-written `tf.GradientTape` loop.

    python train_loop.py train --out runs/cpu                       # the CPU preset
    python train_loop.py train --preset gpu --time-budget 150 --out runs/gpu
    python train_loop.py train --arch course_cnn --optimizer rmsprop --out runs/course
    python train_loop.py evaluate --model runs/cpu/model.keras
    python train_loop.py predict --model runs/cpu/model.keras photo.jpg my_faces/

Running the same `train` command again resumes from the last checkpoint in `--out` (after
a Colab disconnect or a `kill -9`) and ends where an uninterrupted run ends. `predict` finds
the faces in a photo and frames each as UTKFace frames its faces (`--crop auto`).

Sections: settings and presets; data; models; the optimizer and the training step;
checkpoints; the time budget; training; metrics and figures; prediction on files; the
command line.
"""

import argparse
import csv
import dataclasses
import hashlib
import itertools
import json
import math
import os
import platform
import re
import sys
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# TensorFlow turns its oneDNN kernels on by itself only on processors with AVX-512 VNNI or
# newer; on an AVX2-only AMD EPYC they made the CPU preset's train step 1.37x faster
# (bench/bench_onednn.py, answers.md). Set it to 0 before the import to compare.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import utk_data  # noqa: E402
from model import (  # noqa: E402
    age_quantiles,
    ages_from_outputs,
    build_model,
    loss_terms,
    model_inputs,
)

CHECKPOINT = "checkpoint.npz"

# ---------------------------------------------------------------------------------------
# Settings and presets
# ---------------------------------------------------------------------------------------


def _option(default, help_text, choices=None):
    return field(default=default, metadata={"help": help_text, "choices": choices})


@dataclass
class TrainConfig:
    """Every training setting; `None` means "take it from the preset"."""

    # Where the data is and how much of it to use.
    data: Optional[str] = _option(
        None, "folder, archive or URL of UTKFace (see README)"
    )
    limit: Optional[int] = _option(
        None, "use only this many training images (quick runs)"
    )
    # The model.
    preset: Optional[str] = _option(
        None, "cpu or gpu; default: gpu when one is present", ("cpu", "gpu")
    )
    arch: Optional[str] = _option(
        None,
        "network; course_cnn comes with the course's settings (200 px, RMSprop 1e-3, "
        "batch 64, 20 epochs, no augmentation), which other flags override",
        ("course_cnn", "age_cnn"),
    )
    head: str = _option(
        "regression", "output head", ("regression", "classification", "ordinal")
    )
    output_activation: str = _option(
        "relu", "activation of the regression output", ("relu", "linear")
    )
    gender_head: bool = _option(False, "also predict gender (multi-task)")
    attribute_inputs: bool = _option(
        False, "give gender and race to the model as inputs"
    )
    distribution_head: Optional[bool] = _option(
        None,
        "train a softmax over ages on soft labels beside the ReLU output, as a teacher "
        "of the shared features (regression head only)",
    )
    image_size: Optional[int] = _option(None, "input side in pixels")
    # Optimisation.
    batch_size: Optional[int] = _option(None, "images per step")
    epochs: Optional[int] = _option(None, "epochs (a time budget fits them instead)")
    optimizer: Optional[str] = _option(
        None, "adamw or rmsprop (the course's)", ("adamw", "rmsprop")
    )
    learning_rate: Optional[float] = _option(None, "peak learning rate")
    schedule: Optional[str] = _option(
        None, "warm-up + cosine decay, or constant", ("cosine", "constant")
    )
    warmup_epochs: Optional[float] = _option(None, "linear warm-up length in epochs")
    weight_decay: Optional[float] = _option(None, "decoupled weight decay (AdamW)")
    loss: str = _option("l1", "regression loss", ("l1", "huber", "l2"))
    augment: Optional[bool] = _option(None, "flip, crop/shift, brightness/contrast")
    patience: Optional[int] = _option(
        None, "early stopping: epochs without a better val MAE"
    )
    ema: Optional[float] = _option(
        None,
        "momentum of an average of the weights, which is validated and saved; 0: off",
    )
    tta: Optional[bool] = _option(
        None, "test metrics average each face's prediction with its mirror image's"
    )
    seed: int = _option(
        0, "seeds training (initialisation, order, augmentation), never the split"
    )
    time_budget: Optional[float] = _option(
        None, "minutes for the whole run: epochs and schedule fitted to it"
    )
    # Devices: None means on with a GPU, off on a CPU.
    mixed_precision: Optional[bool] = _option(None, "mixed_float16 compute")
    jit_compile: Optional[bool] = _option(None, "XLA-compile the train and test steps")
    # Output.
    out: str = _option(
        "runs/default", "folder for model.keras, metrics, history, checkpoints"
    )


# Everything a preset sets, in one table: the network (its architecture and input size) and
# how it is trained. A TrainConfig's `None` fields are filled from here.
PRESETS = {
    # About 76 MFLOPs per 96-pixel image: 50 epochs took about 20 minutes for the whole
    # command on 2 CPU cores with AVX-512, and 96 px beat 80 px for the same time. The
    # average of the weights and the mirror images each took 0.05-0.2 years off the MAE in
    # the run of answers.md ("Accuracy, round 2"); the teacher head did not help there.
    "cpu": dict(
        arch="age_cnn",
        image_size=96,
        network=dict(
            widths=(32, 64, 128, 256),
            blocks_per_stage=(1, 1, 1, 1),
            stem_stride=2,
            head_units=128,
            dropout=0.3,
        ),
        batch_size=64,
        epochs=50,
        optimizer="adamw",
        learning_rate=3e-3,
        schedule="cosine",
        warmup_epochs=1.0,
        weight_decay=5e-4,
        augment=True,
        patience=10,
        distribution_head=False,
        ema=0.999,
        tta=True,
    ),
    # For a Colab GPU: a ResNet-18-sized body at 128 px (about 1.1 GFLOPs per image).
    "gpu": dict(
        arch="age_cnn",
        image_size=128,
        network=dict(
            widths=(64, 128, 256, 512),
            blocks_per_stage=(2, 2, 2, 2),
            stem_stride=2,
            head_units=256,
            dropout=0.3,
        ),
        batch_size=128,
        epochs=60,
        optimizer="adamw",
        learning_rate=2e-3,
        schedule="cosine",
        warmup_epochs=2.0,
        weight_decay=5e-4,
        augment=True,
        patience=12,
        distribution_head=False,
        ema=0.999,
        tta=True,
    ),
}
# The course's network and settings, used when --arch course_cnn is asked for without more
# flags: 200 px, RMSprop 1e-3, batch 64, 20 epochs, no augmentation.
COURSE_SETTINGS = dict(
    image_size=200,
    batch_size=64,
    epochs=20,
    optimizer="rmsprop",
    learning_rate=1e-3,
    schedule="constant",
    warmup_epochs=0.0,
    weight_decay=0.0,
    augment=False,
    patience=20,
    distribution_head=False,
    ema=0.0,
    tta=False,
)


def has_gpu():
    """True when TensorFlow sees a GPU."""
    return bool(tf.config.list_physical_devices("GPU"))


def resolve_config(config):
    """Fill every `None` of a TrainConfig from its preset (and the course settings)."""
    gpu = has_gpu()
    preset = config.preset or ("gpu" if gpu else "cpu")
    values = {k: v for k, v in PRESETS[preset].items() if k != "network"}
    arch = config.arch or values["arch"]
    if arch == "course_cnn":
        values.update(COURSE_SETTINGS)
    values.update(mixed_precision=gpu, jit_compile=gpu)
    explicit = {
        name: value
        for name, value in dataclasses.asdict(config).items()
        if value is not None
    }
    return dataclasses.replace(
        config, **{**values, **explicit, "preset": preset, "arch": arch}
    )


def run_name(config):
    """A run-folder name that changes with every setting, e.g. "gpu-30min-1a2b3c".

    It starts with the preset (or the course network) and the time budget, for the reader,
    and ends with a hash of all the resolved settings: a rerun with the same settings finds
    its run again and resumes it, and a rerun with other settings starts a new run.
    """
    config = resolve_config(config)
    settings = dataclasses.asdict(config)
    for name in ("data", "out"):
        settings.pop(name)
    parts = ["course" if config.arch == "course_cnn" else config.preset]
    if config.time_budget:
        parts.append(f"{config.time_budget:g}min")
    if config.limit:
        parts.append(f"limit{config.limit}")
    digest = utk_data.stable_hash(json.dumps(settings, sort_keys=True))
    return "-".join(parts + [f"{digest:016x}"[:6]])


# ---------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------


def _hash_order(records):
    return sorted(
        records, key=lambda record: utk_data.stable_hash(Path(record.path).name)
    )


def prepare_data(config):
    """Locate, read and split the records: (train, val, test), limited for quick runs."""
    folder = utk_data.locate(config.data)
    records, _ = utk_data.load_records(folder)
    train, val, test = utk_data.split_records(records)
    if config.limit:
        # File names start with the age, so a limit takes a hash-ordered sample, not the
        # first names in sorted order (which would be the youngest faces).
        small = max(1, config.limit // 8)
        train, val, test = (
            _hash_order(part)[:size]
            for part, size in ((train, config.limit), (val, small), (test, small))
        )
    for name, part in (("train", train), ("val", val), ("test", test)):
        if not part:
            raise ValueError(
                f"the {name} split is empty ({len(records)} images in {folder}): "
                "use more images or a larger --limit"
            )
    return train, val, test


def _evaluation_dataset(images, image_size, batch_size):
    """Batches of (images, labels with gender and race) in order, for validation and tests;
    `images` are records or DecodedImages."""
    return utk_data.make_dataset(
        images, image_size, batch_size, False, with_attributes=True
    )


# ---------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------


@contextmanager
def dtype_policy(mixed):
    """Build models under the mixed_float16 (or float32) policy, or the one named (such as
    "mixed_bfloat16"), then restore the old one."""
    previous = keras.config.dtype_policy().name
    if not isinstance(mixed, str):
        mixed = "mixed_float16" if mixed else "float32"
    keras.config.set_dtype_policy(mixed)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def make_model(config, initial_age=None):
    """The model a TrainConfig describes, built (under the current dtype policy)."""
    config = resolve_config(config)
    options = dict(
        image_size=config.image_size,
        initial_age=initial_age,
        output_activation=config.output_activation,
    )
    if config.arch == "course_cnn":
        return build_model("course_cnn", **options)
    return build_model(
        "age_cnn",
        **PRESETS[config.preset]["network"],
        head=config.head,
        max_age=utk_data.MAX_AGE,
        gender_head=config.gender_head,
        attribute_inputs=config.attribute_inputs,
        distribution_head=config.distribution_head and config.head == "regression",
        **options,
    )


def _head(model):
    # Any Keras model that outputs ages (batch, 1) is a regression model here.
    return getattr(model, "head", "regression")


def _ages(labels):
    return labels["age"] if isinstance(labels, dict) else labels


# ---------------------------------------------------------------------------------------
# The optimizer and the training step
# ---------------------------------------------------------------------------------------


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


def make_optimizer(config, steps_per_epoch):
    """AdamW (or the course's RMSprop) with warm-up + cosine decay or a constant rate."""
    total_steps = max(1, config.epochs * steps_per_epoch)
    warmup_steps = min(int(config.warmup_epochs * steps_per_epoch), total_steps - 1)
    if config.schedule == "cosine":
        learning_rate = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=(
                config.learning_rate * 0.01 if warmup_steps else config.learning_rate
            ),
            decay_steps=total_steps - warmup_steps,
            warmup_target=config.learning_rate if warmup_steps else None,
            warmup_steps=warmup_steps,
        )
    else:
        learning_rate = config.learning_rate
    if config.optimizer == "rmsprop":
        optimizer = keras.optimizers.RMSprop(learning_rate)
    else:
        optimizer = keras.optimizers.AdamW(
            learning_rate, weight_decay=config.weight_decay
        )
        # Decay the kernels only: shrinking batch-norm scales and biases only hurts.
        optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    if config.mixed_precision:
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


class WeightAverage:
    """An exponential moving average of a model's weights, validated and saved in their
    place (Polyak averaging): it smooths out the noise of the last updates."""

    def __init__(self, model, momentum):
        self.momentum = momentum
        # Every float variable: the weights and the batch-norm statistics, not RNG states.
        self.variables = [v for v in model.variables if "float" in str(v.dtype)]
        self.averages = [
            tf.Variable(v, trainable=False, name="average") for v in self.variables
        ]
        self.updates = tf.Variable(0, dtype=tf.int64, trainable=False, name="updates")

    def update(self):
        """Move the averages towards the current weights (inside the train step)."""
        self.updates.assign_add(1)
        count = tf.cast(self.updates, tf.float32)
        # Early on, a shorter memory: the first weights are not worth remembering.
        decay = tf.minimum(self.momentum, (1.0 + count) / (10.0 + count))
        for average, variable in zip(self.averages, self.variables):
            average.assign(decay * average + (1.0 - decay) * variable)

    @contextmanager
    def applied(self):
        """Put the averages in the model's variables for a while, then restore them."""
        saved = [variable.numpy() for variable in self.variables]
        for average, variable in zip(self.averages, self.variables):
            variable.assign(average)
        try:
            yield
        finally:
            for value, variable in zip(saved, self.variables):
                variable.assign(value)


class Trainer:
    """The model, its optimizer, metrics and the compiled train and test steps."""

    def __init__(self, model, optimizer, config):
        self.model, self.optimizer, self.config = model, optimizer, config
        self.average = WeightAverage(model, config.ema) if config.ema else None
        self.train_loss = keras.metrics.Mean(name="loss")
        self.train_mae = keras.metrics.MeanAbsoluteError(name="mae")
        self.val_mae = keras.metrics.MeanAbsoluteError(name="val_mae")
        self.val_rmse = keras.metrics.RootMeanSquaredError(name="val_rmse")
        self.optimizer.build(model.trainable_variables)
        # The steps below, compiled into TensorFlow graphs (and by XLA with jit_compile).
        self.train_step = tf.function(self.train_batch, jit_compile=config.jit_compile)
        self.test_step = tf.function(self.test_batch, jit_compile=config.jit_compile)

    def train_batch(self, images, labels):
        """One training step on a batch: the loss under the tape, its gradients, an update."""
        with tf.GradientTape() as tape:
            # training=True: dropout on, batch norm learns from this batch.
            outputs = self.model(
                model_inputs(self.model, images, labels), training=True
            )
            loss = loss_terms(_head(self.model), outputs, labels, self.config.loss)[
                "total"
            ]
            scaled_loss = self.optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled_loss, self.model.trainable_variables)
        self.optimizer.apply(gradients, self.model.trainable_variables)
        if self.average is not None:
            self.average.update()
        self.train_loss.update_state(loss)
        self.train_mae.update_state(
            _ages(labels), ages_from_outputs(_head(self.model), outputs)
        )
        return loss

    def test_batch(self, images, labels):
        """Predicted ages (batch, 1) of a batch, in inference mode."""
        outputs = self.model(model_inputs(self.model, images, labels), training=False)
        return ages_from_outputs(_head(self.model), outputs)

    def reset_metrics(self):
        """Reset the metrics at the start of an epoch."""
        for metric in (self.train_loss, self.train_mae, self.val_mae, self.val_rmse):
            metric.reset_state()

    @contextmanager
    def evaluated_weights(self):
        """The weights that are validated and saved: the average, when there is one."""
        if self.average is None:
            yield
        else:
            with self.average.applied():
                yield

    def validate(self, dataset):
        """Val MAE and RMSE of the evaluated weights and, when those are an average, the
        val MAE of the trained weights themselves (None without), to show what the average
        adds."""
        trained_mae = self._evaluate(dataset)[0] if self.average is not None else None
        with self.evaluated_weights():
            mae, rmse = self._evaluate(dataset)
        return mae, rmse, trained_mae

    def _evaluate(self, dataset):
        for metric in (self.val_mae, self.val_rmse):
            metric.reset_state()
        for images, labels in dataset:
            predicted = self.test_step(images, labels)
            self.val_mae.update_state(_ages(labels), predicted)
            self.val_rmse.update_state(_ages(labels), predicted)
        return float(self.val_mae.result()), float(self.val_rmse.result())


# ---------------------------------------------------------------------------------------
# Checkpoints: one .npz file written atomically, holding every model and optimizer variable
# (the dropout seed-generator states among them) by name, and the config and history.
# ---------------------------------------------------------------------------------------


def _atomic_write(path, write):
    # The temporary name keeps the suffix: Keras only saves to a name ending in .keras.
    temporary = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    write(temporary)
    with open(temporary, "rb") as file:
        os.fsync(file.fileno())
    os.replace(temporary, path)


def _write_json(path, value):
    def write(temporary):
        temporary.write_text(json.dumps(value, indent=2) + "\n")

    _atomic_write(Path(path), write)


def _variable_names(model, optimizer, average=None):
    """{checkpoint name: variable} of the model and the optimizer.

    A name is the variable's path, e.g. "model/stage1_block1/conv1/kernel", with the names
    that Keras numbers per process (the model's "age_cnn_1", the optimizer's "adam_w_2",
    "seed_generator_3") replaced by their role, so that the same model built in another
    process, or after another model, has the same names.
    """
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    roles = [(model.name, "model"), (optimizer.name, "optimizer")]
    roles.append((inner.name, "inner_optimizer"))
    names = {}
    for role, variables in (("model", model.variables), ("", optimizer.variables)):
        for variable in variables:
            path = re.sub(r"seed_generator_\d+", "seed_generator", variable.path)
            for name, stand_in in roles:
                path = re.sub(rf"(?<![\w]){re.escape(name)}(?=[/_])", stand_in, path)
            if role and not path.startswith(role + "/"):
                path = f"{role}/{path}"  # A seed generator's state, say.
            # Two unnamed objects of one kind (two dropout layers) keep their order.
            unique, count = path, 1
            while unique in names:
                count += 1
                unique = f"{path}#{count}"
            names[unique] = variable
    if average is not None:
        model_names = {id(variable): name for name, variable in names.items()}
        for mean, variable in zip(average.averages, average.variables):
            names["average/" + model_names[id(variable)]] = mean
        names["average/updates"] = average.updates
    return names


def save_checkpoint(folder, model, optimizer, config, history, average=None):
    """Save model, optimizer, weight average, config and history, so that a kill at any
    moment keeps the last good checkpoint."""
    arrays = {
        name: variable.numpy()
        for name, variable in _variable_names(model, optimizer, average).items()
    }
    state = {"config": dataclasses.asdict(config), "history": history}
    arrays["state"] = np.array(json.dumps(state))

    def write(path):
        with open(path, "wb") as file:
            np.savez(file, **arrays)

    _atomic_write(Path(folder) / CHECKPOINT, write)


class Checkpoint(NamedTuple):
    """A checkpoint file read into memory."""

    path: Path
    config: dict  # the TrainConfig of the run, as a dict
    history: list  # one dict per finished epoch
    arrays: dict  # {name: array} of every variable


def read_checkpoint(folder):
    """The checkpoint in `folder`, or None when there is none."""
    path = Path(folder) / CHECKPOINT
    if not path.exists():
        return None
    with np.load(path) as archive:
        arrays = {name: archive[name] for name in archive.files}
    state = json.loads(str(arrays.pop("state")))
    return Checkpoint(path, state["config"], state["history"], arrays)


def restore_checkpoint(checkpoint, model, optimizer, average=None):
    """Assign a checkpoint's variables to model, optimizer (and weight average), refusing
    any mismatch."""
    variables = _variable_names(model, optimizer, average)
    wanted = {name: tuple(variable.shape) for name, variable in variables.items()}
    saved = {name: array.shape for name, array in checkpoint.arrays.items()}
    if wanted != saved:
        different = sorted(
            name
            for name in wanted.keys() | saved.keys()
            if wanted.get(name) != saved.get(name)
        )
        raise ValueError(
            f"{checkpoint.path} was saved from another model or optimizer: "
            f"{len(different)} variable(s) differ in name or shape, e.g. "
            f"{', '.join(different[:3])}. Resume it with the command that started it, "
            "or choose another --out"
        )
    for name, variable in variables.items():
        variable.assign(checkpoint.arrays[name])


class Progress(NamedTuple):
    """Where a run stands, derived from its history."""

    epochs_run: int
    best_epoch: Optional[int]
    best_val_mae: Optional[float]
    bad_epochs: int  # epochs since the best one
    train_seconds: float
    finished: bool


def progress(history, config):
    """The run's progress from its history: best epoch, patience used, finished or not."""
    if not history:
        return Progress(0, None, None, 0, 0.0, False)
    best = min(history, key=lambda row: row["val_mae"])  # The first of equal ones.
    bad_epochs = len(history) - best["epoch"]
    return Progress(
        epochs_run=len(history),
        best_epoch=best["epoch"],
        best_val_mae=best["val_mae"],
        bad_epochs=bad_epochs,
        train_seconds=sum(row["seconds"] for row in history),
        finished=len(history) >= config.epochs or bad_epochs >= config.patience,
    )


# ---------------------------------------------------------------------------------------
# The time budget
# ---------------------------------------------------------------------------------------


def _training_dataset(train_images, config, seed, start_epoch=0, epochs=None):
    """Shuffled, augmented training batches from start_epoch on (see make_dataset)."""
    return utk_data.make_dataset(
        train_images,
        config.image_size,
        config.batch_size,
        True,
        augment=config.augment,
        with_attributes=True,
        seed=seed,
        start_epoch=start_epoch,
        epochs=epochs,
    )


def _measure_seconds_per_step(config, train_images, initial_age, batches=8):
    """Time a few steps of a throwaway copy of the model (it does not touch the real one)."""
    with dtype_policy(config.mixed_precision):
        model = make_model(config, initial_age)
    trainer = Trainer(model, make_optimizer(config, 1), config)
    iterator = iter(_training_dataset(train_images, config, seed=config.seed + 1))
    trainer.train_step(*next(iterator))  # Traces and compiles.
    start = time.perf_counter()
    for _ in range(batches):
        float(trainer.train_step(*next(iterator)))
    return (time.perf_counter() - start) / batches


# The measured steps of the throwaway model ran about 4 % faster than the steady state of the
# real run (1.34 against 1.40 s per step, GPU preset on 2 CPU cores; answers.md): plan with
# a margin so that a budgeted run ends inside its budget.
SPEED_MARGIN = 1.05


def epochs_for_budget(
    budget_seconds, elapsed_seconds, seconds_per_step, steps, val_steps
):
    """Whole epochs that fit in what is left of the budget, and the seconds of one epoch."""
    # A test step costs about a third of a train step; validation runs every epoch.
    epoch_seconds = SPEED_MARGIN * seconds_per_step * (steps + val_steps / 3)
    # Keep back time for the final test evaluation and for saving.
    remaining = budget_seconds - elapsed_seconds - 2 * epoch_seconds / 3 - 30
    return max(1, int(remaining // epoch_seconds)), epoch_seconds


def fit_to_time_budget(config, train_images, val_records, initial_age, started):
    """Epochs that fit the time budget, from the measured speed of train and test steps."""
    seconds_per_step = _measure_seconds_per_step(config, train_images, initial_age)
    epochs, epoch_seconds = epochs_for_budget(
        config.time_budget * 60,
        time.perf_counter() - started,
        seconds_per_step,
        utk_data.steps_per_epoch(len(train_images.records), config.batch_size),
        math.ceil(len(val_records) / config.batch_size),
    )
    print(
        f"time budget {config.time_budget:g} min: {seconds_per_step:.3f} s/step, "
        f"{epoch_seconds:.0f} s/epoch -> {epochs} epochs"
    )
    return epochs


# ---------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------


@dataclass
class Run:
    """What `train` returns: the best model, its history, metrics and test predictions."""

    model: object
    config: TrainConfig
    history: list
    metrics: dict
    test: "Predictions"


def train(config, verbose=1):
    """Train (or resume) a model as `config` says; return the best model and its metrics."""
    started = time.perf_counter()
    config = resolve_config(config)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    train_records, val_records, test_records = prepare_data(config)
    initial_age = float(np.mean([record.age for record in train_records]))
    checkpoint = read_checkpoint(out)
    if checkpoint is not None:
        _check_same_run(checkpoint.config, config, out)
        # The epochs fitted to a time budget are part of the run: a resume keeps them.
        config = TrainConfig(**checkpoint.config)
    # Decoded once, in memory for the whole run: every epoch, and the speed measurement.
    train_images = utk_data.decode_records(train_records, config.image_size)
    if checkpoint is None and config.time_budget:
        epochs = fit_to_time_budget(
            config, train_images, val_records, initial_age, started
        )
        config = dataclasses.replace(config, epochs=epochs)

    keras.utils.set_random_seed(config.seed)
    with dtype_policy(config.mixed_precision):
        model = make_model(config, initial_age)
    steps = utk_data.steps_per_epoch(len(train_images.records), config.batch_size)
    trainer = Trainer(model, make_optimizer(config, steps), config)
    history = []
    if checkpoint is not None:
        restore_checkpoint(checkpoint, model, trainer.optimizer, trainer.average)
        history = checkpoint.history
        print(f"resuming {out} after epoch {len(history)} of {config.epochs}")
    if not progress(history, config).finished:
        _train_epochs(trainer, history, out, train_images, val_records, steps, verbose)
    del train_images  # Frees the decoded training images before the test.
    return _finish(config, history, out, (train_records, val_records, test_records))


def _check_same_run(saved, config, out):
    current = dataclasses.asdict(config)
    ignored = {"data", "out", "epochs"} if config.time_budget else {"data", "out"}
    different = sorted(
        k for k in current if k not in ignored and saved.get(k) != current[k]
    )
    if different:
        raise ValueError(
            f"{out} holds a run with other settings ({', '.join(different)}): resume it with "
            "the same command, or choose another --out"
        )


def _train_epochs(trainer, history, out, train_images, val_records, steps, verbose):
    """Run the remaining epochs of `steps` batches; after each, save the best model and a
    checkpoint."""
    config = trainer.config
    start = len(history)
    batches = iter(
        _training_dataset(train_images, config, config.seed, start, config.epochs)
    )
    val_dataset = _evaluation_dataset(val_records, config.image_size, config.batch_size)
    for epoch in range(start, config.epochs):
        history.append(
            _run_epoch(trainer, batches, steps, val_dataset, epoch, out, verbose)
        )
        state = progress(history, config)
        if state.best_epoch == epoch + 1:
            with trainer.evaluated_weights():
                _atomic_write(out / "model.keras", trainer.model.save)
        save_checkpoint(
            out, trainer.model, trainer.optimizer, config, history, trainer.average
        )
        _write_json(out / "history.json", history)
        if state.finished:
            if state.bad_epochs >= config.patience and verbose:
                print(f"early stop: no better val MAE for {config.patience} epochs")
            break


def _run_epoch(trainer, batches, steps, val_dataset, epoch, out, verbose):
    """Train one epoch of `steps` batches, validate, and return the epoch's history row."""
    epoch_start = time.perf_counter()
    trainer.reset_metrics()
    progress_bar = keras.utils.Progbar(
        steps, verbose=verbose, stateful_metrics=["loss", "mae"]
    )
    if verbose:
        print(f"epoch {epoch + 1}/{trainer.config.epochs}")
    for step in range(steps):
        loss = float(trainer.train_step(*next(batches)))
        if not math.isfinite(loss):
            raise TrainingDiverged(
                f"the loss became {loss} at epoch {epoch + 1}, step {step + 1}: stopped; "
                f"the last good checkpoint in {out} is kept (try a lower --learning-rate)"
            )
        progress_bar.update(
            step + 1,
            [
                ("loss", float(trainer.train_loss.result())),
                ("mae", float(trainer.train_mae.result())),
            ],
        )
    val_mae, val_rmse, trained_mae = trainer.validate(val_dataset)
    seconds = time.perf_counter() - epoch_start
    row = {
        "epoch": epoch + 1,
        "loss": float(trainer.train_loss.result()),
        "mae": float(trainer.train_mae.result()),
        "val_mae": val_mae,
        "val_rmse": val_rmse,
        "learning_rate": float(_current_learning_rate(trainer.optimizer)),
        "seconds": seconds,
    }
    if trained_mae is not None:
        row["val_mae_without_ema"] = trained_mae
    if verbose:
        without = f" (without EMA {trained_mae:.3f})" if trained_mae is not None else ""
        print(
            f"val_mae {val_mae:.3f}{without}  val_rmse {val_rmse:.3f}  ({seconds:.0f} s)"
        )
    return row


def _current_learning_rate(optimizer):
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    return inner.learning_rate


def _readouts(model, config, splits):
    """Both readouts of the best weights, with and without the mirror images, each split
    decoded once: ({"val_mae_tta": ..., ...}, {column: test Predictions}, the configured
    readout's test Predictions, {column: quantiles} of a classification head). A model
    with gender and race inputs is also read out with them "unknown", as for a new photo.
    """
    readouts, test_readouts, intervals = {}, {}, {}
    for split, records in (("val", splits[1]), ("test", splits[2])):
        images = utk_data.decode_records(records, config.image_size)
        for tta in (False, True):
            found = predict_records(model, images, config.batch_size, tta=tta)
            readouts[f"{split}_mae_{'tta' if tta else 'no_tta'}"] = (
                evaluate_predictions(*found[1:3])["mae"]
            )
            if split != "test":
                continue
            test_readouts[PREDICTION_COLUMNS[tta]] = found
            if tta == bool(config.tta):
                predictions = found
            if config.attribute_inputs:
                unknown = predict_records(
                    model, images, config.batch_size, attributes_known=False, tta=tta
                )
                test_readouts[UNKNOWN_ATTRIBUTES_COLUMNS[tta]] = unknown
                if tta == bool(config.tta):
                    readouts["test_mae_attributes_unknown"] = evaluate_predictions(
                        *unknown[1:3]
                    )["mae"]
        if split == "test" and config.head == "classification":
            intervals = predict_quantiles(model, images, config.batch_size)
    return readouts, test_readouts, predictions, intervals


def _finish(config, history, out, splits):
    """Evaluate the best model on the test split and write metrics.json."""
    model = keras.models.load_model(out / "model.keras")
    readouts, test_readouts, predictions, intervals = _readouts(model, config, splits)
    test = evaluate_predictions(*predictions[1:])
    state = progress(history, config)
    metrics = {
        "test_mae": test["mae"],
        "test_rmse": test["rmse"],
        "tta": config.tta,
        "ema": config.ema,
        "precision": "mixed_float16" if config.mixed_precision else "float32",
        "onednn": onednn_enabled(),
        "cpu_bfloat16_units": bfloat16_units(),
        **readouts,
        "val_mae": state.best_val_mae,
        # With EMA: the best val MAE the trained weights reached without the average.
        "val_mae_without_ema": min(
            (
                row["val_mae_without_ema"]
                for row in history
                if "val_mae_without_ema" in row
            ),
            default=None,
        ),
        "best_epoch": state.best_epoch,
        "epochs_run": state.epochs_run,
        "epochs_planned": config.epochs,
        "train_seconds": state.train_seconds,
        "test_images": test["count"],
        "train_images": len(splits[0]),
        "val_images": len(splits[1]),
        "command": (
            " ".join(sys.argv) if Path(sys.argv[0]).name == "train_loop.py" else None
        ),
        "machine": describe_machine(),
        "tensorflow": tf.__version__,
        "config": dataclasses.asdict(config),
        # By age, gender and race; negative and zero predictions (Task 2).
        **{
            f"test_{key}": value
            for key, value in test.items()
            if key not in ("mae", "rmse", "count")
        },
    }
    _write_json(out / "metrics.json", metrics)
    write_predictions(out / PREDICTIONS, test_readouts, intervals)
    print(
        f"test MAE {test['mae']:.3f} years, RMSE {test['rmse']:.3f} "
        f"(best epoch {state.best_epoch}, {state.train_seconds / 60:.1f} min of training)"
    )
    return Run(model, config, history, metrics, predictions)


# ---------------------------------------------------------------------------------------
# Metrics and figures
# ---------------------------------------------------------------------------------------


def _cpu_info(key):
    """The value of the first `key` line of Linux's /proc/cpuinfo, or None elsewhere."""
    try:
        with open("/proc/cpuinfo") as file:
            line = next((line for line in file if line.startswith(key)), None)
    except OSError:
        return None
    return line.split(":", 1)[1].strip() if line else None


def bfloat16_units():
    """The processor's bfloat16 matrix features (Intel AMX, AVX512-BF16) that Linux lists,
    such as ["amx_bf16", "avx512_bf16"]; [] without them or elsewhere."""
    flags = set((_cpu_info("flags") or "").split())
    return sorted(flags & {"amx_bf16", "avx512_bf16"})


def onednn_enabled():
    """Whether TensorFlow runs its oneDNN CPU kernels (None if it cannot tell)."""
    try:
        from tensorflow.python.util import _pywrap_util_port
    except ImportError:
        return None
    return bool(_pywrap_util_port.IsMklEnabled())


def describe_machine():
    """One line: the processor, its cores, the GPU and the software versions."""
    processor = _cpu_info("model name") or platform.processor() or platform.machine()
    gpus = [device.name for device in tf.config.list_physical_devices("GPU")]
    return (
        f"{os.cpu_count()} CPU cores ({processor}, {platform.machine()}), "
        f"{'GPU ' + ', '.join(gpus) if gpus else 'no GPU'}; TensorFlow {tf.__version__}, "
        f"Keras {keras.__version__}, Python {platform.python_version()}"
    )


class Predictions(NamedTuple):
    """Predicted ages paired with the records they belong to."""

    records: list  # the records whose image decoded, in order
    true: np.ndarray  # (n,)
    predicted: np.ndarray  # (n,)
    groups: dict  # "gender" and "race" labels, (n,) each


def _mirrored(inputs):
    """The same inputs with every image mirrored left to right."""
    if isinstance(inputs, dict):
        return {**inputs, "image": tf.reverse(inputs["image"], axis=[2])}
    return tf.reverse(inputs, axis=[2])


# The compiled predictors of each live model, so that repeated predictions trace once.
_predictors = weakref.WeakKeyDictionary()


def age_predictor(model, tta=False):
    """A compiled function from model inputs to ages (batch, 1); with `tta`, the mean of the
    ages predicted for each image and for its mirror image (test-time augmentation)."""
    compiled = _predictors.setdefault(model, {})
    if tta not in compiled:
        compiled[tta] = _compile_predictor(model, tta)
    return compiled[tta]


def _compile_predictor(model, tta):
    @tf.function  # A def, not a lambda: autograph cannot read a lambda's source here.
    def predict(inputs):
        ages = ages_from_outputs(_head(model), model(inputs, training=False))
        if not tta:
            return ages
        mirrored = model(_mirrored(inputs), training=False)
        return (ages + ages_from_outputs(_head(model), mirrored)) / 2.0

    return predict


def predict_dataset(
    model, dataset, with_groups=False, attributes_known=True, tta=False
):
    """True and predicted ages, (n,) each, over a dataset of (images, labels).

    With with_groups=True, also a dict of the gender and race labels, (n,) each (empty when
    the dataset has no attributes), from the same single pass over the dataset. A model with
    attribute inputs gets the true gender and race, or "unknown" with attributes_known=False.
    """
    predict = age_predictor(model, tta)
    true, predicted, groups = [], [], {"gender": [], "race": []}
    for images, labels in dataset:
        given = labels if attributes_known and isinstance(labels, dict) else None
        predicted.append(predict(model_inputs(model, images, given)).numpy()[:, 0])
        true.append(_ages(labels).numpy()[:, 0])
        if isinstance(labels, dict):
            for name in groups:
                groups[name].append(labels[name].numpy())
    ages = np.concatenate(true), np.concatenate(predicted)
    if not with_groups:
        return ages
    return (
        *ages,
        {name: np.concatenate(values) for name, values in groups.items() if values},
    )


def predict_records(model, records, batch_size=64, attributes_known=True, tta=False):
    """Predict the ages of records (or of DecodedImages, decoded before); a face whose image
    fails to decode is left out (warned)."""
    decoded = records
    if not isinstance(records, utk_data.DecodedImages):
        decoded = utk_data.decode_records(records, model.image_size)
    dataset = _evaluation_dataset(decoded, model.image_size, batch_size)
    true, predicted, groups = predict_dataset(
        model, dataset, True, attributes_known=attributes_known, tta=tta
    )
    return Predictions(decoded.records, true, predicted, groups)


def _mae_by(true, predicted, masks):
    """{name: {"mae", "mean_error", "count"}} of the faces each boolean mask selects;
    "mean_error" is the mean of predicted - true age: a pull towards the middle ages shows
    as positive errors for the young and negative ones for the old."""
    errors = predicted - true
    return {
        name: {
            "mae": float(np.abs(errors[inside]).mean()) if inside.any() else None,
            "mean_error": float(errors[inside].mean()) if inside.any() else None,
            "count": int(inside.sum()),
        }
        for name, inside in masks.items()
    }


def mae_by_age(true, predicted):
    """MAE and mean signed error per age bin (0-9, ..., 80+):
    {bin: {"mae", "mean_error", "count"}}."""
    masks = {
        utk_data.age_bin_name(low, high): (true >= low) & (true <= high)
        for low, high in utk_data.AGE_BINS
    }
    return _mae_by(true, predicted, masks)


def evaluate_predictions(true, predicted, groups=None):
    """MAE, RMSE and MAE by age bin (and by gender and race, when labelled) of predictions."""
    errors = predicted - true
    result = {
        "mae": float(np.abs(errors).mean()),
        "rmse": float(np.sqrt((errors**2).mean())),
        "mae_by_age": mae_by_age(true, predicted),
        "count": int(true.size),
        # Task 2: a linear output can predict negative ages; a ReLU output clips them to 0.
        "negative_predictions": int(np.sum(predicted < 0)),
        "zero_predictions": int(np.sum(predicted == 0)),
    }
    names = {"gender": utk_data.GENDERS, "race": utk_data.RACES}
    for group, labels in (groups or {}).items():
        masks = {name: labels == index for index, name in enumerate(names[group])}
        result[f"mae_by_{group}"] = _mae_by(true, predicted, masks)
    return result


def median_baseline(train_records, test_records):
    """Test MAE and RMSE of predicting the median training age for every face."""
    median = float(np.median([record.age for record in train_records]))
    errors = np.array([record.age for record in test_records], np.float64) - median
    return {
        "median_age": median,
        "mae": float(np.abs(errors).mean()),
        "rmse": float(np.sqrt((errors**2).mean())),
        "count": int(errors.size),
    }


def predict_ages(model, images, batch_size=64, tta=False):
    """Predicted ages (n,) for float images in [0, 1] of the model's input size (with `tta`,
    averaged with their mirror images'); gender and race, if the model takes them, unknown.
    """
    predict = age_predictor(model, tta)
    ages = [
        predict(model_inputs(model, images[start : start + batch_size]))
        for start in range(0, len(images), batch_size)
    ]
    return np.concatenate([batch.numpy()[:, 0] for batch in ages])


def save_fig(figure, file_name):
    """Save a figure as every figure of this project is saved."""
    figure.savefig(file_name, dpi=120, bbox_inches="tight")


def plot_history(history, file_name=None):
    """Training and validation MAE per epoch; with an average of the weights, the
    validation MAE of the average and of the weights it averages."""
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    averaged = any(row.get("val_mae_without_ema") is not None for row in history)
    figure, axes = plt.subplots(figsize=(6, 4))
    axes.plot(epochs, [row["mae"] for row in history], label="train MAE (augmented)")
    if averaged:
        axes.plot(
            epochs,
            [row.get("val_mae_without_ema") for row in history],
            label="validation MAE, trained weights",
            alpha=0.6,
        )
    axes.plot(
        epochs,
        [row["val_mae"] for row in history],
        label=(
            "validation MAE, average of the weights" if averaged else "validation MAE"
        ),
    )
    axes.set_xlabel("epoch")
    axes.set_ylabel("MAE (years)")
    axes.legend()
    axes.grid(alpha=0.3)
    if file_name:
        save_fig(figure, file_name)
    return figure


def plot_evaluation(true, predicted, file_name=None):
    """Predicted against true age, and the MAE of each age bin."""
    import matplotlib.pyplot as plt

    figure, (scatter, bars) = plt.subplots(1, 2, figsize=(11, 4.2))
    scatter.scatter(true, predicted, s=4, alpha=0.3)
    scatter.plot([0, utk_data.MAX_AGE], [0, utk_data.MAX_AGE], color="black", lw=1)
    scatter.set_xlabel("true age")
    scatter.set_ylabel("predicted age")
    bins = mae_by_age(true, predicted)
    names = [name for name, row in bins.items() if row["count"]]
    bars.bar(names, [bins[name]["mae"] for name in names])
    bars.set_xlabel("true age")
    bars.set_ylabel("MAE (years)")
    for index, name in enumerate(names):
        bars.annotate(
            f"n={bins[name]['count']}", (index, 0), ha="center", va="bottom", fontsize=7
        )
    figure.tight_layout()
    if file_name:
        save_fig(figure, file_name)
    return figure


def plot_worst(records, true, predicted, count=8, image_size=100):
    """The faces with the largest errors, titled true -> predicted (shown, never saved)."""
    import matplotlib.pyplot as plt

    worst = np.argsort(-np.abs(predicted - true))[:count]
    images = utk_data.load_images([records[i].path for i in worst], image_size).numpy()
    figure, axes = plt.subplots(
        1, len(worst), figsize=(1.6 * len(worst), 2.0), squeeze=False
    )
    for axis, index, image in zip(axes[0], worst, images):
        axis.imshow(image)
        axis.set_title(f"{true[index]:.0f} → {predicted[index]:.0f}", fontsize=9)
        axis.axis("off")
    return figure


def plot_photo(picture, rows):
    """A picture with the faces found in it boxed, and each face as the model saw it, with
    its predicted age (rows from `predict_paths`)."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    faces = [row for row in rows if row.box]
    figure, axes = plt.subplots(
        1, 1 + len(faces), figsize=(4 + 2.2 * len(faces), 4), squeeze=False
    )
    axes = axes[0]
    axes[0].imshow(picture)
    for row in faces:
        x, y, width, height = row.box
        axes[0].add_patch(
            Rectangle((x, y), width, height, fill=False, color="yellow", lw=2)
        )
    titles = {"face": f"{len(faces)} face(s) found", "no face found": "no face found"}
    if rows and rows[0].crop == "as is":
        titles["as is"] = f"a face crop already: {rows[0].age:.0f} years"
    axes[0].set_title(titles[rows[0].crop] if rows else "could not be read")
    for axis, row in zip(axes[1:], faces):
        axis.imshow(utk_data.crop_frame(picture, row.frame))
        axis.set_title(f"predicted age: {row.age:.0f}")
    for axis in axes:
        axis.axis("off")
    return figure


def save_figures(model_path, true, predicted, folder):
    """Save the evaluation plot, and the learning curve of the run beside the model."""
    import matplotlib

    matplotlib.use("Agg")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    plot_evaluation(true, predicted, folder / "evaluation.png")
    history = Path(model_path).parent / "history.json"
    if history.exists():
        plot_history(json.loads(history.read_text()), folder / "learning_curve.png")
    print(f"saved figures in {folder}")


# ---------------------------------------------------------------------------------------
# Results: per-face predictions, seeds, intervals and the report
# ---------------------------------------------------------------------------------------

# Every run writes its test predictions here, beside metrics.json: a row per test face.
PREDICTIONS = "test_predictions.csv"
# The prediction columns, by whether the mirror images were averaged in (test-time flip).
PREDICTION_COLUMNS = {False: "predicted_no_tta", True: "predicted_tta"}
# A model with gender and race inputs given "unknown" for them (Optional task).
UNKNOWN_ATTRIBUTES_COLUMNS = {
    tta: f"{column}_attributes_unknown" for tta, column in PREDICTION_COLUMNS.items()
}


def face_id(path):
    """A short, stable name for a face in published results: the first 12 hex digits of
    the SHA-256 of its file name (the name itself holds the date the photo was taken).
    """
    return hashlib.sha256(Path(path).name.encode()).hexdigest()[:12]


def write_predictions(path, readouts, extra=None):
    """Write a CSV row per face: face (face_id), age, gender, race (empty when unknown),
    then one column of predicted ages per entry of `readouts`, {column: Predictions},
    every entry holding the same faces in the same order, and the columns of `extra`,
    {column: (faces,) array} in that order too (such as a head's age quantiles)."""
    columns = {name: found.predicted for name, found in readouts.items()}
    columns.update(extra or {})
    first = next(iter(readouts.values()))
    if any(len(values) != len(first.records) for values in columns.values()):
        raise ValueError("every column must hold the same faces")

    def write(temporary):
        with open(temporary, "w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(["face", "age", "gender", "race", *columns])
            for index, record in enumerate(first.records):
                labels = ["" if label is None else label for label in record[2:4]]
                ages = [f"{values[index]:.4f}" for values in columns.values()]
                writer.writerow([face_id(record.path), record.age, *labels, *ages])

    _atomic_write(Path(path), write)


def read_predictions(path):
    """The columns of a predictions CSV: {"face": str array, "age": float array,
    "gender"/"race": float arrays (NaN unknown), and one float array per prediction}."""
    with open(path, newline="") as file:
        rows = list(csv.DictReader(file))
    if not rows:
        raise ValueError(f"{path}: no predictions")
    columns = {"face": np.array([row["face"] for row in rows])}
    for name in rows[0]:
        if name != "face":
            values = [row[name] if row[name] != "" else "nan" for row in rows]
            columns[name] = np.array(values, np.float64)
    return columns


def run_predictions(folder, column=None):
    """(faces, true ages, predicted ages) of a finished run's test faces, from its CSV;
    by default the readout the run reports (with the mirror images if it used them)."""
    folder = Path(folder)
    if not (folder / PREDICTIONS).exists():
        raise FileNotFoundError(
            f"{folder} has no {PREDICTIONS}; write it with `python train_loop.py "
            f"evaluate --model {folder / 'model.keras'} --predictions "
            f"{folder / PREDICTIONS}`"
        )
    if column is None:
        metrics = json.loads((folder / "metrics.json").read_text())
        column = PREDICTION_COLUMNS[bool(metrics.get("tta"))]
    table = read_predictions(folder / PREDICTIONS)
    if column not in table:
        raise ValueError(f"{folder / PREDICTIONS} has no column {column}")
    return table["face"], table["age"], table[column]


# The quantiles of a classification head's age distribution kept per test face: the 50 %
# and 90 % central intervals, whose calibration the report shows.
INTERVALS = {"50 %": (0.25, 0.75), "90 %": (0.05, 0.95)}


def _quantile_column(quantile):
    return f"q{round(quantile * 100):02d}"


def predict_quantiles(model, images, batch_size=64):
    """{"q05", "q25", "q75", "q95": (faces,) ages} of a classification head's predicted
    distribution for DecodedImages (each image alone, not averaged with its mirror)."""
    quantiles = sorted({q for bounds in INTERVALS.values() for q in bounds})
    found = []
    for batch, labels in _evaluation_dataset(images, model.image_size, batch_size):
        inputs = model_inputs(
            model, batch, labels
        )  # true gender and race, if it takes them
        logits = model(inputs, training=False)["logits"]
        found.append(keras.ops.convert_to_numpy(age_quantiles(logits, quantiles)))
    found = np.concatenate(found)
    return {_quantile_column(q): found[:, i] for i, q in enumerate(quantiles)}


def paired_bootstrap(true, first, second, resamples=10_000, level=0.95, seed=0):
    """MAE(second) - MAE(first) on the same faces, and its bootstrap interval.

    The faces are drawn with replacement, each keeping its two predictions together, so
    that how hard a face is counts for both models alike and only their difference varies.
    `first` and `second` are (faces,) or (seeds, faces) arrays; with several seeds, a
    variant's error on a face is the mean of its seeds' errors. Returns (difference, low,
    high); `level` of the resampled differences lie between low and high.
    """
    true = np.asarray(true, np.float64)

    def face_errors(predicted):
        predicted = np.atleast_2d(np.asarray(predicted, np.float64))
        if predicted.shape[1] != true.size:
            raise ValueError(f"{predicted.shape[1]} predictions for {true.size} faces")
        return np.abs(predicted - true).mean(axis=0)

    differences = face_errors(second) - face_errors(first)
    generator = np.random.default_rng(seed)
    means = []
    for start in range(
        0, resamples, 1000
    ):  # 1000 resamples at a time bound the memory.
        picks = generator.integers(
            0, true.size, (min(1000, resamples - start), true.size)
        )
        means.append(differences[picks].mean(axis=1))
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(np.concatenate(means), [tail, 100 - tail])
    return float(differences.mean()), float(low), float(high)


class Variant(NamedTuple):
    """One row of a comparison: runs of the same settings with different seeds, and which
    of their readouts the row reports."""

    label: str
    folders: list
    # The metrics.json entry of the row's validation MAE; None: the row has none of its own.
    val: Optional[str] = "val_mae"
    test: Optional[str] = None  # a prediction column; None: each run's own readout
    has_test: bool = True  # False: the row has no test predictions (only validation)


def _variant_key(metrics, folder):
    """Runs whose settings differ only in seed, output folder or data path are one variant;
    a run without recorded settings is a variant of its own."""
    config = metrics.get("config")
    if config is None:
        return str(folder)
    return json.dumps(
        {k: v for k, v in config.items() if k not in ("seed", "out", "data")},
        sort_keys=True,
    )


def group_runs(folders, labels=None):
    """Variants of the runs in `folders`, in the order first met: runs that differ only in
    their seed are one variant. Labels default to the first run's folder name."""
    groups = {}
    for folder in map(Path, folders):
        metrics = json.loads((folder / "metrics.json").read_text())
        groups.setdefault(_variant_key(metrics, folder), []).append(folder)
    if labels is not None and len(labels) != len(groups):
        raise ValueError(f"{len(labels)} labels for {len(groups)} variants of the runs")
    names = labels or [folders[0].name for folders in groups.values()]
    return [Variant(name, folders) for name, folders in zip(names, groups.values())]


def _mean_sd(values, digits=2, sign=""):
    """'5.06' for one value, '5.06 ± 0.04' (sample standard deviation) for several;
    sign="+" writes the sign of positive means too."""
    values = np.asarray(values, np.float64)
    text = f"{values.mean():{sign}.{digits}f}"
    return text if values.size < 2 else f"{text} ± {values.std(ddof=1):.{digits}f}"


def _test_predictions(variant):
    """(true ages, (seeds, faces) predictions) of a variant's test faces, the faces in the
    same order for every seed; None when a run has no predictions file."""
    if not variant.has_test:
        return None
    found = []
    for folder in variant.folders:
        if not (Path(folder) / PREDICTIONS).exists():
            return None
        found.append(run_predictions(folder, variant.test))
    faces, true = found[0][0], found[0][1]
    order = np.argsort(faces)
    predicted = []
    for other_faces, _, other_predicted in found:
        other_order = np.argsort(other_faces)  # sorted once, to compare and to reorder
        if not np.array_equal(other_faces[other_order], faces[order]):
            raise ValueError(f"the runs of {variant.label!r} predicted different faces")
        predicted.append(other_predicted[other_order])
    return true[order], np.stack(predicted)


def _needed_test_predictions(variant):
    """_test_predictions, or a clear error when a run of the variant has none."""
    found = _test_predictions(variant)
    if found is None:
        raise FileNotFoundError(f"{variant.label!r}: a run has no {PREDICTIONS}")
    return found


def comparison_table(variants, against="first"):
    """A Markdown table of variants: seeds, validation and test MAE (mean ± standard
    deviation over the seeds), and the difference to the first row (against="first") or
    to the row above ("previous"): on validation the mean ± sd of the per-seed differences
    when the seeds match, on test the paired bootstrap 95 % interval over the test faces.
    """
    if against not in ("first", "previous"):
        raise ValueError(f'against must be "first" or "previous", got {against!r}')
    reference = "first row" if against == "first" else "row above"
    lines = [
        f"| | seeds | best val MAE | val MAE − {reference} | test MAE | test MAE − "
        f"{reference} [95 % interval] | epochs | minutes of training |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rows = []
    for index, variant in enumerate(variants):
        metrics = [
            json.loads((Path(folder) / "metrics.json").read_text())
            for folder in variant.folders
        ]
        seeds = [m.get("config", {}).get("seed") for m in metrics]
        val = [m[variant.val] for m in metrics] if variant.val else []
        test = _test_predictions(variant)
        if test:
            test_maes = [float(np.abs(p - test[0]).mean()) for p in test[1]]
        elif variant.has_test and variant.test is None:
            test_maes = [m["test_mae"] for m in metrics]
        else:
            test_maes = []
        row = dict(seeds=seeds, val=val, test=test)
        val_difference = test_difference = "—"
        if index:
            base = rows[0] if against == "first" else rows[-1]
            if base["seeds"] == seeds and None not in seeds and val and base["val"]:
                val_difference = _mean_sd(np.subtract(val, base["val"]), 2, "+")
            if test and base["test"] is not None:
                if not np.array_equal(test[0], base["test"][0]):
                    raise ValueError(f"{variant.label!r} has other test faces")
                shown = paired_bootstrap(test[0], base["test"][1], test[1])
                test_difference = "{:+.2f} [{:+.2f}, {:+.2f}]".format(*shown)
        rows.append(row)
        lines.append(
            f"| {variant.label} | {len(metrics)} | {_mean_sd(val) if val else '—'} | "
            f"{val_difference} | "
            f"{_mean_sd(test_maes) if test_maes else '—'} | {test_difference} | "
            f"{np.mean([m['epochs_run'] for m in metrics]):.0f} | "
            f"{np.mean([m['train_seconds'] for m in metrics]) / 60:.0f} |"
        )
    return "\n".join(lines)


def plot_variants(variants, file_name=None, against="epoch", top=None):
    """The validation MAE of every run, a colour per variant; against="minutes" plots it
    against cumulative training time and marks each run's test MAE at its total time.
    `top` is the highest MAE shown (default: all of it, up to 20 years). A variant without a
    validation MAE of its own (another readout of runs shown already) is left out."""
    import matplotlib.pyplot as plt

    variants = [variant for variant in variants if variant.val is not None]
    if against not in ("epoch", "minutes"):
        raise ValueError(f'against must be "epoch" or "minutes", got {against!r}')
    figure, axes = plt.subplots(figsize=(6.5, 4))
    for color, variant in zip(
        itertools.cycle(plt.rcParams["axes.prop_cycle"].by_key()["color"]), variants
    ):
        for number, folder in enumerate(map(Path, variant.folders)):
            metrics = json.loads((folder / "metrics.json").read_text())
            history = json.loads((folder / "history.json").read_text())
            if against == "epoch":
                steps = [row["epoch"] for row in history]
            else:
                steps = np.cumsum([row["seconds"] for row in history]) / 60
            axes.plot(
                steps,
                [row["val_mae"] for row in history],
                color=color,
                alpha=0.9 if number == 0 else 0.45,
                label=variant.label if number == 0 else None,
            )
            if against == "minutes":
                axes.plot(
                    metrics["train_seconds"] / 60, metrics["test_mae"], "o", color=color
                )
    if against == "minutes":
        axes.set_xscale("log")
        axes.set_xlabel("minutes of training (log scale); dots: final test MAE")
    else:
        axes.set_xlabel("epoch")
    axes.set_ylabel("validation MAE (years)")
    axes.set_ylim(top=top or min(axes.get_ylim()[1], 20))
    axes.legend()
    axes.grid(alpha=0.3)
    if file_name:
        save_fig(figure, file_name)
    return figure


def compare_runs(folders, file_name=None, against="epoch", labels=None):
    """A Markdown table of finished runs, runs that differ only in seed forming one row,
    and their validation curves in one plot (see comparison_table and plot_variants)."""
    variants = group_runs(folders, labels)
    plot_variants(variants, file_name, against)
    return comparison_table(variants)


def _by_age_bin(true, predicted):
    """{bin: (mask, mae per seed, mean signed error per seed)} of (seeds, faces) ages."""
    bins = {}
    for low, high in utk_data.AGE_BINS:
        inside = (true >= low) & (true <= high)
        if not inside.any():
            continue
        errors = predicted[:, inside] - true[inside]
        name = utk_data.age_bin_name(low, high)
        bins[name] = inside, np.abs(errors).mean(axis=1), errors.mean(axis=1)
    return bins


def errors_by_age_table(variant):
    """A Markdown table of a variant's test MAE and mean signed error (predicted − true)
    per age bin, mean ± sd over its seeds: positive for the young and negative for the
    old is a pull of the predictions towards the middle ages."""
    lines = ["| age | faces | MAE | mean signed error |", "|---|---:|---:|---:|"]
    for name, (inside, mae, signed) in _by_age_bin(
        *_needed_test_predictions(variant)
    ).items():
        lines.append(
            f"| {name} | {inside.sum()} | {_mean_sd(mae)} | {_mean_sd(signed, 1, '+')} |"
        )
    return "\n".join(lines)


def gender_by_age_table(variant, resamples=10_000, seed=0):
    """A Markdown table of a variant's test MAE of men and women within each age bin, and
    the difference at equal ages: the bins' differences weighted by their faces, with a
    bootstrap 95 % interval (the men and the women of each bin drawn with replacement).
    """
    true, predicted = _needed_test_predictions(variant)
    table = read_predictions(Path(variant.folders[0]) / PREDICTIONS)
    gender = table["gender"][np.argsort(table["face"])]  # as _test_predictions sorts
    errors = np.abs(predicted - true).mean(axis=0)  # each face's MAE over the seeds
    lines = [
        "| age | men | women | MAE, men | MAE, women | women − men |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    generator = np.random.default_rng(seed)
    weighted, resampled, weights = 0.0, np.zeros(resamples), 0
    for name, (inside, _, _) in _by_age_bin(true, predicted).items():
        men, women = errors[inside & (gender == 0)], errors[inside & (gender == 1)]
        if not (men.size and women.size):
            continue
        difference = women.mean() - men.mean()
        weighted += difference * inside.sum()
        weights += inside.sum()
        for group, sign in ((women, 1), (men, -1)):
            picks = generator.integers(0, group.size, (resamples, group.size))
            resampled += sign * group[picks].mean(axis=1) * inside.sum()
        lines.append(
            f"| {name} | {men.size} | {women.size} | {men.mean():.2f} | "
            f"{women.mean():.2f} | {difference:+.2f} |"
        )
    low, high = np.percentile(resampled / weights, [2.5, 97.5])
    lines.append(
        f"| at equal ages (bins weighted by their faces) [95 % interval] | | | | | "
        f"{weighted / weights:+.2f} [{low:+.2f}, {high:+.2f}] |"
    )
    return "\n".join(lines)


def calibration_table(variant):
    """A Markdown table of how often the true age of a test face falls in the 50 % and 90 %
    central intervals of a classification head's predicted distribution, the intervals'
    mean width and the MAE of the faces (mean ± sd over the seeds): a calibrated head has
    50 % and 90 %. Two more rows take the quarter of the faces with the narrowest and the
    widest 90 % intervals: a width worth reading goes with a smaller or larger error."""
    lines = [
        "| interval | faces | true age inside it | mean width (years) | MAE (years) |",
        "|---|---|---:|---:|---:|",
    ]
    tables = [read_predictions(Path(f) / PREDICTIONS) for f in variant.folders]
    rows = [(name, "all", None) for name in INTERVALS]
    rows += [
        ("90 %", "the narrowest quarter", 0.25),
        ("90 %", "the widest quarter", 0.75),
    ]
    for name, faces, quarter in rows:
        low, high = (_quantile_column(q) for q in INTERVALS[name])
        if any(column not in table for table in tables for column in (low, high)):
            raise ValueError(f"{variant.label!r}: a run has no {low}/{high}")
        inside, widths, errors = [], [], []
        for folder, table in zip(variant.folders, tables):
            width = table[high] - table[low]
            chosen = np.ones(width.size, bool)
            if quarter is not None:
                limit = np.quantile(width, quarter)
                chosen = width <= limit if quarter < 0.5 else width >= limit
            age = table["age"][chosen]
            hit = (table[low][chosen] <= age) & (age <= table[high][chosen])
            inside.append(100 * hit.mean())
            widths.append(width[chosen].mean())
            predicted = run_predictions(folder)[2][chosen]  # the run's own readout
            errors.append(np.abs(predicted - age).mean())
        lines.append(
            f"| {name} | {faces} | {_mean_sd(inside, 1)} % | {np.mean(widths):.1f} | "
            f"{_mean_sd(errors)} |"
        )
    return "\n".join(lines)


def output_range_table(variants):
    """A Markdown table of what each variant's output does at the low end of the ages
    (Task 2): its test MAE, its MAE on the faces aged 0-9, and how many test faces it
    predicted below 0 and at exactly 0, mean ± sd over the seeds. The rows' column should
    be the output itself (predicted_no_tta): a mirror image's average hides the zeros.
    """
    lines = [
        "| | seeds | test MAE (one image per face) | MAE, ages 0-9 | negative "
        "predictions | predictions of exactly 0 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for variant in variants:
        true, predicted = _needed_test_predictions(variant)
        young = true <= 9
        lines.append(
            f"| {variant.label} | {len(predicted)} | "
            f"{_mean_sd(np.abs(predicted - true).mean(axis=1))} | "
            f"{_mean_sd(np.abs(predicted[:, young] - true[young]).mean(axis=1))} | "
            f"{_mean_sd((predicted < 0).sum(axis=1), 0)} | "
            f"{_mean_sd((predicted == 0).sum(axis=1), 0)} |"
        )
    return "\n".join(lines)


# Lists the tables and figures that answers.md shows, and the runs each is drawn from.
REPORT = "report.json"
# How each kind of entry draws its table from its rows' variants (and the entry).
TABLES = {
    "comparison": lambda variants, entry: comparison_table(
        variants, entry.get("against", "first")
    ),
    "output_range": lambda variants, entry: output_range_table(variants),
    "errors_by_age": lambda variants, entry: errors_by_age_table(variants[0]),
    "gender_by_age": lambda variants, entry: gender_by_age_table(variants[0]),
    "calibration": lambda variants, entry: calibration_table(variants[0]),
    "learning_curve": None,  # a figure only
}


def _draw(entry, variants, file_name):
    """The figure of a report entry: the validation curves of a comparison, the training
    curves of a learning curve's first run, or the test predictions of a run's first seed
    against the true ages (any other kind)."""
    kind = entry.get("kind", "comparison")
    if kind == "comparison":
        plot_variants(variants, file_name, entry.get("x", "epoch"), entry.get("top"))
    elif kind == "learning_curve":
        history = json.loads(
            (Path(variants[0].folders[0]) / "history.json").read_text()
        )
        plot_history(history, file_name)
    else:
        true, predicted = _needed_test_predictions(variants[0])
        plot_evaluation(true, predicted[0], file_name)


def report(results="results", figures=None):
    """Re-draw the tables (and, into `figures`, the figures) that results/report.json
    lists, from the runs in `results`; returns {name: Markdown table}."""
    results = Path(results)
    entries = json.loads((results / REPORT).read_text())
    tables = {}
    for entry in entries:
        variants = [
            Variant(
                row["label"],
                [results / run for run in row["runs"]],
                row.get("val", "val_mae"),
                row.get("test"),
                row.get("has_test", True),
            )
            for row in entry["rows"]
        ]
        kind = entry.get("kind", "comparison")
        if kind not in TABLES:
            raise ValueError(f"{results / REPORT}: unknown kind {kind!r}")
        if TABLES[kind]:
            tables[entry["name"]] = TABLES[kind](variants, entry)
        if entry.get("figure") and figures is not None:
            _draw(entry, variants, Path(figures) / entry["figure"])
    return tables


# In a Markdown file, the table of report entry NAME follows a line "<!-- report: NAME -->".
TABLE_MARKER = re.compile(r"^<!-- report: (.+?) -->\n((?:\|.*\n)*)", re.MULTILINE)


def update_tables(text, tables):
    """`text` with the table after each report marker replaced by the table of that name
    in `tables` (as `report` draws them); an unknown name is an error."""

    def replace(found):
        name = found.group(1)
        if name not in tables:
            raise ValueError(f"no report table is named {name!r}")
        return f"<!-- report: {name} -->\n{tables[name]}\n"

    return TABLE_MARKER.sub(replace, text)


# ---------------------------------------------------------------------------------------
# Prediction on image files
# ---------------------------------------------------------------------------------------

# Files decoded and predicted at a time: bounds the memory a large folder takes.
PREDICT_CHUNK = 512


def _image_files(sources):
    """Expand files and folders into (files, skipped [(path, reason)])."""
    files, skipped = [], []
    for source in map(Path, sources):
        if source.is_dir():
            for path in sorted(source.iterdir()):
                if path.is_file() and path.suffix.lower() in utk_data.IMAGE_SUFFIXES:
                    files.append(path)
                elif path.is_file():
                    skipped.append((path, "not a .jpg/.jpeg/.png file"))
        elif source.is_file():
            files.append(source)
        else:
            skipped.append((source, "no such file or folder"))
    return files, skipped


# How `predict` frames a picture: "auto" finds the face unless the picture already is a
# tight face crop, "face" always looks for faces, "none" takes every picture as it is.
CROPS = ("auto", "face", "none")


class Prediction(NamedTuple):
    """One row of `predict`: a face of a picture, or a picture without a face."""

    path: str
    age: Optional[float]  # None when no face was found
    crop: str  # "as is", "face" or "no face found"
    box: Optional[tuple] = None  # (x, y, width, height) of the face found
    frame: Optional[tuple] = None  # (x, y, side): the square the model saw (the middle
    # one of the frames whose predictions are averaged)


def _predict_as_is(model, paths, batch_size, tta):
    """Predictions of pictures taken as they are, decoded in parallel, in chunks."""
    rows, skipped = [], []
    for start in range(0, len(paths), PREDICT_CHUNK):
        chunk = paths[start : start + PREDICT_CHUNK]
        images, readable, failed = utk_data.read_images(chunk, model.image_size)
        skipped += failed
        if readable:
            ages = predict_ages(model, images, batch_size, tta)
            rows += [Prediction(p, float(a), "as is") for p, a in zip(readable, ages)]
    return rows, skipped


def _find_faces(paths, crop, image_size):
    """Sort pictures: (paths taken as they are, [(path, face, its frames' crops)], rows of
    pictures without a face, skipped files). A picture taken as it is is decoded again by
    `_predict_as_is`, so that it predicts exactly as with crop "none"."""
    as_is, faces, rows, skipped = [], [], [], []
    for path in paths:
        try:
            picture = utk_data.read_photo(path)
        except ValueError as error:
            skipped.append((path, str(error).split(": ", 1)[-1]))
            continue
        found = utk_data.find_faces(picture)
        if crop == "auto" and utk_data.is_tight_crop(picture, found):
            as_is.append(path)
            continue
        if not found:
            rows.append(Prediction(path, None, "no face found"))
        for face in found:
            crops = [
                utk_data.resize_square(utk_data.crop_frame(picture, frame), image_size)
                for frame in utk_data.frame_variants(face)
            ]
            faces.append((path, face, tf.stack(crops)))  # (variants, size, size, 3)
    return as_is, faces, rows, skipped


def predict_paths(model, paths, batch_size=64, tta=False, crop="none"):
    """[Prediction] of image files, in their order, and [(path, reason)] of unreadable ones.

    With crop "face" (or "auto", for pictures that are not face crops already), each face
    found is framed as UTKFace frames its faces and predicted; a picture without a face gets
    a row without an age. Pictures taken as they are decode in parallel, in batches.
    """
    if crop not in CROPS:
        raise ValueError(f"crop must be one of {CROPS}, got {crop!r}")
    if crop == "none":
        return _predict_as_is(model, list(paths), batch_size, tta)
    as_is, faces, rows, skipped = _find_faces(paths, crop, model.image_size)
    found, failed = _predict_as_is(model, as_is, batch_size, tta)
    rows += found
    skipped += failed
    for start in range(0, len(faces), PREDICT_CHUNK):
        chunk = faces[start : start + PREDICT_CHUNK]
        images = tf.cast(tf.concat([crops for _, _, crops in chunk], 0), tf.float32)
        ages = predict_ages(model, images / 255.0, batch_size, tta)
        # The mean over each face's frame variants.
        ages = ages.reshape(len(chunk), -1).mean(axis=1)
        rows += [
            Prediction(path, float(age), "face", face.box, face.frame)
            for (path, face, _), age in zip(chunk, ages)
        ]
    order = {path: index for index, path in enumerate(paths)}
    return sorted(rows, key=lambda row: order[row.path]), skipped


def predict_files(model_path, sources, out=None, tta=False, crop="auto"):
    """Predict the age of every face in the JPEG/PNG files of `sources`; write a CSV."""
    model = keras.models.load_model(model_path)
    files, skipped = _image_files(sources)
    rows, failed = predict_paths(model, [str(f) for f in files], tta=tta, crop=crop)
    skipped += failed
    stream = open(out, "w", newline="") if out else sys.stdout
    try:
        writer = csv.writer(stream)
        writer.writerow(["path", "predicted_age", "crop", "x", "y", "width", "height"])
        for row in rows:
            age = "" if row.age is None else f"{row.age:.1f}"
            writer.writerow([row.path, age, row.crop, *(row.box or ("",) * 4)])
    finally:
        if out:
            stream.close()
    for path, reason in skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    faces = sum(row.age is not None for row in rows)
    print(
        f"predicted {faces} face(s) in {len(rows)} row(s), skipped {len(skipped)} file(s)",
        file=sys.stderr,
    )
    return rows, skipped


# ---------------------------------------------------------------------------------------
# The command line, generated from TrainConfig
# ---------------------------------------------------------------------------------------


def _value_type(annotation):
    """The type a flag parses for a field annotated int, float, str or Optional of them."""
    kinds = [
        kind
        for kind in getattr(annotation, "__args__", (annotation,))
        if kind is not type(None)
    ]
    return kinds[0] if kinds and kinds[0] in (int, float) else str


def _add_config_arguments(parser):
    """One flag per TrainConfig field: --image-size for image_size, and so on."""
    from_preset = set(PRESETS["cpu"]) | {"image_size", "mixed_precision", "jit_compile"}
    for config_field in dataclasses.fields(TrainConfig):
        flag = "--" + config_field.name.replace("_", "-")
        help_text = config_field.metadata["help"]
        if config_field.name in from_preset:
            help_text += " (default: from the preset)"
        elif config_field.default is not None:
            help_text += f" (default: {config_field.default})"
        if config_field.type in (bool, Optional[bool]):
            parser.add_argument(
                flag,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_text,
            )
            continue
        parser.add_argument(
            flag,
            type=_value_type(config_field.type),
            choices=config_field.metadata["choices"],
            default=None,
            help=help_text,
            required=config_field.name == "out",
        )


def config_from_arguments(arguments):
    """A TrainConfig from parsed arguments: flags not given keep the dataclass defaults."""
    given = {
        config_field.name: getattr(arguments, config_field.name)
        for config_field in dataclasses.fields(TrainConfig)
        if getattr(arguments, config_field.name) is not None
    }
    return TrainConfig(**given)


def _parser():
    """The argument parser of every command."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[1:3]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    _add_config_arguments(commands.add_parser("train", help="train or resume a model"))
    evaluate = commands.add_parser("evaluate", help="test-split metrics of a model")
    evaluate.add_argument("--model", required=True, help="a model.keras file")
    evaluate.add_argument("--data", help="folder, archive or URL of UTKFace")
    evaluate.add_argument("--limit", type=int, help="as given to train")
    evaluate.add_argument(
        "--unknown-attributes",
        action="store_true",
        help="give a model trained with --attribute-inputs 'unknown' gender and race, "
        "as for a new photo, instead of the true labels",
    )
    evaluate.add_argument(
        "--figures", help="save evaluation.png (and learning_curve.png) in this folder"
    )
    evaluate.add_argument(
        "--predictions",
        help=f"write a CSV row per test face here, with and without the mirror images "
        f"(as train writes {PREDICTIONS})",
    )
    baseline = commands.add_parser(
        "baseline", help="test metrics of predicting the median training age"
    )
    baseline.add_argument("--data", help="folder, archive or URL of UTKFace")
    compare = commands.add_parser(
        "compare",
        help="a table of finished runs (runs differing only in seed form one row, "
        "with mean ± sd and a paired bootstrap interval against the first row) and "
        "their validation curves",
    )
    compare.add_argument("runs", nargs="+", metavar="RUN_DIR")
    compare.add_argument("--plot", help="save the validation curves here")
    compare.add_argument(
        "--labels", nargs="+", help="a name for each row (default: folder names)"
    )
    compare.add_argument(
        "--against",
        choices=("epoch", "minutes"),
        default="epoch",
        help="x axis of the plot: epochs, or minutes of training (test MAE marked)",
    )
    report_command = commands.add_parser(
        "report",
        help=f"re-draw the tables and figures that RESULTS/{REPORT} lists, from the "
        "runs kept in RESULTS",
    )
    report_command.add_argument(
        "--results", default="results", help="(default: results)"
    )
    report_command.add_argument(
        "--figures", help="re-draw the figures into this folder (default: none)"
    )
    report_command.add_argument(
        "--update",
        nargs="*",
        default=[],
        metavar="MARKDOWN",
        help="also rewrite, in these files, the table after each line "
        "'<!-- report: NAME -->' (e.g. answers.md README.md)",
    )
    predict = commands.add_parser(
        "predict", help="ages of the faces in pictures (a CSV row per face)"
    )
    predict.add_argument("--model", required=True, help="a model.keras file")
    predict.add_argument(
        "--crop",
        choices=CROPS,
        default="auto",
        help="auto: find and frame the face unless the picture is a face crop already; "
        "face: always find the faces; none: take each picture as it is (default: auto)",
    )
    predict.add_argument("--out", help="CSV file (default: standard output)")
    predict.add_argument("sources", nargs="+", metavar="FILE_OR_FOLDER")
    for command in (evaluate, predict):
        command.add_argument(
            "--tta",
            action=argparse.BooleanOptionalAction,
            default=True,
            help="average each face's prediction with its mirror image's (default: on)",
        )
    return parser


def command_train(arguments, parser):
    """`train`: train or resume; a clear one-line error instead of a traceback."""
    try:
        # A live progress bar on a terminal; one line per epoch in a log file.
        train(config_from_arguments(arguments), verbose=1 if sys.stdout.isatty() else 2)
    except (TrainingDiverged, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def command_evaluate(arguments, parser):
    """`evaluate`: the metrics of a saved model on the test split, as JSON."""
    model = keras.models.load_model(arguments.model)
    if arguments.unknown_attributes and not getattr(model, "attribute_inputs", False):
        parser.error(f"{arguments.model} has no gender and race inputs")
    _, _, test = prepare_data(TrainConfig(data=arguments.data, limit=arguments.limit))
    test = utk_data.decode_records(test, model.image_size)  # once for both readouts
    predictions = predict_records(
        model,
        test,
        attributes_known=not arguments.unknown_attributes,
        tta=arguments.tta,
    )
    print(json.dumps(evaluate_predictions(*predictions[1:]), indent=2))
    if arguments.predictions:  # Both readouts, as train writes them.
        readouts = {PREDICTION_COLUMNS[arguments.tta]: predictions}
        readouts[PREDICTION_COLUMNS[not arguments.tta]] = predict_records(
            model,
            test,
            attributes_known=not arguments.unknown_attributes,
            tta=not arguments.tta,
        )
        write_predictions(arguments.predictions, dict(sorted(readouts.items())))
    if arguments.figures:
        save_figures(
            arguments.model, predictions.true, predictions.predicted, arguments.figures
        )
    return 0


def command_baseline(arguments, parser):
    """`baseline`: the median predictor's test metrics, as JSON."""
    train_records, _, test = prepare_data(TrainConfig(data=arguments.data))
    print(json.dumps(median_baseline(train_records, test), indent=2))
    return 0


def command_compare(arguments, parser):
    """`compare`: a Markdown table of finished runs, and their curves in a figure."""
    import matplotlib

    matplotlib.use("Agg")
    try:
        print(
            compare_runs(
                arguments.runs, arguments.plot, arguments.against, arguments.labels
            )
        )
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def command_report(arguments, parser):
    """`report`: every table of RESULTS/report.json in Markdown, and its figures."""
    import matplotlib

    matplotlib.use("Agg")
    try:
        tables = report(arguments.results, arguments.figures)
        updated = {
            Path(file): update_tables(Path(file).read_text(), tables)
            for file in arguments.update
        }
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for file, text in updated.items():
        file.write_text(text)
    for name, table in tables.items():
        print(f"{name}:\n\n{table}\n")
    return 0


def command_predict(arguments, parser):
    """`predict`: a CSV of predicted ages; fails only when no image could be read."""
    rows, _ = predict_files(
        arguments.model, arguments.sources, arguments.out, arguments.tta, arguments.crop
    )
    return 0 if any(row.age is not None for row in rows) else 1


def main(argv=None):
    """The command line: train, evaluate, baseline, compare, report, predict."""
    parser = _parser()
    arguments = parser.parse_args(argv)
    commands = {
        "train": command_train,
        "evaluate": command_evaluate,
        "baseline": command_baseline,
        "compare": command_compare,
        "report": command_report,
        "predict": command_predict,
    }
    return commands[arguments.command](arguments, parser)


if __name__ == "__main__":
    sys.exit(main())
