"""Benchmark the input pipeline alone, and the train step with the augmentation inside it.

    python bench/bench_input.py
    python bench/bench_input.py --data ~/UTKFace --images 4000 --rounds 3 --step-rounds 7
    python bench/bench_input.py --images 1024 --passes 1 --rounds 1 --step-rounds 2

Part 1, the pipeline alone. `--images` real training images are decoded into memory once
(`utk_data.decode_records`) at 128 px (batches of 128, the GPU preset's) and at 96 px
(batches of 64, the CPU preset's); every contender then gathers its batches from those
cached images, and its images/second are timed over `--passes` passes after one untimed
batch, from a fresh iterator (so that no contender fills its prefetch buffer while another
is timed):

1. raw: `make_dataset(raw=True)`, what training now uses: uint8 gathers, the labels and the
   augmentation seed of each batch, nothing else;
2. augmented: `make_dataset(raw=False, augment=True)`: the batches scaled to float32 and
   augmented inside tf.data, as training did before;
3. plain: `make_dataset(raw=False, augment=False)`: scaled to float32, not augmented;
4. prepare: the augmentation alone, `tf.function(utk_data.prepare_batch)` applied batch by
   batch to uint8 batches of the raw pipeline held in memory: what the train step adds.

Part 2, the train step: the CPU preset's model in float32 at 96 px, batch 64, two copies of
the same initial weights, each with its own optimizer, trained on the same batches:

- in_step: the raw dataset + `Trainer.train_step(images, labels, seed)`, which scales and
  augments each batch inside the compiled step (as `train_loop.train` does now);
- in_pipeline: the augmented dataset + `Trainer.train_step(images, labels)`, the
  augmentation done by tf.data beside the step (as before).

Each run starts a fresh iterator and times `--steps` steps after an untimed one; tracing
happens in untimed warm-up runs. Both contenders train on the same images in the same
order, so their losses should stay close (only round-off, which grows with the steps,
parts them): they are printed as a check.

The machine may be shared, so the contenders alternate, starting at a different one each
round; ratios are taken within a round and the medians over rounds are printed, with the
process CPU time (all threads), which moves less with other load, as a cross-check.
"""

import argparse
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
from rounds import rotating_rounds  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

# (image size, batch size) of the pipeline measurements: the GPU and the CPU presets'.
SIZES = ((128, 128), (96, 64))
PIPELINE_CONTENDERS = ("raw", "augmented", "plain", "prepare")
STEP_CONTENDERS = ("in_step", "in_pipeline")
# Batches of each untimed warm-up run of a pipeline contender.
WARMUP_BATCHES = 4
# A rate at 128 px that keeps a GPU training a ResNet-18-sized network busy.
GPU_FEED_RATE = 20_000
# The train step with the augmentation inside counts as no slower down to this ratio (the
# spread of the rounds).
NO_SLOWER = 0.97
# The processor features that decide the speed of the kernels, when Linux lists them.


