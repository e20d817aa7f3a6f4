"""Benchmark our `tf.GradientTape` training loop against `model.fit()`: images per second.

    python bench/bench_loop.py
    python bench/bench_loop.py --data ~/UTKFace --steps 30 --rounds 7
    python bench/bench_loop.py --arch course_cnn --batch-size 32 --images 1024

Three contenders train the same model (`train_loop.make_model`, same seed, so the same initial
weights), on the same cached, augmented `utk_data.make_dataset` batches with the same
batch size and optimizer (`train_loop.make_optimizer`):

1. fit: `model.compile(..., jit_compile="auto")` + `model.fit(dataset, epochs=1,
   steps_per_epoch=1 + steps, verbose=0)`; a CPU-only machine resolves "auto" to no XLA;
2. loop: `train_loop.Trainer.train_step` per batch as `train_loop.train` calls it
   (`float(loss)` and its finiteness check, `float()` of both running metrics), without
   the Progbar, with `jit_compile=False`;
3. loop_xla: the same with `jit_compile=True`;
4. loop_bf16: our loop (with the machine's default `jit_compile`) on a model built under
   Keras's "mixed_bfloat16" policy: bfloat16 compute, float32 weights and outputs. It pays
   only on processors with bfloat16 units (Intel AMX, AVX512-BF16); elsewhere bfloat16 is
   emulated. Its ratio to float32 is the `loop_bf16/loop` (or `/loop_xla`) line.

Every run starts a fresh iterator over the dataset, as each `fit()` call does, and times
its steps after the first (a callback reads the clocks inside `fit()`), so neither start-up
costs nor `fit()`'s per-call set-up are counted: this is the steady-state speed of a long
training run. Tracing and XLA compilation happen in untimed warm-up runs. The machine is
shared and noisy, so the contenders alternate, starting at a different one each round;
ratios are taken within a round and the median over rounds is reported, with process CPU
time per image as a cross-check that moves less with other load. The headline ratio is
that of the `jit_compile` our loop uses by default on this machine (`resolve_config`).
"""

import argparse
import dataclasses
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import NamedTuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY_ROOT))

# devices first: it sets TensorFlow's environment (oneDNN) before the import.
import devices  # noqa: E402
import train_loop  # noqa: E402
import utk_data  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402

CONTENDERS = ("fit", "loop", "loop_xla", "loop_bf16")


