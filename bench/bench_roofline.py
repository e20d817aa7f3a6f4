"""Benchmark the distance of our train step to the machine's limit: FLOP/s of a large matmul
against those of the CPU preset's train step, in float32 and in bfloat16.

    python bench/bench_roofline.py
    python bench/bench_roofline.py --rounds 5 --steps 20 --figure roofline.png
    python bench/bench_roofline.py --rounds 1 --steps 3 --repeats 3 --images 256

In one process, four contenders alternate over `--rounds` rounds, starting at a different
one each round:

1. matmul_float32: `tf.matmul` of two 2048x2048 (`--size`) float32 matrices, `--repeats`
   calls timed one by one after two untimed, the median call; a multiply-add is 2 FLOPs,
   so a call is 2 x 2048^3 FLOPs. Large matrix products are the densest work a processor
   does, near its peak: the limit a train step can hope to approach.
2. matmul_bfloat16: the same on `tf.bfloat16` tensors (oneDNN's AMX or AVX512-BF16 kernels
   where the processor has them; elsewhere bfloat16 is emulated and slow).
3. step_float32: `Trainer.train_step(images, labels)` of the CPU preset's model, as
   `train_loop.train` builds and trains it (96 px, batch 64, AdamW, the average of the
   weights), on `--batches` augmented batches of real faces held in memory, so that no
   input pipeline is timed (bench/bench_input.py times that); `--steps` steps after one.
4. step_bfloat16: the same under Keras's "mixed_bfloat16" policy (bfloat16 compute, float32
   weights).

A train step's FLOP/s are 3 x `model.forward_flops` x images/s: the backward pass computes
the gradients with respect to both the inputs and the weights of every layer, each about
as many multiply-adds as the forward pass, so forward + backward is about 3 forward passes.
Only convolutions and dense layers are counted (not batch norm, activations, the loss or
the optimizer), so this is the useful work, and its ratio to the matmul's FLOP/s of the same
dtype says how far the step is from what the processor can do. Ratios are taken within a
round and the medians over rounds are printed. `--figure PATH` draws the GFLOP/s as bars.
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
from model import forward_flops  # noqa: E402
from rounds import rotating_rounds  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

DTYPES = ("float32", "bfloat16")
# The Keras dtype policy of the train step in each dtype.
POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16"}
CONTENDERS = tuple(f"{kind}_{dtype}" for kind in ("matmul", "step") for dtype in DTYPES)
# Forward + backward (gradients for the inputs and for the weights) ~ 3 forward passes.
PASSES_PER_STEP = 3
# The processor features that decide the speed of the kernels, when Linux lists them.


def parse_arguments(argv=None):
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", help="folder, archive or URL (default: see README)")
    parser.add_argument("--size", type=int, default=2048, help="side of the matrices")
    parser.add_argument("--repeats", type=int, default=10, help="timed matmuls a run")
    parser.add_argument("--steps", type=int, default=20, help="timed train steps a run")
    parser.add_argument("--warmup-steps", type=int, default=3)
    parser.add_argument("--batches", type=int, default=8, help="batches in memory")
    parser.add_argument(
        "--images", type=int, default=1024, help="training images to draw them from"
    )
    parser.add_argument("--rounds", type=int, default=5, help="rounds of all four")
    parser.add_argument("--figure", help="save a bar figure of the GFLOP/s here")
    arguments = parser.parse_args(argv)
    for name in ("size", "repeats", "steps", "warmup_steps", "batches", "images"):
        if getattr(arguments, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be positive")
    if arguments.rounds < 1:
        raise ValueError("--rounds must be positive")
    return arguments


class Speed(NamedTuple):
    """One timed run: FLOP/s, and images/s for a train step (None for a matmul)."""

    flops: float
    images: float = None


# ---------------------------------------------------------------------------------------
# The contenders
# ---------------------------------------------------------------------------------------


class MatmulContender:
    """`tf.matmul` of two random square matrices of one dtype, timed call by call."""

    def __init__(self, size, dtype, repeats):
        generator = tf.random.Generator.from_seed(0)
        self.left, self.right = (
            tf.cast(generator.normal((size, size)), dtype) for _ in range(2)
        )
        self.flops = 2 * size**3
        self.repeats = repeats

    def run(self):
        """The FLOP/s of the median of `repeats` timed calls, after two untimed."""
        seconds = []
        for repeat in range(2 + self.repeats):
            start = time.perf_counter()
            # Eager execution is synchronous by default: the product is complete when the
            # call returns.
            tf.matmul(self.left, self.right)
            seconds.append(time.perf_counter() - start)
        return Speed(self.flops / statistics.median(seconds[2:]))


class StepContender:
    """The CPU preset's train step in one precision, on batches held in memory."""

    def __init__(self, trainer, batches, steps):
        self.trainer, self.batches, self.steps = trainer, batches, steps
        self.flops_per_image = PASSES_PER_STEP * forward_flops(trainer.model)

    def run(self, steps=None):
        """Images/s and FLOP/s of `steps` timed steps, after an untimed one."""
        steps = steps or self.steps
        float(self.trainer.train_step(*self.batches[-1]))
        start = time.perf_counter()
        images = 0
        for number in range(steps):
            batch_images, labels = self.batches[number % len(self.batches)]
            # float() waits for the step, as the finiteness check of `train` does.
            float(self.trainer.train_step(batch_images, labels))
            images += int(batch_images.shape[0])
        rate = images / (time.perf_counter() - start)
        return Speed(self.flops_per_image * rate, rate)


