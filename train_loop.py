"""Train the age models with a hand-written `tf.GradientTape` loop, and the command line.

    python train_loop.py train --out runs/default                   # the CPU preset
    python train_loop.py train --preset gpu --time-budget 150 --out runs/gpu
    python train_loop.py train --arch course_cnn --out runs/course  # the course network
    python train_loop.py evaluate --model runs/default/model.keras
    python train_loop.py predict --model runs/default/model.keras photo.jpg my_faces/
    python train_loop.py export --model runs/default/model.keras --format tflite

Running the same `train` command again resumes from the last checkpoint in `--out` (after
a Colab disconnect or a `kill -9`) and ends where an uninterrupted run ends. `predict` finds
the faces in a photo and frames each as UTKFace frames its faces (`--crop auto`).

This file holds the model and its optimizer, the weight average, the Trainer (the train
step and the test step), the time budget, `train`, and the table of commands. The other
rooms: config.py (the settings), runs.py (a run's files), finish.py (a finished run read
out and its metrics written), readout.py (what a saved model answers), evaluation.py,
report.py, photos.py, export.py and devices.py.
"""

import argparse
import dataclasses
import math
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

# devices first: it sets TensorFlow's environment (the Keras backend, oneDNN) before
# TensorFlow is imported.
import devices

import keras
import matplotlib
import numpy as np
import tensorflow as tf

import augmentation
import evaluation
import export
import finish
import photos
import report
import runs
import serve
import utk_data
from config import PRESETS, blocks_per_stage
from config import TrainConfig  # noqa: F401 (the notebook)
from config import check_config, check_loss_weighting_epochs
from config import resolve_config, resumed_config, run_name  # noqa: F401 (the notebook)
from flags import add_config_arguments, config_from_arguments
from losses import lds_age_weights, log_age_prior, loss_terms, rank_similarity
from model import age_labels, ages_from_outputs, build_model, model_head, model_inputs
from runs import progress
from schedules import learning_rate_schedule


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
    network = dict(PRESETS[config.preset]["network"])
    # --width scales every stage's channels, in multiples of 16 (at least 16): the
    # processor's vector kernels run other counts far slower.
    network["widths"] = tuple(
        max(16, round(width * config.width / 16) * 16) for width in network["widths"]
    )
    return build_model(
        "age_cnn",
        **network,
        blocks_per_stage=blocks_per_stage(config.blocks),
        head=config.head,
        max_age=utk_data.MAX_AGE,
        gender_head=config.gender_head,
        attribute_inputs=config.attribute_inputs,
        distribution_head=config.distribution_head and config.head == "regression",
        synchronized_batch_norm=synchronized,
        fused_batch_norm=config.fused_batch_norm,
        squeeze_excite=config.squeeze_excite,
        pooled_shortcut=config.pooled_shortcut,
        eca=config.eca,
        blur=config.blur,
        activation=config.activation,
        pooling=config.pooling,
        stem=config.stem,
        unnormalized_parts=config.unnormalized_parts,
        standardized_kernels=config.standardized_kernels,
        dropout=config.dropout,
        members=config.members,
        members_share=config.members_share,
        **options,
    )


# ---------------------------------------------------------------------------------------
# The optimizer and the training step
# ---------------------------------------------------------------------------------------


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


