"""Train, evaluate and use the age models with a hand-written `tf.GradientTape` loop.

    python train_loop.py train --out runs/cpu                       # the CPU preset
    python train_loop.py train --preset gpu --time-budget 150 --out runs/gpu
    python train_loop.py train --arch course_cnn --optimizer rmsprop --out runs/course
    python train_loop.py evaluate --model runs/cpu/model.keras
    python train_loop.py predict --model runs/cpu/model.keras photo.jpg my_faces/

Running the same `train` command again resumes from the last checkpoint in `--out` (after
a Colab disconnect or a `kill -9`) and ends where an uninterrupted run ends. The models
expect an aligned, tightly cropped face like UTKFace's: there is no face detector.
"""

import argparse
import csv
import dataclasses
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import utk_data  # noqa: E402
from model import ages_from_outputs, build_model, loss_terms  # noqa: E402

AGE_BINS = [(low, low + 9) for low in range(0, 80, 10)] + [(80, utk_data.MAX_AGE)]
CHECKPOINT = "checkpoint.npz"


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


# What both presets share: our network, AdamW with warm-up + cosine decay, augmentation.
_COMMON = dict(
    arch="age_cnn",
    optimizer="adamw",
    schedule="cosine",
    weight_decay=5e-4,
    augment=True,
)
PRESETS = {
    # 96 px, 50 epochs: about 21 minutes for the whole command on 2 CPU cores (README).
    "cpu": dict(
        _COMMON,
        batch_size=64,
        epochs=50,
        learning_rate=3e-3,
        warmup_epochs=1.0,
        patience=10,
    ),
    # For a Colab GPU: a ResNet-18-sized network at 128 px, more epochs.
    "gpu": dict(
        _COMMON,
        batch_size=128,
        epochs=60,
        learning_rate=2e-3,
        warmup_epochs=2.0,
        patience=12,
    ),
}
# The course's settings, used when --arch course_cnn is asked for without more flags.
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
)


def has_gpu():
    """True when TensorFlow sees a GPU."""
    return bool(tf.config.list_physical_devices("GPU"))


def resolve_config(config):
    """Fill every `None` of a TrainConfig from its preset (and the course settings)."""
    preset = config.preset or ("gpu" if has_gpu() else "cpu")
    values = dict(PRESETS[preset])
    arch = config.arch or values["arch"]
    if arch == "course_cnn":
        values.update(COURSE_SETTINGS)
    else:
        import model as model_module

        values["image_size"] = model_module.PRESETS[preset]["image_size"]
    gpu = has_gpu()
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


def _uses_attributes(model):
    return bool(
        getattr(model, "attribute_inputs", False)
        or getattr(model, "gender_head", False)
    )


def _model_inputs(model, images, labels, attributes_known=True):
    if not getattr(model, "attribute_inputs", False):
        return images
    if not attributes_known:
        # -1 is "unknown", as for a new photo whose gender and race nobody gave.
        unknown = -tf.ones(tf.shape(images)[:1], tf.int32)
        return {"image": images, "gender": unknown, "race": unknown}
    return {"image": images, "gender": labels["gender"], "race": labels["race"]}


def _head(model):
    # Any Keras model that outputs ages (batch, 1) is a regression model here.
    return getattr(model, "head", "regression")


def _ages(labels):
    return labels["age"] if isinstance(labels, dict) else labels


# ---------------------------------------------------------------------------------------
# The loop
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


