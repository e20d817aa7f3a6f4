"""Train the age models with a hand-written `tf.GradientTape` loop, and the command line.

    python train_loop.py train --out runs/cpu                       # the CPU preset
    python train_loop.py train --preset gpu --time-budget 150 --out runs/gpu
    python train_loop.py train --arch course_cnn --out runs/course  # the course network
    python train_loop.py evaluate --model runs/cpu/model.keras
    python train_loop.py predict --model runs/cpu/model.keras photo.jpg my_faces/
    python train_loop.py export --model runs/cpu/model.keras --format tflite

Running the same `train` command again resumes from the last checkpoint in `--out` (after
a Colab disconnect or a `kill -9`) and ends where an uninterrupted run ends. `predict` finds
the faces in a photo and frames each as UTKFace frames its faces (`--crop auto`).

Sections: settings and presets; data; models; the optimizer and the training step (under a
tf.distribute strategy); checkpoints; the time budget; training; the command line. The
machine and its strategies, evaluation (and the TensorBoard curves), the reports of runs,
the prediction on photos and the export have rooms of their own: devices.py,
evaluation.py, report.py, photos.py and export.py.
"""

import argparse
import dataclasses
import json
import math
import re
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Optional

# devices first: it sets TensorFlow's environment (the Keras backend, oneDNN) before
# TensorFlow is imported.
import devices

import keras
import matplotlib
import numpy as np
import tensorflow as tf

import evaluation
import export
import photos
import report
import utk_data
from evaluation import (
    PREDICTION_COLUMNS,
    PREDICTIONS,
    UNWIDENED_COLUMNS,
    Predictions,
    atomic_write,
    evaluate_predictions,
    write_json,
)
from model import age_labels, ages_from_outputs, build_model, loss_terms
from model import lds_age_weights, model_head, model_inputs

CHECKPOINT = "checkpoint.npz"

# ---------------------------------------------------------------------------------------
# Settings and presets
# ---------------------------------------------------------------------------------------


# The compute types of `--precision`: "auto" chooses one of the others for the machine.
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")