def make_optimizer(config, steps_per_epoch):
    """AdamW, Lion or the course's RMSprop, on the config's learning-rate schedule."""
    learning_rate = learning_rate_schedule(
        config.schedule,
        config.learning_rate,
        total_steps=config.epochs * steps_per_epoch,
        warmup_steps=config.warmup_epochs * steps_per_epoch,
    )
    if config.optimizer == "rmsprop":
        optimizer = keras.optimizers.RMSprop(learning_rate)
    else:
        decoupled = {"adamw": keras.optimizers.AdamW, "lion": keras.optimizers.Lion}
        optimizer = decoupled[config.optimizer](
            learning_rate, weight_decay=config.weight_decay
        )
        # Decay the kernels only: not the biases, batch norm's scales and shifts, or the
        # standardized kernels' gains that stand for those scales (as NF-ResNets do).
        optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta", "gain"])
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
        """Move the averages towards the current weights (inside the train step; its ops
        under the name "weight_average", which a profile reads)."""
        with tf.name_scope("weight_average"):
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

    `age_weights`, a loss weight for every age (losses.lds_age_weights), weighs each face's
    loss by its age; None: every face weighs the same. `age_prior`, the log probability
    of every age among the training faces (losses.log_age_prior), is what the Balanced MSE
    term divides out (needed when config.balanced_mse is on). The model and the optimizer
    must have been made in `strategy.scope()`."""

    def __init__(
        self, model, optimizer, config, age_weights=None, strategy=None, age_prior=None
    ):
        self.model, self.optimizer, self.config = model, optimizer, config
        self.strategy = strategy or tf.distribute.get_strategy()
        self.age_weights = None if age_weights is None else tf.constant(age_weights)
        if config.balanced_mse and age_prior is None:
            raise ValueError("--balanced-mse needs the training ages' distribution")
        self.age_prior = None if age_prior is None else tf.constant(age_prior)
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
        # The two steps, compiled into TensorFlow graphs (and by XLA with jit_compile).
        # Under several replicas a tf.function inside strategy.run cannot hold their
        # synchronisation (batch norm's statistics, the gradients): the update runs inside
        # the distributed step's graph there, without XLA.
        self._compiled_update = self.update
        if self.strategy.num_replicas_in_sync == 1:
            self._compiled_update = tf.function(
                self.update, jit_compile=config.jit_compile
            )
        self.train_step = tf.function(self._train_on_replicas)
        self.test_step = tf.function(self._predict, jit_compile=config.jit_compile)

    def _train_on_replicas(self, images, labels, seeds=None, size=None):
        """A train step of every replica on its share of a global batch; returns the
        global batch's loss. A batch of make_dataset(raw=True) holds uint8 images and
        their augmentation seeds, which the step resizes to `size` (None: as they are);
        float images prepared before come without seeds."""
        losses = self.strategy.run(
            lambda *batch: self._train_on_replica(*batch, size=size),
            args=(images, labels, seeds),
        )
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)

    def _train_on_replica(self, images, labels, seeds=None, size=None):
        """One replica's step: its images scaled, augmented and resized to `size` where the
        model runs (on the GPU, outside XLA, which has no kernel for crop-and-resize), then
        the update."""
        if seeds is not None:
            seed = seeds[0]  # Every row of a batch carries the batch's seed.
            if self.strategy.num_replicas_in_sync > 1:
                replica = tf.distribute.get_replica_context().replica_id_in_sync_group
                seed = tf.random.experimental.stateless_fold_in(seed, replica)
            images = augmentation.prepare_batch(
                images, seed, self.config.augmentation, size, self.config.start_view
            )
        return self._compiled_update(images, labels)

    def update(self, images, labels):
        """One training update on a batch: the loss under the tape, its gradients, the
        optimizer's step."""
        if self.config.selective_backprop < 1:
            images, labels = self._hard_faces(images, labels)
        inputs = model_inputs(self.model, images, labels)
        with tf.GradientTape() as tape:
            # training=True: dropout on, batch norm learns from this batch.
            if self.config.rank_sim:
                embeddings = []  # the features each member's head reads
                outputs = self.model.forward(inputs, True, embeddings=embeddings)
            else:
                outputs = self.model(inputs, training=True)
            loss = self.loss(outputs, labels)  # this replica's share of the mean
            if self.config.rank_sim:
                loss = loss + self._rank_similarity(embeddings, labels)
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

    def _hard_faces(self, images, labels):
        """The faces of a replica's batch that its step trains on, with selective_backprop
        below 1: its share of config.batch_size of them, drawn without replacement with a
        chance proportional to 1 + the error in years of the age predicted for them now
        (in inference mode; of several members, by the first alone, at one member's
        cost), from a seed of the run's seed and the step's number (a
        resumed run draws the same faces)."""
        if getattr(self.model, "members", 1) > 1:  # plain regression on images
            predicted = self.model.first_member_ages(images)[:, 0]  # (read,)
        else:
            predicted = self._predict(images, labels)[:, 0]
        errors = tf.abs(predicted - tf.cast(age_labels(labels)[:, 0], predicted.dtype))
        step = tf.cast(self.optimizer.iterations, tf.int64)
        seed = tf.stack([tf.constant(self.config.seed, tf.int64), step])
        if self.strategy.num_replicas_in_sync > 1:
            replica = tf.distribute.get_replica_context().replica_id_in_sync_group
            seed = tf.random.experimental.stateless_fold_in(seed, replica)
        count = self.config.batch_size // self.strategy.num_replicas_in_sync
        chosen = weighted_sample(1.0 + errors, count, seed)
        take = lambda tensor: tf.gather(tensor, chosen)  # noqa: E731
        return take(images), tf.nest.map_structure(take, labels)

    def loss(self, outputs, labels):
        """The training loss of a replica's batch (losses.loss_terms): the images' losses
        summed and divided by the global batch size, so that the replicas' gradients add
        up to those of the global batch's mean loss (with one replica: the mean). With
        config.balanced_mse, plus that weight times the Balanced MSE; with config.mutual, that
        weight times the members' disagreement."""
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
            balanced_mse_weight=self.config.balanced_mse,
            age_prior=self.age_prior,
            mutual_weight=self.config.mutual,
        )
        return terms["total"]

    def _rank_similarity(self, embeddings, labels):
        """config.rank_sim times the RankSim term of each member's features, their mean,
        as this replica's share (each replica ranks its own faces)."""
        ages = age_labels(labels)
        terms = [rank_similarity(features, ages) for features in embeddings]
        replicas = self.strategy.num_replicas_in_sync
        return self.config.rank_sim * tf.add_n(terms) / (len(terms) * replicas)

    def weigh_epoch(self, epoch):
        """Let the age weights count in `epoch` (from 0), or not: in every epoch, or with
        config.loss_weighting_epochs only in that many last ones."""
        last = self.config.loss_weighting_epochs
        weighted = not last or epoch >= self.config.epochs - last
        self.weighting.assign(1.0 if weighted else 0.0)

    def _predict(self, images, labels):
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

    def validate(self, dataset, trained=True):
        """Val MAE and RMSE of the evaluated weights and, when those are an average and
        `trained`, the val MAE of the trained weights themselves (else None), to show what
        the average adds."""
        trained_mae = None
        if self.average is not None and trained:
            trained_mae = self._validate(dataset)[0]
        with self.evaluated_weights():
            mae, rmse = self._validate(dataset)
        return mae, rmse, trained_mae

    def _validate(self, dataset):
        for metric in (self.val_mae, self.val_rmse):
            metric.reset_state()
        for images, labels in dataset:
            predicted = self.test_step(images, labels)
            self.val_mae.update_state(age_labels(labels), predicted)
            self.val_rmse.update_state(age_labels(labels), predicted)
        return float(self.val_mae.result()), float(self.val_rmse.result())