def cached_batches(arguments, config):
    """`--batches` augmented training batches of real faces, held in memory; their mean
    age (the model's initial output)."""
    records, _, _ = train_loop.prepare_data(config)
    decoded = utk_data.decode_records(records, config.image_size)
    dataset = utk_data.make_dataset(
        decoded,
        config.image_size,
        config.batch_size,
        training=True,
        augment=config.augment,
        with_attributes=True,
        seed=0,
    )
    batches = list(dataset.take(arguments.batches))
    initial_age = float(np.mean([record.age for record in decoded.records]))
    return batches, initial_age


def make_step_contender(arguments, dtype, batches, initial_age):
    """The train step of the CPU preset's model in `dtype`, warmed up."""
    config = train_loop.resolve_config(
        train_loop.TrainConfig(
            out="unused", data=arguments.data, preset="cpu", precision=POLICIES[dtype]
        )
    )
    keras.utils.set_random_seed(config.seed)
    with train_loop.dtype_policy(config.precision):
        model = train_loop.make_model(config, initial_age)
    optimizer = train_loop.make_optimizer(config, len(batches))
    trainer = train_loop.Trainer(model, optimizer, config)
    contender = StepContender(trainer, batches, arguments.steps)
    started = time.perf_counter()
    contender.run(arguments.warmup_steps)
    print(
        f"step_{dtype}: {config.precision}, {config.image_size} px, batch "
        f"{config.batch_size}, jit_compile {config.jit_compile}, EMA {config.ema}; "
        f"{contender.flops_per_image / PASSES_PER_STEP / 1e6:.1f} forward MFLOPs an "
        f"image; warm-up (tracing included) {time.perf_counter() - started:.1f} s"
    )
    return contender


def make_contenders(arguments):
    """The four contenders, warmed up."""
    config = train_loop.resolve_config(
        train_loop.TrainConfig(
            out="unused", data=arguments.data, preset="cpu", limit=arguments.images
        )
    )
    batches, initial_age = cached_batches(arguments, config)
    print(
        f"data: {len(batches)} augmented batches of {config.batch_size} real faces at "
        f"{config.image_size} px held in memory"
    )
    contenders = {
        f"matmul_{dtype}": MatmulContender(arguments.size, dtype, arguments.repeats)
        for dtype in DTYPES
    }
    for dtype in DTYPES:
        contenders[f"step_{dtype}"] = make_step_contender(
            arguments, dtype, batches, initial_age
        )
    for name in CONTENDERS:
        contenders[name].run()
    return contenders