# Settings a run may be resumed with other values of: where things are, and how the
# training is spread over devices (the checkpoint holds no device).
WHERE = ("data", "out", "strategy")
# The settings of the readout after training: a resumed or finished run takes them from
# the command, so that a finished run can be read out again with others.
READOUT = ("tta", "widen")


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
    relu_gradient: Optional[str] = _option(
        None,
        "the ReLU output's gradient below 0 while training: zero, as a ReLU has, or "
        "straight_through, the identity's, so that a face predicted 0 still pulls its "
        "output up (the output is max(0, z) either way)",
        ("zero", "straight_through"),
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
    loss_weighting: Optional[str] = _option(
        None,
        "weight each face's loss: none, or lds, by the inverse square root of how "
        "common its age is, smoothed over neighbouring ages (Yang et al., 2021)",
        ("none", "lds"),
    )
    loss_weighting_epochs: Optional[int] = _option(
        None,
        "with --loss-weighting lds: weigh the faces only in the last N epochs, every face "
        "the same before (deferred re-weighting, Cao et al., 2019); default: every epoch",
    )
    augment: Optional[bool] = _option(None, "flip, crop/shift, brightness/contrast")
    patience: Optional[int] = _option(
        None, "early stopping: epochs without a better val MAE"
    )
    ema: Optional[float] = _option(
        None,
        "momentum of an average of the weights, which is validated and saved; 0: off",
    )
    tta: Optional[bool] = _option(
        None,
        "test metrics average each face's age over its views: as it is and zoomed in on "
        "its centre (evaluation.TTA_ZOOMS), each also mirrored",
    )
    widen: Optional[bool] = _option(
        None,
        "after training, widen the predicted ages away from their median by a factor "
        "fitted on the validation faces so that every decade of age counts the same: "
        "fewer old and young faces pulled towards the middle ages (saved in the model)",
    )
    seed: int = _option(
        0, "seeds training (initialisation, order, augmentation), never the split"
    )
    time_budget: Optional[float] = _option(
        None, "minutes for the whole run: epochs and schedule fitted to it"
    )
    # Devices.
    precision: Optional[str] = _option(
        None,
        "compute type (default: auto, which takes mixed_float16 on a GPU, "
        "mixed_bfloat16 on a processor with bfloat16 units (AMX or AVX512-BF16), "
        "float32 elsewhere)",
        PRECISIONS,
    )
    jit_compile: Optional[bool] = _option(
        None, "XLA-compile the train and test steps (default: with a GPU)"
    )
    strategy: str = _option(
        "auto",
        "how the training is spread: one device; mirrored, a replica per GPU; "
        "multi_worker, the machines TF_CONFIG lists; tpu; auto: multi_worker with "
        "TF_CONFIG, tpu on a TPU runtime, mirrored with several GPUs, else one",
        devices.STRATEGIES,
    )
    # Output.
    out: str = _option(
        "runs/default", "folder for model.keras, metrics, history, checkpoints"
    )


# Everything a preset sets, in one table: the network (its architecture and input size) and
# how it is trained. A TrainConfig's `None` fields are filled from here.
CPU_PRESET = dict(
    # About 76 MFLOPs per 96-pixel image. In float32 its epochs took 74-85 minutes for 50 on
    # a 2-core AMD EPYC with AVX2 (results/cpu*). In bfloat16 (--precision auto on a
    # processor with AMX or AVX512-BF16) an epoch took 0.89 times a float32 one on a 2-core
    # Intel Xeon with AMX (bench/bench_presets.py), so 56 epochs take the time 50 took.
    # Averaging each face's age over its test-time views (evaluation.TTA_ZOOMS) lowered the
    # test MAE in every seed; the average of the weights made no measurable difference
    # (EXPERIMENTS.md); the straight-through gradient of the ReLU output trains as a linear
    # output does, which beat the plain ReLU at the short budget (answers.md, Task 2).
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
    epochs=56,
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
    widen=True,
    relu_gradient="straight_through",
    loss_weighting="none",
)
PRESETS = {
    "cpu": CPU_PRESET,
    # For a Colab GPU: a ResNet-18-sized body at 128 px (about 1.1 GFLOPs per image); the
    # rest as the CPU preset.
    "gpu": {
        **CPU_PRESET,
        "image_size": 128,
        "network": {
            **CPU_PRESET["network"],
            "widths": (64, 128, 256, 512),
            "blocks_per_stage": (2, 2, 2, 2),
            "head_units": 256,
        },
        "batch_size": 128,
        "epochs": 60,
        "learning_rate": 2e-3,
        "warmup_epochs": 2.0,
        "patience": 12,
    },
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
    widen=False,
    relu_gradient="zero",
    loss_weighting="none",
)


def resolve_config(config):
    """Fill every `None` of a TrainConfig from its preset (and the course settings)."""
    gpu = devices.has_gpu()
    preset = config.preset or ("gpu" if gpu else "cpu")
    values = {k: v for k, v in PRESETS[preset].items() if k != "network"}
    arch = config.arch or values["arch"]
    if arch == "course_cnn":
        values.update(COURSE_SETTINGS)
    values.update(jit_compile=gpu)
    explicit = {
        name: value
        for name, value in dataclasses.asdict(config).items()
        if value is not None
    }
    precision = explicit.pop("precision", "auto")
    if precision == "auto":
        precision = devices.auto_precision(gpu)
    return dataclasses.replace(
        config,
        **{
            **values,
            **explicit,
            "preset": preset,
            "arch": arch,
            "precision": precision,
        },
    )


def run_name(config):
    """A run-folder name that changes with every setting, e.g. "gpu-30min-1a2b3c".

    It starts with the preset (or the course network) and the time budget, for the reader,
    and ends with a hash of all the resolved settings: a rerun with the same settings finds
    its run again and resumes it, and a rerun with other settings starts a new run.
    """
    config = resolve_config(config)
    settings = dataclasses.asdict(config)
    for name in WHERE:
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


def prepare_data(config):
    """The (train, val, test) records of config.data, limited to config.limit training
    images for quick runs (utk_data.load_splits)."""
    return utk_data.load_splits(config.data, config.limit)


# ---------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------


@contextmanager
def dtype_policy(name):
    """Build models under a Keras dtype policy ("float32", "mixed_float16" or
    "mixed_bfloat16"), then restore the one before."""
    previous = keras.config.dtype_policy().name
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def make_model(config, initial_age=None, synchronized=False):
    """The model a TrainConfig describes, built (under the current dtype policy); with
    `synchronized`, its batch norm takes the statistics of the global batch of several
    replicas."""
    config = resolve_config(config)
    options = dict(
        image_size=config.image_size,
        initial_age=initial_age,
        output_activation=config.output_activation,
        relu_gradient=config.relu_gradient,
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
        synchronized_batch_norm=synchronized,
        **options,
    )


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
    if config.precision == "mixed_float16":
        # float16 gradients can underflow: the loss is scaled up, and the scale adapted.
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
    """The model, its optimizer, metrics and the compiled train and test steps, on the
    replicas of a tf.distribute strategy (TensorFlow's default: one device).

    `age_weights`, a loss weight for every age (model.lds_age_weights), weighs each face's
    loss by its age; None: every face weighs the same. The model and the optimizer must
    have been made in `strategy.scope()`."""

    def __init__(self, model, optimizer, config, age_weights=None, strategy=None):
        self.model, self.optimizer, self.config = model, optimizer, config
        self.strategy = strategy or tf.distribute.get_strategy()
        self.age_weights = None if age_weights is None else tf.constant(age_weights)
        with self.strategy.scope():
            # 1 while the age weights count, 0 while every face weighs the same (set at the
            # start of each epoch by weigh_epoch).
            self.weighting = tf.Variable(1.0, trainable=False, name="weighting")
            self.average = WeightAverage(model, config.ema) if config.ema else None
            self.train_loss = keras.metrics.Mean(name="loss")
            self.train_mae = keras.metrics.MeanAbsoluteError(name="mae")
            self.optimizer.build(model.trainable_variables)
        # Validation runs on one device, outside the replicas: so do its metrics.
        self.val_mae = keras.metrics.MeanAbsoluteError(name="val_mae")
        self.val_rmse = keras.metrics.RootMeanSquaredError(name="val_rmse")
        # The steps below, compiled into TensorFlow graphs (and by XLA with jit_compile).
        # Under several replicas a tf.function inside strategy.run cannot hold their
        # synchronisation (batch norm's statistics, the gradients): the update runs inside
        # the distributed step's graph there, without XLA.
        if self.strategy.num_replicas_in_sync > 1:
            self.update = self.train_batch
        else:
            self.update = tf.function(self.train_batch, jit_compile=config.jit_compile)
        self.test_step = tf.function(self.test_batch, jit_compile=config.jit_compile)
        self.train_step = tf.function(self.distributed_step)

    def distributed_step(self, images, labels, seeds=None):
        """A train step of every replica on its share of a global batch; returns the
        global batch's loss. A batch of make_dataset(raw=True) holds uint8 images and
        their augmentation seeds; float images prepared before come without seeds."""
        losses = self.strategy.run(self.replica_step, args=(images, labels, seeds))
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)

    def replica_step(self, images, labels, seeds=None):
        """One replica's step: its images scaled and augmented where the model runs (on the
        GPU, outside XLA, which has no kernel for crop-and-resize), then the update."""
        if seeds is not None:
            seed = seeds[0]  # Every row of a batch carries the batch's seed.
            if self.strategy.num_replicas_in_sync > 1:
                replica = tf.distribute.get_replica_context().replica_id_in_sync_group
                seed = tf.random.experimental.stateless_fold_in(seed, replica)
            images = utk_data.prepare_batch(images, seed, self.config.augment)
        return self.update(images, labels)

    def train_batch(self, images, labels):
        """One training step on a batch: the loss under the tape, its gradients, an update."""
        with tf.GradientTape() as tape:
            # training=True: dropout on, batch norm learns from this batch.
            outputs = self.model(
                model_inputs(self.model, images, labels), training=True
            )
            loss = self.loss(outputs, labels)  # this replica's share of the mean
            scaled_loss = self.optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled_loss, self.model.trainable_variables)
        self.optimizer.apply(gradients, self.model.trainable_variables)  # all-reduced
        if self.average is not None:
            self.average.update()
        self.train_loss.update_state(loss * self.strategy.num_replicas_in_sync)
        self.train_mae.update_state(
            age_labels(labels), ages_from_outputs(model_head(self.model), outputs)
        )
        return loss

    def loss(self, outputs, labels):
        """The training loss of a replica's batch (model.loss_terms): the images' losses
        summed and divided by the global batch size, so that the replicas' gradients add
        up to those of the global batch's mean loss (with one replica: the mean)."""
        head = model_head(self.model)
        age_weights = self.age_weights
        if age_weights is not None:  # The weights average 1: so does every blend.
            age_weights = 1.0 + self.weighting * (age_weights - 1.0)
        terms = loss_terms(
            head,
            outputs,
            labels,
            self.config.loss,
            age_weights=age_weights,
            average=tf.nn.compute_average_loss,
        )
        return terms["total"]

    def weigh_epoch(self, epoch):
        """Let the age weights count in `epoch` (from 0), or not: in every epoch, or with
        config.loss_weighting_epochs only in that many last ones."""
        last = self.config.loss_weighting_epochs
        weighted = not last or epoch >= self.config.epochs - last
        self.weighting.assign(1.0 if weighted else 0.0)

    def test_batch(self, images, labels):
        """Predicted ages (batch, 1) of a batch, in inference mode."""
        outputs = self.model(model_inputs(self.model, images, labels), training=False)
        return ages_from_outputs(model_head(self.model), outputs)

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
            self.val_mae.update_state(age_labels(labels), predicted)
            self.val_rmse.update_state(age_labels(labels), predicted)
        return float(self.val_mae.result()), float(self.val_rmse.result())