class Trainer:
    """The model, its optimizer, metrics and the compiled train and test steps."""

    def __init__(self, model, optimizer, config):
        self.model, self.optimizer, self.config = model, optimizer, config
        self.train_loss = keras.metrics.Mean(name="loss")
        self.train_mae = keras.metrics.MeanAbsoluteError(name="mae")
        self.val_mae = keras.metrics.MeanAbsoluteError(name="val_mae")
        self.val_rmse = keras.metrics.RootMeanSquaredError(name="val_rmse")
        self.optimizer.build(model.trainable_variables)
        self.train_step = tf.function(self._train_step, jit_compile=config.jit_compile)
        self.test_step = tf.function(self._test_step, jit_compile=config.jit_compile)

    def _train_step(self, images, labels):
        with tf.GradientTape() as tape:
            # training=True: dropout on, batch norm learns from this batch.
            outputs = self.model(
                _model_inputs(self.model, images, labels), training=True
            )
            loss = loss_terms(_head(self.model), outputs, labels, self.config.loss)[
                "total"
            ]
            scaled_loss = self.optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled_loss, self.model.trainable_variables)
        self.optimizer.apply(gradients, self.model.trainable_variables)
        self.train_loss.update_state(loss)
        self.train_mae.update_state(
            _ages(labels), ages_from_outputs(_head(self.model), outputs)
        )
        return loss

    def _test_step(self, images, labels):
        outputs = self.model(_model_inputs(self.model, images, labels), training=False)
        return ages_from_outputs(_head(self.model), outputs)

    def reset_metrics(self):
        """Reset the metrics at the start of an epoch."""
        for metric in (self.train_loss, self.train_mae, self.val_mae, self.val_rmse):
            metric.reset_state()

    def validate(self, dataset):
        """Val MAE and RMSE of the current weights."""
        for images, labels in dataset:
            predicted = self.test_step(images, labels)
            self.val_mae.update_state(_ages(labels), predicted)
            self.val_rmse.update_state(_ages(labels), predicted)
        return float(self.val_mae.result()), float(self.val_rmse.result())


# ---------------------------------------------------------------------------------------
# Checkpoints: one .npz file written atomically, holding every model and optimizer variable
# (the dropout seed-generator states among them) and the run's state as JSON.
# ---------------------------------------------------------------------------------------


def _atomic_write(path, write):
    # The temporary name keeps the suffix: Keras only saves to a name ending in .keras.
    temporary = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    write(temporary)
    with open(temporary, "rb") as file:
        os.fsync(file.fileno())
    os.replace(temporary, path)


def save_checkpoint(folder, model, optimizer, state):
    """Save model, optimizer and state so that a kill at any moment keeps the last good one."""
    arrays = {f"model_{i}": v.numpy() for i, v in enumerate(model.variables)}
    arrays.update(
        {f"optimizer_{i}": v.numpy() for i, v in enumerate(optimizer.variables)}
    )
    arrays["state"] = np.array(json.dumps(state))

    def write(path):
        with open(path, "wb") as file:
            np.savez(file, **arrays)

    _atomic_write(Path(folder) / CHECKPOINT, write)


def load_checkpoint(folder, model, optimizer):
    """Restore a checkpoint into model and optimizer; return its state, or None if absent."""
    path = Path(folder) / CHECKPOINT
    if not path.exists():
        return None
    with np.load(path) as arrays:
        for prefix, variables in (
            ("model", model.variables),
            ("optimizer", optimizer.variables),
        ):
            saved = sorted(
                (k for k in arrays.files if k.startswith(prefix + "_")),
                key=lambda k: int(k.split("_")[1]),
            )
            if len(saved) != len(variables):
                raise ValueError(
                    f"{path}: the checkpoint does not match this model ({prefix} variables)"
                )
            for variable, key in zip(variables, saved):
                if tuple(variable.shape) != arrays[key].shape:
                    raise ValueError(
                        f"{path}: the checkpoint does not match this model ({variable.path})"
                    )
                variable.assign(arrays[key])
        return json.loads(str(arrays["state"]))


def _write_json(path, value):
    def write(temporary):
        temporary.write_text(json.dumps(value, indent=2) + "\n")

    _atomic_write(Path(path), write)


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


class _policy:
    """Build models under a dtype policy, then restore the previous one."""

    def __init__(self, mixed):
        self.name = "mixed_float16" if mixed else "float32"

    def __enter__(self):
        self.previous = keras.config.dtype_policy().name
        keras.config.set_dtype_policy(self.name)

    def __exit__(self, *exc):
        keras.config.set_dtype_policy(self.previous)


def _build(config, initial_age):
    kwargs = dict(initial_age=initial_age, output_activation=config.output_activation)
    if config.arch == "course_cnn":
        return build_model("course_cnn", image_size=config.image_size, **kwargs)
    return build_model(
        "age_cnn",
        preset=config.preset,
        image_size=config.image_size,
        head=config.head,
        gender_head=config.gender_head,
        attribute_inputs=config.attribute_inputs,
        **kwargs,
    )