def parse_arguments(argv=None):
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", help="folder, archive or URL (default: see README)")
    parser.add_argument(
        "--arch", choices=("course_cnn", "age_cnn"), help="default: the preset's"
    )
    parser.add_argument("--image-size", type=int, help="default: the preset's")
    parser.add_argument("--batch-size", type=int, help="default: the preset's")
    parser.add_argument(
        "--steps", type=int, default=30, help="timed steps per run (after one untimed)"
    )
    parser.add_argument("--rounds", type=int, default=7, help="rounds of all three")
    parser.add_argument(
        "--images", type=int, default=2048, help="training images in the dataset"
    )
    parser.add_argument(
        "--warmup-steps", type=int, default=5, help="steps of each warm-up run"
    )
    arguments = parser.parse_args(argv)
    for name in ("steps", "rounds", "images", "warmup_steps"):
        if getattr(arguments, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be positive")
    return arguments


def make_config(arguments):
    """The resolved TrainConfig: the machine's preset with the command line's overrides."""
    given = {
        "data": arguments.data,
        "arch": arguments.arch,
        "image_size": arguments.image_size,
        "batch_size": arguments.batch_size,
        "limit": arguments.images,
    }
    overrides = {name: value for name, value in given.items() if value is not None}
    # The same work for every contender: fit() trains the network alone, so our loop does
    # too (no teacher head, no average of the weights).
    overrides.update(distribution_head=False, ema=0.0)
    # float32 but for loop_bf16, whatever `--precision auto` would choose here.
    overrides.update(precision="float32")
    return train_loop.resolve_config(train_loop.TrainConfig(out="unused", **overrides))


def build_model(config, initial_age, policy=None):
    """A model built exactly as `train_loop.train` builds it, from the config's seed (under
    another dtype policy when one is named)."""
    keras.utils.set_random_seed(config.seed)
    with train_loop.dtype_policy(policy or config.precision):
        return train_loop.make_model(config, initial_age)


def same_weights(models):
    """True when every model holds the same initial weights as the first."""
    first = models[0].get_weights()
    return all(
        len(first) == len(weights)
        and all(np.array_equal(mine, theirs) for mine, theirs in zip(first, weights))
        for weights in (model.get_weights() for model in models[1:])
    )


class Timing(NamedTuple):
    """One timed run: wall and process CPU seconds of its timed steps, its mean loss."""

    wall: float
    cpu: float
    loss: float


def clocks():
    """The wall clock and this process's CPU clock (all its threads), in seconds."""
    return time.perf_counter(), time.process_time()


def since(start):
    """Wall and CPU seconds elapsed since `start`, a `clocks()` reading."""
    wall, cpu = clocks()
    return wall - start[0], cpu - start[1]


class LoopContender:
    """Our `Trainer.train_step`, called per batch as `train_loop.train` does."""

    def __init__(self, model, config, dataset, steps_per_epoch):
        self.trainer = train_loop.Trainer(
            model, train_loop.make_optimizer(config, steps_per_epoch), config
        )
        self.dataset = dataset

    def run(self, steps):
        """Train 1 + `steps` batches from a fresh iterator, timing the last `steps`."""
        trainer = self.trainer
        trainer.reset_metrics()
        batches = iter(self.dataset)
        for step in range(1 + steps):
            if step == 1:
                start = clocks()
            loss = float(trainer.train_step(*next(batches)))
            if not math.isfinite(loss):
                raise train_loop.TrainingDiverged(f"loss {loss} at step {step + 1}")
            # What `_train_epochs` hands to the Progbar, computed whatever its verbosity.
            float(trainer.train_loss.result())
            float(trainer.train_mae.result())
        # The run's mean loss, as fit() reports it.
        return Timing(*since(start), float(trainer.train_loss.result()))


class _StepClock(keras.callbacks.Callback):
    """Reads the clocks when a fit() call begins its second batch and when it ends."""

    def on_train_batch_begin(self, batch, logs=None):
        if batch == 1:
            self.start = clocks()

    def on_train_end(self, logs=None):
        # fit() has turned the epoch's logs into numbers by now: every step is done.
        self.elapsed = since(self.start)


class FitContender:
    """`model.fit()` on the same model, optimizer and dataset, XLA left to Keras."""

    def __init__(self, model, config, dataset, steps_per_epoch):
        model.compile(
            optimizer=train_loop.make_optimizer(config, steps_per_epoch),
            loss=keras.losses.MeanAbsoluteError(),
            metrics=[keras.metrics.MeanAbsoluteError(name="mae")],
            jit_compile="auto",
        )
        self.model, self.dataset = model, dataset

    def run(self, steps):
        """Train 1 + `steps` batches in one `fit()` call, timing the last `steps`."""
        # Only batch-begin and train-end hooks: fit() keeps its asynchronous batch ends.
        clock = _StepClock()
        history = self.model.fit(
            self.dataset,
            epochs=1,
            steps_per_epoch=1 + steps,
            shuffle=False,
            callbacks=[clock],
            verbose=0,
        )
        return Timing(*clock.elapsed, history.history["loss"][-1])


def warm_data(dataset, batches):
    """Iterate `batches` batches once, untimed; return their number of images."""
    count = 0
    for images, _ in dataset.take(batches):
        count += int(images.shape[0])
    return count


def prepare_data(arguments, config):
    """The training images decoded into memory, as a warm dataset: (records, initial age,
    dataset, steps per epoch), printed."""
    train_records, _, _ = train_loop.prepare_data(config)
    if len(train_records) < arguments.images:
        raise ValueError(
            f"only {len(train_records):,} training images, not {arguments.images:,}"
        )
    initial_age = float(np.mean([record.age for record in train_records]))
    steps_per_epoch = utk_data.steps_per_epoch(len(train_records), config.batch_size)
    started = time.perf_counter()
    dataset = utk_data.make_dataset(
        train_records,
        config.image_size,
        config.batch_size,
        training=True,
        with_attributes=False,
        seed=0,
    )
    decode_seconds = time.perf_counter() - started
    started = time.perf_counter()
    warmed = warm_data(dataset, steps_per_epoch)
    print(
        f"data: {len(train_records):,} training images ({steps_per_epoch} batches an "
        f"epoch), decoded into memory in {decode_seconds:.1f} s; one warm pass "
        f"({warmed:,} images) in {time.perf_counter() - started:.1f} s"
    )
    return initial_age, dataset, steps_per_epoch


def make_contenders(config, default_jit, initial_age, dataset, steps_per_epoch):
    """The four contenders, each with a model of the same initial weights (printed)."""
    models = [
        build_model(
            config, initial_age, "mixed_bfloat16" if name == "loop_bf16" else None
        )
        for name in CONTENDERS
    ]
    print(f"identical initial weights in the four models: {same_weights(models)}")

    def loop(model, **changes):
        changed = dataclasses.replace(config, **changes)
        return LoopContender(model, changed, dataset, steps_per_epoch)

    contenders = {
        "fit": FitContender(models[0], config, dataset, steps_per_epoch),
        "loop": loop(models[1], jit_compile=False),
        "loop_xla": loop(models[2], jit_compile=True),
        "loop_bf16": loop(
            models[3], jit_compile=default_jit, precision="mixed_bfloat16"
        ),
    }
    print(f"fit() resolved jit_compile='auto' to: {models[0].jit_compile}")
    return contenders


def prepare(arguments):
    """Config, our loop's default jit_compile and the four warm contenders (printed)."""
    config = make_config(arguments)
    default_jit = train_loop.resolve_config(train_loop.TrainConfig(out="x")).jit_compile
    print(
        f"config: arch {config.arch}, image size {config.image_size}, "
        f"batch {config.batch_size}, optimizer {config.optimizer} "
        f"(lr {config.learning_rate:g}, {config.schedule}), augment {config.augment}, "
        f"precision {config.precision}"
    )
    initial_age, dataset, steps_per_epoch = prepare_data(arguments, config)
    print(f"our loop's default jit_compile on this machine: {default_jit}")
    contenders = make_contenders(
        config, default_jit, initial_age, dataset, steps_per_epoch
    )
    for name in CONTENDERS:
        # The first run traces (and for XLA compiles); the second checks that it is warm.
        for label in ("first", "second"):
            start = time.perf_counter()
            contenders[name].run(arguments.warmup_steps)
            print(
                f"warm-up {name}, {label} run: {1 + arguments.warmup_steps} steps "
                f"in {time.perf_counter() - start:.2f} s"
                + (" (tracing included)" if label == "first" else "")
            )
    return config, default_jit, contenders


def main(argv=None):
    """Run the benchmark and print the per-round results and a summary."""
    arguments = parse_arguments(argv)
    print("=== bench_loop ===")
    print("machine:", devices.describe_machine())
    print(devices.describe_kernels())
    config, default_jit, contenders = prepare(arguments)
    print()

    images = arguments.steps * config.batch_size
    results = []
    for round_number in range(arguments.rounds):
        shift = round_number % len(CONTENDERS)
        order = CONTENDERS[shift:] + CONTENDERS[:shift]
        timings = {name: contenders[name].run(arguments.steps) for name in order}
        results.append(timings)
        print(
            f"round {round_number + 1:2d} ({', '.join(order)}): "
            + "  ".join(
                f"{name} {images / timings[name].wall:5.0f}" for name in CONTENDERS
            )
            + " img/s   loss "
            + " / ".join(f"{timings[name].loss:.2f}" for name in CONTENDERS)
        )
    print_summary(results, images, arguments, default_jit)


def ratio_line(name, results, clock, reference="fit"):
    """The median per-round ratio name/reference of a clock ("wall" or "cpu"), and a
    line."""
    # Within a round, img/s of name over img/s of the reference is the reference's
    # seconds over name's.
    per_round = sorted(
        getattr(timings[reference], clock) / getattr(timings[name], clock)
        for timings in results
    )
    median = statistics.median(per_round)
    quartiles = statistics.quantiles(per_round, n=4) if len(per_round) > 1 else []
    spread = f"middle half {quartiles[0]:.2f}-{quartiles[2]:.2f}, " if quartiles else ""
    return median, (
        f"{name}/{reference}: {median:.2f}   ({spread}"
        f"range {per_round[0]:.2f}-{per_round[-1]:.2f})"
    )


def print_summary(results, images, arguments, default_jit):
    """Print the median rates, the median per-round ratios and the headline ratio."""
    print()
    print(
        f"=== summary: medians over {arguments.rounds} rounds of "
        f"{arguments.steps} timed steps ({images:,} images) per contender ==="
    )
    labels = {
        "fit": "model.fit() (Keras's jit_compile)",
        "loop": "our loop, jit_compile=False",
        "loop_xla": "our loop, jit_compile=True",
        "loop_bf16": "our loop, mixed_bfloat16",
    }
    for name in CONTENDERS:
        rates = [images / timings[name].wall for timings in results]
        cpu = statistics.median(timings[name].cpu for timings in results)
        print(
            f"{labels[name]:<34} {statistics.median(rates):6.1f} img/s "
            f"(range {min(rates):.0f}-{max(rates):.0f}), "
            f"{1000 * cpu / arguments.steps:.0f} CPU ms/step"
        )
    print()
    print("img/s ratios, median of the per-round ratios:")
    ratios = {}
    for name in ("loop", "loop_xla"):
        ratios[name], line = ratio_line(name, results, "wall")
        print("  " + line)
    # Other workers share the cores: CPU time per step moves less with their load.
    print("cross-check, CPU-seconds-per-image ratios (less sensitive to other load):")
    for name in ("loop", "loop_xla"):
        print("  " + ratio_line(name, results, "cpu")[1])
    headline = "loop_xla" if default_jit else "loop"
    bfloat16 = ratio_line("loop_bf16", results, "wall", reference=headline)
    print(f"bfloat16 against float32, both our loop: {bfloat16[1]}")
    print(f"headline: our loop's default jit_compile={default_jit}, so {headline}/fit")
    print(f"custom_loop/fit img/s ratio: {ratios[headline]:.2f}")
    print(f"bfloat16/float32 img/s ratio: {bfloat16[0]:.2f}")


if __name__ == "__main__":
    main()