# ---------------------------------------------------------------------------------------
# Checkpoints: one .npz file written atomically, holding every model and optimizer variable
# (the dropout seed-generator states among them) by name, and the config and history.
# ---------------------------------------------------------------------------------------


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

    atomic_write(Path(folder) / CHECKPOINT, write)


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
    """Shuffled training batches from start_epoch on, uint8 images with their labels and
    augmentation seed, which the train step scales and augments (see make_dataset)."""
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
        raw=True,
    )


def _measure_seconds_per_step(config, train_images, initial_age, batches=8):
    """Time a few steps of a throwaway copy of the model (it does not touch the real one)."""
    with dtype_policy(config.precision):
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


def _epoch_seconds(seconds_per_step, steps, val_steps, val_passes=1):
    """The planned seconds of an epoch: `steps` train steps, and `val_passes` validations
    (two with an average of the weights: the average and the trained weights)."""
    # A test step costs about a third of a train step.
    validation_steps = val_passes * val_steps / 3
    return SPEED_MARGIN * seconds_per_step * (steps + validation_steps)


def _epoch_steps(config, train_count, val_count):
    """(train steps, validation steps, validation passes) of an epoch of `config`."""
    return (
        utk_data.steps_per_epoch(train_count, config.batch_size),
        math.ceil(val_count / config.batch_size),
        2 if config.ema else 1,
    )