def _measure_seconds_per_step(config, train_images, initial_age, batches=8):
    """Time a few steps of a throwaway copy of the model (it does not touch the real one)."""
    with _policy(config.mixed_precision):
        model = _build(config, initial_age)
    trainer = Trainer(model, make_optimizer(config, 1), config)
    dataset = utk_data.make_dataset(
        train_images,
        config.image_size,
        config.batch_size,
        True,
        augment=config.augment,
        with_attributes=True,
        seed=config.seed + 1,
    )
    iterator = iter(dataset)
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


def _describe_machine():
    gpus = [device.name for device in tf.config.list_physical_devices("GPU")]
    cpu = platform.processor() or platform.machine()
    return f"{os.cpu_count()} CPU cores ({cpu})" + (
        f", GPU {gpus}" if gpus else ", no GPU"
    )


def train(config, verbose=1):
    """Train (or resume) a model as `config` says; return the best model and its metrics."""
    started = time.perf_counter()
    config = resolve_config(config)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    train_records, val_records, test_records = prepare_data(config)
    initial_age = float(np.mean([record.age for record in train_records]))

    keras.utils.set_random_seed(config.seed)
    saved_state = None
    if (out / CHECKPOINT).exists():
        with np.load(out / CHECKPOINT) as arrays:
            saved_state = json.loads(str(arrays["state"]))
        _check_same_run(saved_state["config"], config, out)
        # The epochs fitted to a time budget are part of the run: a resume keeps them.
        config = TrainConfig(**saved_state["config"])
    # Decoded once, in memory for the whole run: every epoch, and the speed measurement.
    train_images = utk_data.decode_records(train_records, config.image_size)
    if saved_state is None and config.time_budget:
        config = dataclasses.replace(
            config,
            epochs=fit_to_time_budget(
                config, train_images, val_records, initial_age, started
            ),
        )
        keras.utils.set_random_seed(config.seed)

    with _policy(config.mixed_precision):
        model = _build(config, initial_age)
    steps = utk_data.steps_per_epoch(len(train_records), config.batch_size)
    trainer = Trainer(model, make_optimizer(config, steps), config)
    state = {
        "config": dataclasses.asdict(config),
        "epoch": 0,
        "step": 0,
        "best_val_mae": None,
        "best_epoch": None,
        "bad_epochs": 0,
        "history": [],
        "train_seconds": 0.0,
        "finished": False,
    }
    if saved_state is not None:
        state = load_checkpoint(out, model, trainer.optimizer)
        print(f"resuming {out} after epoch {state['epoch']} of {config.epochs}")

    if not state["finished"]:
        _train_epochs(trainer, state, config, out, train_images, val_records, verbose)
    del train_images  # Frees the decoded training images before the test.
    return _finish(config, state, out, (train_records, val_records, test_records))


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


def _train_epochs(trainer, state, config, out, train_images, val_records, verbose):
    train_dataset = utk_data.make_dataset(
        train_images,
        config.image_size,
        config.batch_size,
        training=True,
        augment=config.augment,
        with_attributes=True,
        seed=config.seed,
        start_epoch=state["epoch"],
        epochs=config.epochs,
    )
    val_dataset = utk_data.make_dataset(
        val_records,
        config.image_size,
        config.batch_size,
        training=False,
        with_attributes=True,
    )
    steps = utk_data.steps_per_epoch(len(train_images.records), config.batch_size)
    batches = iter(train_dataset)
    for epoch in range(state["epoch"], config.epochs):
        epoch_start = time.perf_counter()
        trainer.reset_metrics()
        progress = keras.utils.Progbar(
            steps, verbose=verbose, stateful_metrics=["loss", "mae"]
        )
        if verbose:
            print(f"epoch {epoch + 1}/{config.epochs}")
        for step in range(steps):
            loss = float(trainer.train_step(*next(batches)))
            if not math.isfinite(loss):
                raise TrainingDiverged(
                    f"the loss became {loss} at epoch {epoch + 1}, step {step + 1}: stopped; "
                    f"the last good checkpoint in {out} is kept (try a lower --learning-rate)"
                )
            progress.update(
                step + 1,
                [
                    ("loss", float(trainer.train_loss.result())),
                    ("mae", float(trainer.train_mae.result())),
                ],
            )
        val_mae, val_rmse = trainer.validate(val_dataset)
        seconds = time.perf_counter() - epoch_start
        state["history"].append(
            {
                "epoch": epoch + 1,
                "loss": float(trainer.train_loss.result()),
                "mae": float(trainer.train_mae.result()),
                "val_mae": val_mae,
                "val_rmse": val_rmse,
                "learning_rate": float(_current_learning_rate(trainer.optimizer)),
                "seconds": seconds,
            }
        )
        state.update(epoch=epoch + 1, step=state["step"] + steps)
        state["train_seconds"] += seconds
        if verbose:
            print(f"val_mae {val_mae:.3f}  val_rmse {val_rmse:.3f}  ({seconds:.0f} s)")
        if state["best_val_mae"] is None or val_mae < state["best_val_mae"]:
            state.update(best_val_mae=val_mae, best_epoch=epoch + 1, bad_epochs=0)
            _atomic_write(out / "model.keras", trainer.model.save)
        else:
            state["bad_epochs"] += 1
        stop = state["bad_epochs"] >= config.patience or epoch + 1 == config.epochs
        if state["bad_epochs"] >= config.patience and verbose:
            print(f"early stop: no better val MAE for {config.patience} epochs")
        state["finished"] = stop
        save_checkpoint(out, trainer.model, trainer.optimizer, state)
        _write_json(out / "history.json", state["history"])
        if stop:
            break