# ---------------------------------------------------------------------------------------
# Rounds, summary and figure
# ---------------------------------------------------------------------------------------


def run_rounds(contenders, rounds):
    """Time every contender once a round, in an order that rotates; the rounds' Speeds."""
    results = []
    ordered = {name: contenders[name] for name in CONTENDERS}
    for number, order, speeds in rotating_rounds(ordered, rounds):
        results.append(speeds)
        print(
            f"round {number + 1} ({', '.join(order)}): "
            + "  ".join(f"{name} {speeds[name].flops / 1e9:.0f}" for name in CONTENDERS)
            + " GFLOP/s;  steps "
            + " / ".join(f"{speeds[f'step_{dtype}'].images:.0f}" for dtype in DTYPES)
            + " img/s"
        )
    return results


def median_of(results, value):
    """The median over rounds of `value(speeds)`, a function of one round's Speeds."""
    return statistics.median(value(speeds) for speeds in results)


def summarize(results):
    """The medians the summary prints and the figure draws, by name."""
    summary = {}
    for name in CONTENDERS:
        summary[f"{name} GFLOP/s"] = median_of(results, lambda s: s[name].flops / 1e9)
    for dtype in DTYPES:
        summary[f"step_{dtype} img/s"] = median_of(
            results, lambda s: s[f"step_{dtype}"].images
        )
        summary[f"step/matmul {dtype}"] = median_of(
            results, lambda s: s[f"step_{dtype}"].flops / s[f"matmul_{dtype}"].flops
        )
    for kind in ("matmul", "step"):
        summary[f"{kind} bfloat16/float32"] = median_of(
            results, lambda s: s[f"{kind}_bfloat16"].flops / s[f"{kind}_float32"].flops
        )
    return summary


def print_summary(summary, arguments):
    """The medians: GFLOP/s, images/s, fractions of the matmul and bfloat16's speed-ups."""
    print()
    print(f"=== summary: medians over {arguments.rounds} rounds ===")
    print(
        f"processor: {devices.cpu_name()}; flags: {', '.join(devices.cpu_flags()) or 'none listed'}"
    )
    for dtype in DTYPES:
        print(
            f"{dtype:<9} matmul {summary[f'matmul_{dtype} GFLOP/s']:7.1f} GFLOP/s   "
            f"train step {summary[f'step_{dtype} GFLOP/s']:6.1f} GFLOP/s "
            f"({summary[f'step_{dtype} img/s']:5.1f} img/s) = "
            f"{100 * summary[f'step/matmul {dtype}']:4.1f} % of the matmul"
        )
    print(
        f"bfloat16/float32 speed: matmul {summary['matmul bfloat16/float32']:.2f}x, "
        f"train step {summary['step bfloat16/float32']:.2f}x"
    )


def save_figure(summary, path, size):
    """Bars of GFLOP/s: the matmul and the train step, in float32 and in bfloat16."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    positions = np.arange(len(DTYPES))
    for offset, kind, label in (
        (-0.2, "matmul", f"{size}x{size} matmul"),
        (0.2, "step", "train step"),
    ):
        values = [summary[f"{kind}_{dtype} GFLOP/s"] for dtype in DTYPES]
        bars = axes.bar(positions + offset, values, 0.4, label=label)
        axes.bar_label(bars, fmt="%.0f")
    axes.set_xticks(positions, DTYPES)
    axes.set_ylabel("GFLOP/s")
    axes.set_title(f"{devices.cpu_name()}, {os.cpu_count()} cores", fontsize=10)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    print(f"saved {path}")


def main(argv=None):
    """Run the rounds, print each and the summary; save the figure when asked."""
    arguments = parse_arguments(argv)
    print("=== bench_roofline ===")
    print("machine:", devices.describe_machine())
    print(devices.describe_kernels())
    contenders = make_contenders(arguments)
    print()
    summary = summarize(run_rounds(contenders, arguments.rounds))
    print_summary(summary, arguments)
    if arguments.figure:
        save_figure(summary, arguments.figure, arguments.size)


if __name__ == "__main__":
    main()