def epochs_for_budget(
    budget_seconds, elapsed_seconds, seconds_per_step, steps, val_steps, val_passes=1
):
    """Whole epochs that fit in what is left of the budget, and the seconds of one epoch."""
    epoch_seconds = _epoch_seconds(seconds_per_step, steps, val_steps, val_passes)
    # Keep back time for the final test evaluation and for saving.
    remaining = budget_seconds - elapsed_seconds - 2 * epoch_seconds / 3 - 30
    return max(1, int(remaining // epoch_seconds)), epoch_seconds


class Estimate(NamedTuple):
    """What `estimate_training` returns."""

    seconds_per_step: float
    steps: int  # train steps an epoch
    epochs: int
    minutes: float  # of training, the test evaluation aside


def _plan(config, images, train_count, val_count, initial_age, started=None):
    """The Estimate of training `config` on this machine, timed on a few steps over
    `images`: for config.epochs epochs, or the epochs that fit its time budget counted from
    `started` (a time.perf_counter(); None: from now)."""
    seconds_per_step = _measure_seconds_per_step(config, images, initial_age)
    steps = _epoch_steps(config, train_count, val_count)
    if config.time_budget:
        elapsed = time.perf_counter() - started if started is not None else 0.0
        epochs, epoch_seconds = epochs_for_budget(
            config.time_budget * 60, elapsed, seconds_per_step, *steps
        )
    else:
        epochs, epoch_seconds = config.epochs, _epoch_seconds(seconds_per_step, *steps)
    return Estimate(seconds_per_step, steps[0], epochs, epochs * epoch_seconds / 60)


def fit_to_time_budget(config, train_images, val_records, initial_age, started):
    """Epochs that fit the time budget, from the measured speed of train and test steps."""
    plan = _plan(
        config,
        train_images,
        len(train_images.records),
        len(val_records),
        initial_age,
        started,
    )
    print(
        f"time budget {config.time_budget:g} min: {plan.seconds_per_step:.3f} s/step, "
        f"{plan.minutes * 60 / plan.epochs:.0f} s/epoch -> {plan.epochs} epochs"
    )
    return plan.epochs


def estimate_training(config, train_records, val_records):
    """How long `train(config)` will train on this machine, from a few timed steps: for
    config.epochs epochs, or the epochs that fit its time budget."""
    config = resolve_config(config)
    # A step takes as long whichever faces it sees: a few batches of them are enough.
    sample = utk_data.decode_records(
        train_records[: 4 * config.batch_size], config.image_size
    )
    initial_age = float(np.mean([record.age for record in train_records]))
    return _plan(config, sample, len(train_records), len(val_records), initial_age)


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
    test: Predictions


def train(config, verbose=1, command=None, strategy=None):
    """Train (or resume) a model as `config` says; return the best model and its metrics.

    `command`, the command line that asked for it, is recorded in metrics.json. The
    replicas of `strategy` (by default the one config.strategy names) share each batch;
    only the chief process writes files, and only it returns a Run (the others None)."""
    started = time.perf_counter()
    config = resolve_config(config)
    if not config.time_budget:  # A time budget fits the epochs later.
        _check_loss_weighting_epochs(config)  # before the images are decoded
    strategy = strategy or devices.make_strategy(config.strategy)
    if config.time_budget and devices.strategy_name(strategy) == "multi_worker":
        raise ValueError(
            "--time-budget with several workers: each would time its own steps and might "
            "plan another number of epochs than the others; give --epochs instead"
        )
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    splits = prepare_data(config)
    train_records, val_records, _ = splits
    initial_age = float(np.mean([record.age for record in train_records]))
    checkpoint = read_checkpoint(out)
    if checkpoint is not None:
        config = _resumed_config(checkpoint.config, config, out)
    # Decoded once, in memory for the whole run: every epoch, and the speed measurement.
    train_images = utk_data.decode_records(train_records, config.image_size)
    if checkpoint is None and config.time_budget:
        epochs = fit_to_time_budget(
            config, train_images, val_records, initial_age, started
        )
        config = dataclasses.replace(config, epochs=epochs)
    steps = utk_data.steps_per_epoch(len(train_images.records), config.batch_size)
    trainer = _make_trainer(config, strategy, initial_age, train_records, steps)
    history = []
    if checkpoint is not None:
        restore_checkpoint(
            checkpoint, trainer.model, trainer.optimizer, trainer.average
        )
        history = checkpoint.history
        print(f"resuming {out} after epoch {len(history)} of {config.epochs}")
    if not progress(history, config).finished:
        _train_epochs(trainer, history, out, train_images, val_records, steps, verbose)
    del train_images  # Frees the decoded training images before the test.
    run = _finish(config, history, splits, command, strategy)
    devices.wait_for_all(strategy)  # The other workers wait for the chief's files.
    return run


def _make_trainer(config, strategy, initial_age, train_records, steps):
    """The model (built from config.seed), its optimizer and their Trainer, the model and
    the optimizer made in the strategy's scope."""
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise ValueError(
            f"a batch of {config.batch_size} images does not split evenly between "
            f"{replicas} replicas: choose a --batch-size divisible by {replicas}"
        )
    keras.utils.set_random_seed(config.seed)
    with strategy.scope(), dtype_policy(config.precision):
        model = make_model(config, initial_age, synchronized=replicas > 1)
        optimizer = make_optimizer(config, steps)
    age_weights = _age_weights(config, train_records)
    return Trainer(model, optimizer, config, age_weights, strategy)


def _check_loss_weighting_epochs(config):
    """Raise ValueError unless config.loss_weighting_epochs (if given) goes with LDS
    weighting and lies in 1..config.epochs."""
    if config.loss_weighting_epochs is None:
        return
    if config.loss_weighting != "lds":
        raise ValueError("--loss-weighting-epochs needs --loss-weighting lds")
    if not 0 < config.loss_weighting_epochs <= config.epochs:
        raise ValueError(
            f"--loss-weighting-epochs must lie in 1..{config.epochs} (the epochs), "
            f"got {config.loss_weighting_epochs}"
        )


def _age_weights(config, train_records):
    """The loss weight of every age that config.loss_weighting asks for, or None."""
    _check_loss_weighting_epochs(config)  # the epochs a time budget fitted, too
    if config.loss_weighting != "lds":
        return None
    ages = [record.age for record in train_records]
    return lds_age_weights(ages, utk_data.MAX_AGE)


def _resumed_config(saved, config, out):
    """The settings a resumed run goes on with: the checkpoint's (the epochs fitted to a
    time budget are part of the run), but where the data and the run are now and how the
    command reads it out."""
    _check_same_run(saved, config, out)
    now = {name: getattr(config, name) for name in (*WHERE, *READOUT)}
    return TrainConfig(**{**saved, **now})


def _check_same_run(saved, config, out):
    current = dataclasses.asdict(config)
    # The epochs fitted to a time budget are part of the run, whatever the command says.
    ignored = {*WHERE, *READOUT, *(("epochs",) if config.time_budget else ())}
    different = sorted(
        k for k in current if k not in ignored and saved.get(k) != current[k]
    )
    if different:
        raise ValueError(
            f"{out} holds a run with other settings ({', '.join(different)}): resume it with "
            "the same command, or choose another --out"
        )


def _train_epochs(trainer, history, out, train_images, val_records, steps, verbose):
    """Run the remaining epochs of `steps` batches; after each, the chief saves the best
    model, a checkpoint, the history and the epoch's TensorBoard curves."""
    config = trainer.config
    start = len(history)
    dataset = _training_dataset(train_images, config, config.seed, start, config.epochs)
    batches = iter(trainer.strategy.experimental_distribute_dataset(dataset))
    val_dataset = evaluation.evaluation_dataset(
        val_records, config.image_size, config.batch_size
    )
    chief = devices.is_chief(trainer.strategy)
    curves = evaluation.Curves(out / evaluation.LOGS, steps, start) if chief else None
    for epoch in range(start, config.epochs):
        trainer.weigh_epoch(epoch)
        row, step_losses = _run_epoch(
            trainer, batches, steps, val_dataset, epoch, out, verbose
        )
        history.append(row)
        state = progress(history, config)
        if chief:
            curves.write(row, step_losses)
            if state.best_epoch == epoch + 1:
                with trainer.evaluated_weights():
                    atomic_write(out / "model.keras", trainer.model.save)
            save_checkpoint(
                out, trainer.model, trainer.optimizer, config, history, trainer.average
            )
            write_json(out / evaluation.HISTORY, history)
        if state.finished:
            if state.bad_epochs >= config.patience and verbose:
                print(f"early stop: no better val MAE for {config.patience} epochs")
            break


def _train_steps(trainer, batches, steps, epoch, out, progress_bar):
    """Train `steps` batches; return the loss of every LOG_EVERY-th step (evaluation.py)
    by step number."""
    losses = {}
    for step in range(steps):
        loss = float(trainer.train_step(*next(batches)))
        if not math.isfinite(loss):
            raise TrainingDiverged(
                f"the loss became {loss} at epoch {epoch + 1}, step {step + 1}: stopped; "
                f"the last good checkpoint in {out} is kept (try a lower --learning-rate)"
            )
        if step % evaluation.LOG_EVERY == 0:
            losses[epoch * steps + step] = loss
        metrics = [
            ("loss", trainer.train_loss.result()),
            ("mae", trainer.train_mae.result()),
        ]
        progress_bar.update(step + 1, [(name, float(value)) for name, value in metrics])
    return losses


def _run_epoch(trainer, batches, steps, val_dataset, epoch, out, verbose):
    """Train one epoch of `steps` batches and validate: (the epoch's history row, the loss
    of every LOG_EVERY-th step)."""
    epoch_start = time.perf_counter()
    trainer.reset_metrics()
    progress_bar = keras.utils.Progbar(
        steps, verbose=verbose, stateful_metrics=["loss", "mae"]
    )
    if verbose:
        print(f"epoch {epoch + 1}/{trainer.config.epochs}")
    step_losses = _train_steps(trainer, batches, steps, epoch, out, progress_bar)
    train_seconds = time.perf_counter() - epoch_start
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
        # Training images a second, validation left out.
        "images_per_second": steps * trainer.config.batch_size / train_seconds,
    }
    if trained_mae is not None:
        row["val_mae_without_ema"] = trained_mae
    if verbose:
        without = f" (without EMA {trained_mae:.3f})" if trained_mae is not None else ""
        print(
            f"val_mae {val_mae:.3f}{without}  val_rmse {val_rmse:.3f}  ({seconds:.0f} s)"
        )
    return row, step_losses


def _current_learning_rate(optimizer):
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    return inner.learning_rate


def _read_out(config, out, splits):
    """The best model of a run, saved in `out`, read out on the validation and test faces:
    (model, Readouts, the Readouts before the widening or None without one). With
    config.widen, the widening is fitted on the validation faces' reported readout
    (evaluation.fit_widening) and saved in the model."""
    model = keras.models.load_model(out / "model.keras")
    val, test = (
        utk_data.decode_records(part, config.image_size) for part in splits[1:]
    )
    fitted, unwidened = model.age_widening, None
    model.age_widening = None
    readouts = evaluation.read_out(model, val, test, config.batch_size, config.tta)
    if config.widen:
        unwidened = readouts
        model.age_widening = evaluation.fit_widening(*readouts.reported_val[1:3])
        # What the model with its widening predicts (the same map, after the views).
        readouts = readouts.widened(model.age_widening)
    if model.age_widening != fitted:  # A finished run read out again may change it.
        atomic_write(out / "model.keras", model.save)
    return model, readouts, unwidened


def run_metrics(config, history, splits, readouts, command, strategy, widening=None):
    """The metrics.json of a run: its test metrics (the configured readout), both readouts
    of the validation and test faces, its progress, settings, command and machine (and
    the tf.distribute strategy that trained it). `widening`: the model's age_widening and
    its Readouts before it (as _read_out returns them), or None."""
    test = evaluate_predictions(*readouts.reported[1:])
    unwidened = {}
    if widening is not None:
        fitted, before = widening
        unwidened["age_widening"] = list(fitted)
        for split, found in (("val", before.reported_val), ("test", before.reported)):
            plain = evaluate_predictions(*found[1:3])
            for name in ("mae", "balanced_mae"):
                unwidened[f"{split}_{name}_unwidened"] = plain[name]
    state = progress(history, config)
    without_average = [
        row["val_mae_without_ema"] for row in history if "val_mae_without_ema" in row
    ]
    return {
        "test_mae": test["mae"],
        "test_rmse": test["rmse"],
        "tta": config.tta,
        "tta_zooms": list(evaluation.tta_zooms(config.tta)),
        "ema": config.ema,
        "precision": config.precision,
        "onednn": devices.onednn_enabled(),
        "cpu_bfloat16_units": devices.bfloat16_units(),
        **readouts.maes(),
        **unwidened,
        "val_mae": state.best_val_mae,
        # With EMA: the best val MAE the trained weights reached without the average.
        "val_mae_without_ema": min(without_average, default=None),
        "best_epoch": state.best_epoch,
        "epochs_run": state.epochs_run,
        "epochs_planned": config.epochs,
        "train_seconds": state.train_seconds,
        "test_images": test["count"],
        "train_images": len(splits[0]),
        "val_images": len(splits[1]),
        "command": command,
        "machine": devices.describe_machine(),
        "strategy": devices.strategy_name(strategy),
        "replicas": strategy.num_replicas_in_sync,
        "tensorflow": tf.__version__,
        "config": dataclasses.asdict(config),
        # By age, gender and race; negative and zero predictions (Task 2).
        **{
            f"test_{key}": value
            for key, value in test.items()
            if key not in ("mae", "rmse", "count")
        },
    }


def _finish(config, history, splits, command, strategy):
    """Read out the best model on the test split; write metrics.json and the per-face
    test predictions; print the test MAE (the chief; the other workers return None)."""
    if not devices.is_chief(strategy):
        return None
    out = Path(config.out)
    model, readouts, unwidened = _read_out(config, out, splits)
    widening = None if unwidened is None else (model.age_widening, unwidened)
    metrics = run_metrics(
        config, history, splits, readouts, command, strategy, widening
    )
    write_json(out / evaluation.METRICS, metrics)
    extra = dict(readouts.quantiles)
    if unwidened is not None:  # The reported readout before the widening, beside it.
        extra[UNWIDENED_COLUMNS[config.tta]] = unwidened.reported.predicted
    evaluation.write_predictions(out / PREDICTIONS, readouts.test, extra)
    print(
        f"test MAE {metrics['test_mae']:.3f} years, RMSE {metrics['test_rmse']:.3f} "
        f"(best epoch {metrics['best_epoch']}, {metrics['train_seconds'] / 60:.1f} min "
        "of training)"
    )
    return Run(model, config, history, metrics, readouts.reported)


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
    from_preset = set(PRESETS["cpu"]) | {"image_size", "jit_compile"}
    for config_field in dataclasses.fields(TrainConfig):
        flag = "--" + config_field.name.replace("_", "-")
        help_text = config_field.metadata["help"]
        required = config_field.name == "out"
        if config_field.name in from_preset:
            help_text += " (default: from the preset)"
        elif required:
            help_text += " (required)"
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
            required=required,
        )