def _current_learning_rate(optimizer):
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    return inner.learning_rate


def _finish(config, state, out, splits):
    """Evaluate the best model on the test split and write metrics.json."""
    model = keras.models.load_model(out / "model.keras")
    predictions = predict_records(model, splits[2], config.batch_size)
    test = evaluate_predictions(*predictions[1:])
    metrics = {
        "test_mae": test["mae"],
        "test_rmse": test["rmse"],
        "val_mae": state["best_val_mae"],
        "best_epoch": state["best_epoch"],
        "epochs_run": state["epoch"],
        "epochs_planned": config.epochs,
        "train_seconds": state["train_seconds"],
        "test_images": test["count"],
        "train_images": len(splits[0]),
        "val_images": len(splits[1]),
        "command": (
            " ".join(sys.argv) if Path(sys.argv[0]).name == "train_loop.py" else None
        ),
        "machine": _describe_machine(),
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
    print(
        f"test MAE {test['mae']:.3f} years, RMSE {test['rmse']:.3f} "
        f"(best epoch {state['best_epoch']}, {state['train_seconds'] / 60:.1f} min of training)"
    )
    return Run(model, config, state["history"], metrics, predictions)


# ---------------------------------------------------------------------------------------
# Evaluation and prediction
# ---------------------------------------------------------------------------------------


def predict_dataset(model, dataset, with_groups=False, attributes_known=True):
    """True and predicted ages, (n,) each, over a dataset of (images, labels).

    With with_groups=True, also a dict of the gender and race labels, (n,) each (empty when
    the dataset has no attributes), from the same single pass over the dataset. A model with
    attribute inputs gets the true gender and race, or "unknown" with attributes_known=False.
    """

    @tf.function  # A def, not a lambda: autograph cannot read a lambda's source here.
    def step(inputs):
        return ages_from_outputs(_head(model), model(inputs, training=False))

    true, predicted, groups = [], [], {"gender": [], "race": []}
    for images, labels in dataset:
        inputs = _model_inputs(model, images, labels, attributes_known)
        predicted.append(step(inputs).numpy()[:, 0])
        true.append(_ages(labels).numpy()[:, 0])
        if isinstance(labels, dict):
            for field in groups:
                groups[field].append(labels[field].numpy())
    ages = np.concatenate(true), np.concatenate(predicted)
    if not with_groups:
        return ages
    return (
        *ages,
        {field: np.concatenate(values) for field, values in groups.items() if values},
    )


class Predictions(NamedTuple):
    """Predicted ages paired with the records they belong to."""

    records: list  # the records whose image decoded, in order
    true: np.ndarray  # (n,)
    predicted: np.ndarray  # (n,)
    groups: dict  # "gender" and "race" labels, (n,) each


def predict_records(model, records, batch_size=64, attributes_known=True):
    """Predict the ages of records; a face whose image fails to decode is left out (warned)."""
    decoded = utk_data.decode_records(records, model.image_size)
    dataset = utk_data.make_dataset(
        decoded, model.image_size, batch_size, training=False, with_attributes=True
    )
    true, predicted, groups = predict_dataset(
        model, dataset, with_groups=True, attributes_known=attributes_known
    )
    return Predictions(decoded.records, true, predicted, groups)


def mae_by_age(true, predicted):
    """MAE per age bin (0-9, ..., 80+): {bin: (mae, count)}."""
    rows = {}
    for low, high in AGE_BINS:
        inside = (true >= low) & (true <= high)
        name = f"{low}+" if high == utk_data.MAX_AGE else f"{low}-{high}"
        mae = float(np.abs(true - predicted)[inside].mean()) if inside.any() else None
        rows[name] = {"mae": mae, "count": int(inside.sum())}
    return rows


def _mae_by_group(true, predicted, groups, names):
    rows = {}
    for index, name in enumerate(names):
        inside = groups == index
        mae = float(np.abs(true - predicted)[inside].mean()) if inside.any() else None
        rows[name] = {"mae": mae, "count": int(inside.sum())}
    return rows


def evaluate(model, dataset):
    """MAE, RMSE and MAE by age bin (and by gender and race, when labelled) on a dataset."""
    return evaluate_predictions(*predict_dataset(model, dataset, with_groups=True))


def evaluate_predictions(true, predicted, groups=None):
    """The metrics of `evaluate` from true and predicted ages and optional group labels."""
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
    for field, labels in (groups or {}).items():
        result[f"mae_by_{field}"] = _mae_by_group(true, predicted, labels, names[field])
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


def predict_ages(model, images, batch_size=64):
    """Predicted ages (n,) for float images in [0, 1] of the model's input size."""
    inputs = _model_inputs(model, images, labels=None, attributes_known=False)
    outputs = model.predict(inputs, batch_size=batch_size, verbose=0)
    return np.asarray(ages_from_outputs(_head(model), outputs))[:, 0]


def plot_history(history, file_name=None):
    """Training and validation MAE per epoch."""
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    figure, axes = plt.subplots(figsize=(6, 4))
    axes.plot(epochs, [row["mae"] for row in history], label="train MAE (augmented)")
    axes.plot(epochs, [row["val_mae"] for row in history], label="validation MAE")
    axes.set_xlabel("epoch")
    axes.set_ylabel("MAE (years)")
    axes.legend()
    axes.grid(alpha=0.3)
    if file_name:
        figure.savefig(file_name, dpi=120, bbox_inches="tight")
    return figure


def compare_runs(folders, file_name=None, against="epoch"):
    """A Markdown table of the runs' metrics, and their validation curves in one plot.

    against="minutes" plots the curves against cumulative training time instead of epochs
    and marks each run's final test MAE at its total training time: test MAE against
    training budget, across runs of different lengths.
    """
    import matplotlib.pyplot as plt

    if against not in ("epoch", "minutes"):
        raise ValueError(f'against must be "epoch" or "minutes", got {against!r}')
    lines = [
        "| run | test MAE | test RMSE | best val MAE (epoch) | epochs | minutes of training |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    figure, axes = plt.subplots(figsize=(6.5, 4))
    for folder in map(Path, folders):
        metrics = json.loads((folder / "metrics.json").read_text())
        history = json.loads((folder / "history.json").read_text())
        lines.append(
            f"| {folder.name} | {metrics['test_mae']:.2f} | {metrics['test_rmse']:.2f} | "
            f"{metrics['val_mae']:.2f} ({metrics['best_epoch']}) | {metrics['epochs_run']} | "
            f"{metrics['train_seconds'] / 60:.1f} |"
        )
        if against == "epoch":
            steps = [row["epoch"] for row in history]
        else:
            steps = np.cumsum([row["seconds"] for row in history]) / 60
        (line,) = axes.plot(
            steps, [row["val_mae"] for row in history], label=folder.name
        )
        if against == "minutes":
            axes.plot(
                metrics["train_seconds"] / 60,
                metrics["test_mae"],
                marker="o",
                color=line.get_color(),
            )
    if against == "minutes":
        axes.set_xscale("log")
        axes.set_xlabel("minutes of training (log scale); dots: final test MAE")
    else:
        axes.set_xlabel("epoch")
    axes.set_ylabel("validation MAE (years)")
    axes.set_ylim(top=min(axes.get_ylim()[1], 20))
    axes.legend()
    axes.grid(alpha=0.3)
    if file_name:
        figure.savefig(file_name, dpi=120, bbox_inches="tight")
    return "\n".join(lines)


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
        figure.savefig(file_name, dpi=120, bbox_inches="tight")
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


def predict_files(model_path, sources, out=None):
    """Predict the age of every JPEG/PNG in `sources`; write a CSV (path, predicted_age)."""
    model = keras.models.load_model(model_path)
    files, skipped = _image_files(sources)
    rows = []
    for path in files:
        try:
            image = utk_data.load_images([path], model.image_size)
        except ValueError as error:
            skipped.append((path, str(error).split(": ", 1)[-1]))
            continue
        rows.append((str(path), float(predict_ages(model, image)[0])))
    stream = open(out, "w", newline="") if out else sys.stdout
    try:
        writer = csv.writer(stream)
        writer.writerow(["path", "predicted_age"])
        writer.writerows((path, f"{age:.1f}") for path, age in rows)
    finally:
        if out:
            stream.close()
    for path, reason in skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    print(f"predicted {len(rows)} image(s), skipped {len(skipped)}", file=sys.stderr)
    return rows, skipped


# ---------------------------------------------------------------------------------------
# Command line, generated from TrainConfig
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


def main(argv=None):
    """The command line: train, evaluate, predict."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    _add_config_arguments(commands.add_parser("train", help="train or resume a model"))
    evaluate_parser = commands.add_parser(
        "evaluate", help="test-split metrics of a model"
    )
    evaluate_parser.add_argument("--model", required=True, help="a model.keras file")
    evaluate_parser.add_argument("--data", help="folder, archive or URL of UTKFace")
    evaluate_parser.add_argument("--limit", type=int, help="as given to train")
    evaluate_parser.add_argument(
        "--unknown-attributes",
        action="store_true",
        help="give a model trained with --attribute-inputs 'unknown' gender and race, "
        "as for a new photo, instead of the true labels",
    )
    evaluate_parser.add_argument(
        "--figures", help="save evaluation.png (and learning_curve.png) in this folder"
    )
    baseline_parser = commands.add_parser(
        "baseline", help="test metrics of predicting the median training age"
    )
    baseline_parser.add_argument("--data", help="folder, archive or URL of UTKFace")
    compare_parser = commands.add_parser(
        "compare", help="a table of finished runs and their validation curves"
    )
    compare_parser.add_argument("runs", nargs="+", metavar="RUN_DIR")
    compare_parser.add_argument("--plot", help="save the validation curves here")
    compare_parser.add_argument(
        "--against",
        choices=("epoch", "minutes"),
        default="epoch",
        help="x axis of the plot: epochs, or minutes of training (test MAE marked)",
    )
    predict_parser = commands.add_parser(
        "predict",
        help="ages of aligned, tightly cropped face images (no face detector)",
    )
    predict_parser.add_argument("--model", required=True, help="a model.keras file")
    predict_parser.add_argument("--out", help="CSV file (default: standard output)")
    predict_parser.add_argument("sources", nargs="+", metavar="FILE_OR_FOLDER")
    arguments = parser.parse_args(argv)

    if arguments.command == "train":
        try:
            # A live progress bar on a terminal; one line per epoch in a log file.
            train(
                config_from_arguments(arguments),
                verbose=1 if sys.stdout.isatty() else 2,
            )
        except (TrainingDiverged, ValueError, FileNotFoundError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    elif arguments.command == "evaluate":
        model = keras.models.load_model(arguments.model)
        if arguments.unknown_attributes and not getattr(
            model, "attribute_inputs", False
        ):
            parser.error(f"{arguments.model} has no gender and race inputs")
        _, _, test = prepare_data(
            TrainConfig(data=arguments.data, limit=arguments.limit)
        )
        predictions = predict_records(
            model, test, attributes_known=not arguments.unknown_attributes
        )
        print(json.dumps(evaluate_predictions(*predictions[1:]), indent=2))
        if arguments.figures:
            save_figures(
                arguments.model, predictions.true, predictions.predicted, arguments.figures
            )
    elif arguments.command == "compare":
        import matplotlib

        matplotlib.use("Agg")
        print(compare_runs(arguments.runs, arguments.plot, arguments.against))
    elif arguments.command == "baseline":
        train_records, _, test = prepare_data(TrainConfig(data=arguments.data))
        print(json.dumps(median_baseline(train_records, test), indent=2))
    else:
        rows, _ = predict_files(arguments.model, arguments.sources, arguments.out)
        return 0 if rows else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