def weighted_sample(weights, count, seed):
    """Indices of `count` of the len(weights) items, drawn without replacement, each
    draw with a chance proportional to the weights of the items left (the Gumbel top-k
    trick: the largest log weights plus Gumbel noise); `seed` a stateless seed."""
    uniform = tf.random.stateless_uniform(
        tf.shape(weights), seed, minval=1e-12, maxval=1.0, dtype=weights.dtype
    )
    keys = tf.math.log(weights) - tf.math.log(-tf.math.log(uniform))
    return tf.math.top_k(keys, k=count, sorted=False).indices


@tf.function
def train_step(model, optimizer, loss_fn, images, ages):
    """The training step at its core, as the notebook shows and runs it: Trainer.update is
    this step plus mixed precision, replicas and the weight average."""
    with tf.GradientTape() as tape:
        predicted = model(images, training=True)  # (batch, 1)
        loss = loss_fn(ages, predicted)
    gradients = tape.gradient(loss, model.trainable_variables)
    optimizer.apply(gradients, model.trainable_variables)
    return loss


# ---------------------------------------------------------------------------------------
# The time budget
# ---------------------------------------------------------------------------------------


def _training_dataset(train_images, config, seed, start_epoch=0, epochs=None):
    """Shuffled training batches from start_epoch on, uint8 images with their labels and
    augmentation seed, which the train step scales and augments (see make_dataset)."""
    return utk_data.make_dataset(
        train_images,
        config.image_size,
        config.read_batch_size,
        True,
        augmentation=config.augmentation,
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
    age_prior = _age_prior(config, train_images.records)
    trainer = Trainer(model, make_optimizer(config, 1), config, age_prior=age_prior)
    iterator = iter(_training_dataset(train_images, config, seed=config.seed + 1))

    def seconds_per_step(size):
        trainer.train_step(*next(iterator), size=size)  # Traces and compiles.
        start = time.perf_counter()
        for _ in range(batches):
            float(trainer.train_step(*next(iterator), size=size))
        return (time.perf_counter() - start) / batches

    return schedule_seconds(config, seconds_per_step)


def schedule_seconds(config, seconds_per_step):
    """The mean seconds of a train step over config's epochs, from seconds_per_step(side):
    with progressive resizing, its share of steps on smaller images counted as such."""
    seconds = seconds_per_step(config.image_size)
    if not config.start_image_size:
        return seconds
    fraction = config.start_fraction
    return (
        fraction * seconds_per_step(config.start_image_size) + (1 - fraction) * seconds
    )


# The measured steps of the throwaway model run a little faster than the steady state of
# the real run (EXPERIMENTS.md): plan with a margin so that a budgeted run ends inside its
# budget.
SPEED_MARGIN = 1.05


def _epoch_seconds(seconds_per_step, steps, val_steps, val_passes=1):
    """The planned seconds of an epoch: `steps` train steps, and `val_passes` validations
    (TrainConfig.validation_passes: with an average of the weights, its own and, some
    epochs, the trained weights')."""
    # A test step costs about a third of a train step.
    validation_steps = val_passes * val_steps / 3
    return SPEED_MARGIN * seconds_per_step * (steps + validation_steps)


def _epoch_steps(config, train_count, val_count):
    """(train steps, validation steps, validation passes) of an epoch of `config`: the
    passes an epoch's mean (progressive resizing does not validate its first epochs)."""
    passes = config.validation_passes
    if config.start_image_size:
        passes *= 1 - config.start_fraction
    return (
        utk_data.steps_per_epoch(train_count, config.read_batch_size),
        math.ceil(val_count / config.batch_size),
        passes,
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


def train(config, verbose=1, command=None, strategy=None):
    """Train (or resume) a model as `config` says; return the best model and its metrics.

    `command`, the command line that asked for it, is recorded in metrics.json. The
    replicas of `strategy` (by default the one config.strategy names) share each batch;
    only the chief process writes files, and only it returns a Run (the others None)."""
    started = time.perf_counter()
    config = resolve_config(config)
    check_config(config)
    if not config.time_budget:  # A time budget fits the epochs later.
        check_loss_weighting_epochs(config)  # before the images are decoded
    strategy = strategy or devices.make_strategy(config.strategy)
    if config.time_budget and devices.strategy_name(strategy) == "multi_worker":
        raise ValueError(
            "--time-budget with several workers: each would time its own steps and might "
            "plan another number of epochs than the others; give --epochs instead"
        )
    out = runs.make_run_folder(config.out)
    with runs.lock(out, devices.is_chief(strategy)):
        splits = prepare_data(config)
        checkpoint = runs.read_checkpoint(out)
        if checkpoint is not None:
            config = resumed_config(checkpoint.config, config, out)
        history = _train(config, splits, checkpoint, started, strategy, verbose)
        run = finish.finish(config, history, splits, command, strategy)
        devices.wait_for_all(strategy)  # The other workers wait for the chief's files.
    return run


def _train(config, splits, checkpoint, started, strategy, verbose):
    """Train the epochs a run has left, from its checkpoint (None: from the start); return
    its history."""
    train_records, val_records, _ = splits
    initial_age = float(np.mean([record.age for record in train_records]))
    # Decoded once, in memory for the whole run: every epoch, and the speed measurement.
    train_images = utk_data.decode_records(train_records, config.image_size)
    if checkpoint is None and config.time_budget:
        epochs = fit_to_time_budget(
            config, train_images, val_records, initial_age, started
        )
        config = dataclasses.replace(config, epochs=epochs)
    steps = utk_data.steps_per_epoch(len(train_images.records), config.read_batch_size)
    trainer = _make_trainer(config, strategy, initial_age, train_records, steps)
    history = []
    if checkpoint is not None:
        runs.restore_checkpoint(
            checkpoint, trainer.model, trainer.optimizer, trainer.average
        )
        history = checkpoint.history
        print(f"resuming {config.out} after epoch {len(history)} of {config.epochs}")
    if not progress(history, config).finished:
        epochs = Epochs.of(trainer, train_images, val_records, len(history))
        _train_epochs(trainer, history, epochs, verbose)
    return history


def _make_trainer(config, strategy, initial_age, train_records, steps):
    """The model (built from config.seed), its optimizer and their Trainer, the model and
    the optimizer made in the strategy's scope."""
    replicas = strategy.num_replicas_in_sync
    for size, flags in (
        (config.batch_size, "--batch-size"),
        (config.read_batch_size, "--batch-size and --selective-backprop"),
    ):
        if size % replicas:
            raise ValueError(
                f"a batch of {size} images does not split evenly between {replicas} "
                f"replicas: choose {flags} for a batch divisible by {replicas}"
            )
    keras.utils.set_random_seed(config.seed)
    with strategy.scope(), dtype_policy(config.precision):
        model = make_model(config, initial_age, synchronized=replicas > 1)
        optimizer = make_optimizer(config, steps)
    age_weights = _age_weights(config, train_records)
    age_prior = _age_prior(config, train_records)
    return Trainer(model, optimizer, config, age_weights, strategy, age_prior)


def _age_weights(config, train_records):
    """The loss weight of every age that config.loss_weighting asks for, or None."""
    check_loss_weighting_epochs(config)  # the epochs a time budget fitted, too
    if config.loss_weighting != "lds":
        return None
    ages = [record.age for record in train_records]
    return lds_age_weights(ages, utk_data.MAX_AGE)


def _age_prior(config, train_records):
    """The training ages' log-prior that config.balanced_mse needs, or None."""
    if not config.balanced_mse:
        return None
    return log_age_prior([record.age for record in train_records], utk_data.MAX_AGE)


class Epochs(NamedTuple):
    """What the epochs of a run go through: the training batches (distributed over the
    replicas), the steps of an epoch, the validation batches, and the run's folder."""

    batches: object  # an iterator of the strategy's distributed batches
    steps: int
    val_dataset: object  # a tf.data.Dataset
    out: Path

    @classmethod
    def of(cls, trainer, train_images, val_records, start):
        """The Epochs of a Trainer's run from epoch `start` (0: the first) on."""
        config = trainer.config
        steps = utk_data.steps_per_epoch(
            len(train_images.records), config.read_batch_size
        )
        dataset = _training_dataset(
            train_images, config, config.seed, start, config.epochs
        )
        val_dataset = evaluation.evaluation_dataset(
            val_records, config.image_size, config.batch_size
        )
        batches = iter(trainer.strategy.experimental_distribute_dataset(dataset))
        return cls(batches, steps, val_dataset, Path(config.out))


def _train_epochs(trainer, history, epochs, verbose):
    """Run the remaining epochs; after each, the chief saves the best model, a checkpoint,
    the history and the epoch's TensorBoard curves."""
    config, out = trainer.config, epochs.out
    chief = devices.is_chief(trainer.strategy)
    curves = runs.Curves(out / runs.LOGS, epochs.steps, len(history)) if chief else None
    for epoch in range(len(history), config.epochs):
        trainer.weigh_epoch(epoch)
        try:
            row, step_losses = _run_epoch(trainer, epochs, epoch, verbose)
        except TrainingDiverged as error:
            raise TrainingDiverged(
                f"{error}: stopped; the last good checkpoint in {out} is kept (try a "
                "lower --learning-rate)"
            ) from None
        history.append(row)
        state = progress(history, config)
        if chief:
            curves.write(row, step_losses)
            if state.best_epoch == epoch + 1:
                with trainer.evaluated_weights():
                    runs.save_model(out, trainer.model)
            runs.save_checkpoint(
                out, trainer.model, trainer.optimizer, config, history, trainer.average
            )
            runs.write_json(out / runs.HISTORY, history)
        if state.finished:
            if state.bad_epochs >= config.patience and verbose:
                print(f"early stop: no better val MAE for {config.patience} epochs")
            break


def _train_steps(trainer, epochs, epoch, progress_bar):
    """Train an epoch's steps; return the loss of every LOG_EVERY-th step (runs.Curves)
    by step number."""
    losses = {}
    size = trainer.config.train_image_size(epoch)
    for step in range(epochs.steps):
        loss = float(trainer.train_step(*next(epochs.batches), size=size))
        if not math.isfinite(loss):
            raise TrainingDiverged(
                f"the loss became {loss} at epoch {epoch + 1}, step {step + 1}"
            )
        if step % runs.LOG_EVERY == 0:
            losses[epoch * epochs.steps + step] = loss
        metrics = [
            ("loss", trainer.train_loss.result()),
            ("mae", trainer.train_mae.result()),
        ]
        progress_bar.update(step + 1, [(name, float(value)) for name, value in metrics])
    return losses


def _run_epoch(trainer, epochs, epoch, verbose):
    """Train one epoch and validate: (the epoch's history row, the loss of every
    LOG_EVERY-th step)."""
    epoch_start = time.perf_counter()
    trainer.reset_metrics()
    progress_bar = keras.utils.Progbar(
        epochs.steps, verbose=verbose, stateful_metrics=["loss", "mae"]
    )
    if verbose:
        print(f"epoch {epoch + 1}/{trainer.config.epochs}")
    step_losses = _train_steps(trainer, epochs, epoch, progress_bar)
    train_seconds = time.perf_counter() - epoch_start
    # Progressive resizing's epochs on smaller images are not validated: the faces are
    # validated at full size, which those epochs do not train for yet.
    val_mae = val_rmse = trained_mae = None
    if epoch >= trainer.config.start_epochs:
        val_mae, val_rmse, trained_mae = trainer.validate(
            epochs.val_dataset, trainer.config.validates_trained(epoch)
        )
    seconds = time.perf_counter() - epoch_start
    row = {
        "epoch": epoch + 1,
        "loss": float(trainer.train_loss.result()),
        "mae": float(trainer.train_mae.result()),
        "val_mae": val_mae,
        "val_rmse": val_rmse,
        "learning_rate": float(_current_learning_rate(trainer.optimizer)),
        "seconds": seconds,
        # Training images read a second, validation left out.
        "images_per_second": epochs.steps
        * trainer.config.read_batch_size
        / train_seconds,
    }
    if trained_mae is not None:
        row["val_mae_without_ema"] = trained_mae
    if trainer.config.start_image_size:  # progressive resizing: this epoch's side
        row["train_image_size"] = trainer.config.train_image_size(epoch)
    if verbose and val_mae is None:
        print(f"not validated: trained on smaller images  ({seconds:.0f} s)")
    elif verbose:
        without = f" (without EMA {trained_mae:.3f})" if trained_mae is not None else ""
        print(
            f"val_mae {val_mae:.3f}{without}  val_rmse {val_rmse:.3f}  ({seconds:.0f} s)"
        )
    return row, step_losses


def _current_learning_rate(optimizer):
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    return inner.learning_rate


# ---------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------


def _clear_errors(command):
    """A command that prints a one-line error and returns 1 instead of a traceback for
    the errors a user can fix (bad settings, missing files, a diverged run)."""

    def run(arguments, parser):
        try:
            return command(arguments, parser)
        except (TrainingDiverged, ValueError, OSError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("interrupted: what was saved before is kept", file=sys.stderr)
            return 130

    run.__doc__ = command.__doc__
    return run


def command_train(arguments, parser):
    """`train`: train or resume a model."""
    # A live progress bar on a terminal; one line per epoch in a log file.
    verbose = 1 if sys.stdout.isatty() else 2
    train(config_from_arguments(arguments), verbose, arguments.command_line)
    return 0


# Each command: its help, the function that adds its arguments, the function that runs it.
COMMANDS = {
    "train": ("train or resume a model", add_config_arguments, command_train),
    "evaluate": (
        "test-split metrics of a model",
        evaluation.add_evaluate_arguments,
        evaluation.evaluate_command,
    ),
    "baseline": (
        "test metrics of predicting the median training age",
        evaluation.add_data_argument,
        evaluation.baseline_command,
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
    "serve": (serve.HELP, serve.add_serve_arguments, serve.serve_command),
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