def config_from_arguments(arguments):
    """A TrainConfig from parsed arguments: flags not given keep the dataclass defaults."""
    given = {
        config_field.name: getattr(arguments, config_field.name)
        for config_field in dataclasses.fields(TrainConfig)
        if getattr(arguments, config_field.name) is not None
    }
    return TrainConfig(**given)


def _data_argument(parser):
    parser.add_argument("--data", help="folder, archive or URL of UTKFace")


def _evaluate_arguments(parser):
    parser.add_argument("--model", required=True, help="a model.keras file")
    _data_argument(parser)
    parser.add_argument("--limit", type=int, help="as given to train")
    parser.add_argument(
        "--split",
        choices=SPLITS,
        default="test",
        help="the faces to evaluate: train (not augmented), val or test (default: test)",
    )
    parser.add_argument(
        "--unknown-attributes",
        action="store_true",
        help="give a model trained with --attribute-inputs 'unknown' gender and race, "
        "as for a new photo, instead of the true labels",
    )
    parser.add_argument(
        "--figures", help="save evaluation.png (and learning_curve.png) in this folder"
    )
    parser.add_argument(
        "--predictions",
        help=f"write a CSV row per face here, with and without test-time augmentation "
        f"(as train writes {PREDICTIONS} for the test faces)",
    )
    evaluation.add_tta_argument(parser)