def parse_arguments(argv=None):
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", help="folder, archive or URL (default: see README)")
    parser.add_argument(
        "--images", type=int, default=4000, help="training images cached in memory"
    )
    parser.add_argument(
        "--passes", type=int, default=3, help="timed passes over them per pipeline run"
    )
    parser.add_argument("--rounds", type=int, default=3, help="pipeline rounds")
    parser.add_argument("--steps", type=int, default=30, help="timed train steps a run")
    parser.add_argument("--warmup-steps", type=int, default=3)
    parser.add_argument("--step-rounds", type=int, default=7, help="train step rounds")
    arguments = parser.parse_args(argv)
    for name in ("images", "passes", "rounds", "steps", "warmup_steps", "step_rounds"):
        if getattr(arguments, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be positive")
    return arguments


class Timing(NamedTuple):
    """One timed run: wall and process CPU seconds, images, and a loss (or None)."""

    wall: float
    cpu: float
    images: int
    loss: float = None


def clocks():
    """The wall clock and this process's CPU clock (all its threads), in seconds."""
    return time.perf_counter(), time.process_time()


def since(start, images, loss=None):
    """A Timing of the run that began at `start`, a `clocks()` reading."""
    wall, cpu = clocks()
    return Timing(wall - start[0], cpu - start[1], images, loss)


def rate(timing):
    """Images per wall-clock second."""
    return timing.images / timing.wall


# ---------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------


def training_config(arguments, precision="float32"):
    """The CPU preset's resolved config, limited to `--images` training images."""
    return train_loop.resolve_config(
        train_loop.TrainConfig(
            out="unused",
            data=arguments.data,
            preset="cpu",
            precision=precision,
            limit=arguments.images,
        )
    )


def decode_images(arguments):
    """The training records decoded into memory at each size of SIZES: {size: decoded}."""
    records, _, _ = train_loop.prepare_data(training_config(arguments))
    if len(records) < arguments.images:
        raise ValueError(
            f"only {len(records):,} training images, not {arguments.images}"
        )
    decoded = {}
    for size, _ in SIZES:
        started = time.perf_counter()
        decoded[size] = utk_data.decode_records(records, size)
        print(
            f"data: {len(decoded[size].records):,} training images decoded at {size} px "
            f"in {time.perf_counter() - started:.1f} s (untimed)"
        )
    return decoded


def dataset(decoded, batch_size, raw, augment=True):
    """Training batches gathered from cached images, as `train_loop.train` asks for them
    (with gender and race, seed 0), raw or prepared inside tf.data."""
    return utk_data.make_dataset(
        decoded,
        decoded.image_size,
        batch_size,
        training=True,
        augment=augment,
        with_attributes=True,
        seed=0,
        raw=raw,
    )


# ---------------------------------------------------------------------------------------
# Part 1: the pipeline alone
# ---------------------------------------------------------------------------------------


def augment_on_device(images, seeds):
    """The train step's augmentation of a raw batch (every row of `seeds` the batch's)."""
    return utk_data.prepare_batch(images, seeds[0], augment=True)


class PipelineContender:
    """A dataset, timed over a number of its batches from a fresh iterator."""

    def __init__(self, source, batches):
        self.source, self.batches = source, batches

    def run(self, batches=None):
        """Take 1 + `batches` batches, timing the last `batches`."""
        iterator = iter(self.source)
        next(iterator)
        start = clocks()
        count = sum(
            int(next(iterator)[0].shape[0]) for _ in range(batches or self.batches)
        )
        return since(start, count)


class PrepareContender:
    """The augmentation alone, compiled, applied to raw batches held in memory."""

    def __init__(self, source, cached_batches, batches):
        iterator = iter(source)
        self.cached = [next(iterator) for _ in range(cached_batches)]
        self.batches = batches
        self.prepare = tf.function(augment_on_device)

    def run(self, batches=None):
        """Prepare 1 + `batches` cached batches in turn, timing the last `batches`."""
        images, _, seed = self.cached[0]
        self.prepare(images, seed)
        start = clocks()
        count = 0
        for number in range(batches or self.batches):
            images, _, seed = self.cached[number % len(self.cached)]
            # Eager execution is synchronous by default: the call returns once the batch
            # is prepared, so nothing is left to run after the clock stops.
            self.prepare(images, seed)
            count += int(images.shape[0])
        return since(start, count)


def same_images_check(raw_source, augmented_source, prepare):
    """The largest difference between the first augmented batch and the first raw batch
    prepared by the step's function: 0 when both ways give the same images."""
    images, _, seed = next(iter(raw_source))
    expected, _ = next(iter(augmented_source))
    return float(tf.reduce_max(tf.abs(prepare(images, seed) - expected)))


def make_pipeline_contenders(decoded, batch_size, passes):
    """The four contenders of one size, warmed up (tracing and thread pools untimed)."""
    per_pass = len(decoded.records) // batch_size
    sources = {
        "raw": dataset(decoded, batch_size, raw=True),
        "augmented": dataset(decoded, batch_size, raw=False),
        "plain": dataset(decoded, batch_size, raw=False, augment=False),
    }
    contenders = {
        name: PipelineContender(source, passes * per_pass)
        for name, source in sources.items()
    }
    contenders["prepare"] = PrepareContender(
        sources["raw"], per_pass, passes * per_pass
    )
    # Short untimed runs trace the functions and start tf.data's thread pools.
    for contender in contenders.values():
        contender.run(WARMUP_BATCHES)
    difference = same_images_check(
        sources["raw"], sources["augmented"], contenders["prepare"].prepare
    )
    print(
        f"{decoded.image_size} px: the step's augmentation of a raw batch against the "
        f"augmented dataset's batch: largest difference {difference:.2g}"
    )
    return contenders


def run_rounds(contenders, rounds, label):
    """Time every contender once a round, in an order that rotates; the rounds' Timings."""
    names = tuple(contenders)
    results = []
    for number, order, timings in rotating_rounds(contenders, rounds):
        results.append(timings)
        print(
            f"{label} round {number + 1} ({', '.join(order)}): "
            + "  ".join(f"{name} {rate(timings[name]):,.0f}" for name in names)
            + " img/s"
        )
    return results


def median_rate(results, name):
    """The median images/second of a contender over rounds, and their range."""
    rates = [rate(timings[name]) for timings in results]
    return statistics.median(rates), min(rates), max(rates)


def median_ratio(results, name, reference, clock="wall"):
    """The median over rounds of name's speed over reference's, both from one round."""
    return statistics.median(
        getattr(timings[reference], clock)
        / timings[reference].images
        / (getattr(timings[name], clock) / timings[name].images)
        for timings in results
    )


def measure_pipeline(arguments, decoded):
    """Part 1 at every size of SIZES: {size: the rounds' Timings}."""
    results = {}
    for size, batch_size in SIZES:
        contenders = make_pipeline_contenders(
            decoded[size], batch_size, arguments.passes
        )
        label = f"{size} px, batch {batch_size},"
        results[size] = run_rounds(contenders, arguments.rounds, label)
    return results


# ---------------------------------------------------------------------------------------
# Part 2: the train step
# ---------------------------------------------------------------------------------------


class StepContender:
    """A Trainer and a dataset: train steps from a fresh iterator, as `train` calls them."""

    def __init__(self, trainer, source, steps):
        self.trainer, self.source, self.steps = trainer, source, steps

    def run(self, steps=None):
        """Train 1 + `steps` batches, timing the last `steps`; the last loss."""
        steps = steps or self.steps
        iterator = iter(self.source)
        float(self.trainer.train_step(*next(iterator)))
        start = clocks()
        for _ in range(steps):
            batch = next(iterator)
            # float() waits for the step, as the finiteness check of `train` does.
            loss = float(self.trainer.train_step(*batch))
        return since(start, steps * int(batch[0].shape[0]), loss)


def make_trainer(config, initial_age, steps_per_epoch):
    """A Trainer of a model built as `train_loop.train` builds it, from its seed."""
    keras.utils.set_random_seed(config.seed)
    with train_loop.dtype_policy(config.precision):
        model = train_loop.make_model(config, initial_age)
    optimizer = train_loop.make_optimizer(config, steps_per_epoch)
    return train_loop.Trainer(model, optimizer, config)


def make_step_contenders(arguments, decoded):
    """The two train-step contenders on the same initial weights, warmed up."""
    config = training_config(arguments)
    initial_age = float(np.mean([record.age for record in decoded.records]))
    steps_per_epoch = utk_data.steps_per_epoch(len(decoded.records), config.batch_size)
    trainers = [make_trainer(config, initial_age, steps_per_epoch) for _ in range(2)]
    weights = [trainer.model.get_weights() for trainer in trainers]
    same = all(np.array_equal(a, b) for a, b in zip(*weights))
    print(
        f"train step: CPU preset, {config.image_size} px, batch {config.batch_size}, "
        f"{config.precision}, jit_compile {config.jit_compile}, EMA {config.ema}; "
        f"identical initial weights: {same}"
    )
    sources = {
        "in_step": dataset(decoded, config.batch_size, raw=True),
        "in_pipeline": dataset(decoded, config.batch_size, raw=False),
    }
    contenders = {
        name: StepContender(trainer, sources[name], arguments.steps)
        for name, trainer in zip(STEP_CONTENDERS, trainers)
    }
    for name, contender in contenders.items():
        for label in ("first", "second"):
            started = time.perf_counter()
            contender.run(arguments.warmup_steps)
            print(
                f"warm-up {name}, {label} run: {1 + arguments.warmup_steps} steps in "
                f"{time.perf_counter() - started:.2f} s"
                + (" (tracing included)" if label == "first" else "")
            )
    return contenders


def measure_steps(arguments, decoded):
    """Part 2: the rounds' Timings of the two train-step contenders."""
    contenders = make_step_contenders(arguments, decoded)
    results = run_rounds(contenders, arguments.step_rounds, "train step")
    for number, timings in enumerate(results):
        losses = " / ".join(f"{timings[name].loss:.4f}" for name in STEP_CONTENDERS)
        print(f"train step round {number + 1}: last losses {losses}")
    return results


# ---------------------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------------------


def print_pipeline_summary(results, arguments):
    """The median rates of every pipeline contender at every size, and whether the raw
    pipeline feeds a GPU."""
    print()
    print(f"=== pipeline alone: medians over {arguments.rounds} rounds ===")
    for size, batch_size in SIZES:
        print(f"{size} px, batch {batch_size}:")
        for name in PIPELINE_CONTENDERS:
            median, low, high = median_rate(results[size], name)
            cpu = statistics.median(
                timings[name].cpu / timings[name].images * 1e6
                for timings in results[size]
            )
            ratio = median_ratio(results[size], name, "augmented")
            print(
                f"    {name:<10} {median:>9,.0f} img/s (range {low:,.0f}-{high:,.0f}), "
                f"CPU {cpu:5.0f} us/img, {ratio:5.2f}x augmented"
            )
    raw, _, _ = median_rate(results[128], "raw")
    verdict = "yes" if raw >= GPU_FEED_RATE else "NO"
    print(
        f"raw at 128 px reaches {GPU_FEED_RATE:,} img/s: {verdict} ({raw:,.0f} img/s)"
    )


def print_step_summary(results, arguments):
    """The median rates of the two train steps and their median ratio."""
    print()
    print(
        f"=== train step: medians over {arguments.step_rounds} rounds of "
        f"{arguments.steps} steps ==="
    )
    for name in STEP_CONTENDERS:
        median, low, high = median_rate(results, name)
        print(f"    {name:<12} {median:7.1f} img/s (range {low:.1f}-{high:.1f})")
    ratio = median_ratio(results, "in_step", "in_pipeline")
    cpu_ratio = median_ratio(results, "in_step", "in_pipeline", clock="cpu")
    verdict = "yes" if ratio >= NO_SLOWER else "NO"
    print(
        f"in_step/in_pipeline img/s: {ratio:.3f}   no slower (>= {NO_SLOWER}): {verdict}"
        f"   (CPU-time cross-check: {cpu_ratio:.3f})"
    )


def main(argv=None):
    """Run both parts and print each round and the summaries."""
    arguments = parse_arguments(argv)
    print("=== bench_input ===")
    print("machine:", devices.describe_machine())
    print(devices.describe_kernels())
    decoded = decode_images(arguments)
    print()
    pipeline = measure_pipeline(arguments, decoded)
    print()
    steps = measure_steps(arguments, decoded[96])
    print_pipeline_summary(pipeline, arguments)
    print_step_summary(steps, arguments)


if __name__ == "__main__":
    main()