def _clear_errors(command):
    """A command that prints a one-line error and returns 1 instead of a traceback for
    the errors a user can fix (bad settings, missing files, a diverged run)."""

    def run(arguments, parser):
        try:
            return command(arguments, parser)
        except (TrainingDiverged, ValueError, FileNotFoundError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 1

    run.__doc__ = command.__doc__
    return run


def command_train(arguments, parser):
    """`train`: train or resume a model."""
    # A live progress bar on a terminal; one line per epoch in a log file.
    verbose = 1 if sys.stdout.isatty() else 2
    train(config_from_arguments(arguments), verbose, arguments.command_line)
    return 0


# The splits `evaluate` reads out, in the order prepare_data returns them.
SPLITS = ("train", "val", "test")


def command_evaluate(arguments, parser):
    """`evaluate`: the metrics of a saved model on a split (the test split by default), as
    JSON."""
    model = evaluation.load_keras_model(arguments.model)
    if arguments.unknown_attributes and not getattr(model, "attribute_inputs", False):
        parser.error(f"{arguments.model} has no gender and race inputs")
    splits = prepare_data(TrainConfig(data=arguments.data, limit=arguments.limit))
    test = splits[SPLITS.index(arguments.split)]
    test = utk_data.decode_records(test, model.image_size)  # once for both readouts
    known = not arguments.unknown_attributes
    views = evaluation.tta_zooms(arguments.tta_zooms)
    readouts = {  # Both readouts, as train writes them; the asked-for one first.
        PREDICTION_COLUMNS[tta]: evaluation.predict_records(
            model, test, attributes_known=known, tta=views if tta else False
        )
        for tta in (arguments.tta, not arguments.tta)
    }
    predictions = readouts[PREDICTION_COLUMNS[arguments.tta]]
    print(json.dumps(evaluate_predictions(*predictions[1:]), indent=2))
    if arguments.predictions:
        evaluation.write_predictions(
            arguments.predictions, dict(sorted(readouts.items()))
        )
    if arguments.figures:
        evaluation.save_figures(
            arguments.model, predictions.true, predictions.predicted, arguments.figures
        )
    return 0


def command_baseline(arguments, parser):
    """`baseline`: the median predictor's test metrics, as JSON."""
    train_records, _, test = prepare_data(TrainConfig(data=arguments.data))
    print(json.dumps(evaluation.median_baseline(train_records, test), indent=2))
    return 0


# Each command: its help, the function that adds its arguments, the function that runs it.
COMMANDS = {
    "train": ("train or resume a model", _add_config_arguments, command_train),
    "evaluate": (
        "test-split metrics of a model",
        _evaluate_arguments,
        command_evaluate,
    ),
    "baseline": (
        "test metrics of predicting the median training age",
        _data_argument,
        command_baseline,
    ),
    "compare": (
        "a table of finished runs (runs differing only in seed form one row, with mean "
        "± sd and an interval against the first row) and their validation curves",
        report.add_compare_arguments,
        report.compare_command,
    ),
    "report": (
        f"re-draw the tables and figures that RESULTS/{report.REPORT} lists, from the "
        "runs kept in RESULTS",
        report.add_report_arguments,
        report.report_command,
    ),
    "predict": (
        "ages of the faces in pictures (a CSV row per face)",
        photos.add_predict_arguments,
        photos.predict_command,
    ),
    "export": (
        "a model as a SavedModel or a TFLite file, with its test MAE beside the Keras "
        "model's",
        export.add_export_arguments,
        export.export_command,
    ),
}


def _parser():
    """The argument parser of every command."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[1:3]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_arguments, _) in COMMANDS.items():
        add_arguments(commands.add_parser(name, help=help_text))
    return parser


def main(argv=None):
    """The command line: train, evaluate, baseline, compare, report, predict, export."""
    argv = sys.argv[1:] if argv is None else [str(argument) for argument in argv]
    # The commands save their figures into files and never show them.
    matplotlib.use("Agg")
    parser = _parser()
    arguments = parser.parse_args(argv)
    # What metrics.json records as the command that made a run.
    arguments.command_line = " ".join(["train_loop.py", *argv])
    return _clear_errors(COMMANDS[arguments.command][2])(arguments, parser)


if __name__ == "__main__":
    sys.exit(main())
