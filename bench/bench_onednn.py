"""Benchmark TensorFlow's oneDNN CPU kernels against its own (Eigen) ones on our train step.

    python bench/bench_onednn.py
    python bench/bench_onednn.py --preset gpu --steps 10 --rounds 3

TensorFlow reads TF_ENABLE_ONEDNN_OPTS once, when it is imported, so every measurement is a
fresh process. Each round runs three, in an order that rotates from round to round:

- off: TF_ENABLE_ONEDNN_OPTS=0, the preset's network alone;
- on: TF_ENABLE_ONEDNN_OPTS=1, the same;
- on+teacher+ema: TF_ENABLE_ONEDNN_OPTS=1 with the distribution head and an average of the
  weights (`--distribution-head --ema 0.999`): what a train step costs with those.

A process builds the preset's model as `train_loop.train` does, warms up
`train_loop.Trainer.train_step` (tracing included) and then times `--steps` steps on random
batches of the preset's shape: the time of dense convolutions does not depend on the pixel
values. Ratios to "off" are taken within a round and the median over rounds is reported,
with process CPU time per step as a cross-check.

TensorFlow turns oneDNN on by itself only on processors with AVX-512 VNNI or newer features;
`train_loop` sets TF_ENABLE_ONEDNN_OPTS=1 unless it is set already.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
# name: (TF_ENABLE_ONEDNN_OPTS, distribution head, EMA momentum)
VARIANTS = {
    "off": ("0", False, 0.0),
    "on": ("1", False, 0.0),
    "on+teacher+ema": ("1", True, 0.999),
}


def parse_arguments(argv=None):
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--steps", type=int, default=20, help="timed steps a process")
    parser.add_argument("--warmup-steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--child", choices=tuple(VARIANTS), help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    for name in ("steps", "warmup_steps", "rounds"):
        if getattr(arguments, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be positive")
    return arguments


def time_steps(arguments):
    """In this process: seconds of wall and CPU time per train step, and oneDNN's state."""
    sys.path.insert(0, str(REPOSITORY_ROOT))
    import keras
    import tensorflow as tf

    import devices
    import train_loop

    config = train_loop.resolve_config(
        train_loop.TrainConfig(
            out="unused",
            preset=arguments.preset,
            distribution_head=VARIANTS[arguments.child][1],
            ema=VARIANTS[arguments.child][2],
        )
    )
    keras.utils.set_random_seed(0)
    with train_loop.dtype_policy(config.precision):
        model = train_loop.make_model(config, initial_age=33.0)
    trainer = train_loop.Trainer(model, train_loop.make_optimizer(config, 100), config)
    size, batch = config.image_size, config.batch_size
    images = tf.random.uniform((batch, size, size, 3))
    ages = tf.random.uniform((batch, 1), 1.0, 90.0)
    for _ in range(arguments.warmup_steps):
        float(trainer.train_step(images, ages))
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(arguments.steps):
        float(trainer.train_step(images, ages))
    return {
        "onednn": devices.onednn_enabled(),
        "wall": (time.perf_counter() - wall) / arguments.steps,
        "cpu": (time.process_time() - cpu) / arguments.steps,
        "machine": devices.describe_machine(),
    }


def measure(variant, arguments):
    """Run one child process timing a variant; its timing."""
    command = [sys.executable, __file__, "--child", variant]
    command += ["--preset", arguments.preset, "--steps", str(arguments.steps)]
    command += ["--warmup-steps", str(arguments.warmup_steps)]
    setting = VARIANTS[variant][0]
    environment = dict(
        os.environ, TF_ENABLE_ONEDNN_OPTS=setting, TF_CPP_MIN_LOG_LEVEL="3"
    )
    finished = subprocess.run(
        command, env=environment, capture_output=True, text=True, check=False
    )
    if finished.returncode != 0:
        raise RuntimeError(f"the timing process failed:\n{finished.stderr[-2000:]}")
    return json.loads(finished.stdout.strip().splitlines()[-1])


def main(argv=None):
    """Run the rounds, print each and the median ratios."""
    arguments = parse_arguments(argv)
    if arguments.child:
        print(json.dumps(time_steps(arguments)))
        return
    print("=== bench_onednn ===")
    print(
        f"preset {arguments.preset}, {arguments.steps} timed steps a process after "
        f"{arguments.warmup_steps}"
    )
    names = tuple(VARIANTS)
    rounds = []
    for number in range(arguments.rounds):
        shift = number % len(names)
        order = names[shift:] + names[:shift]
        timings = {name: measure(name, arguments) for name in order}
        if number == 0:
            print("machine:", timings["on"]["machine"])
        if timings["off"]["onednn"] == timings["on"]["onednn"]:
            print(
                f"oneDNN was {timings['on']['onednn']} both times: the setting is ignored"
            )
        rounds.append(timings)
        print(
            f"round {number + 1} ({', '.join(order)}): "
            + ", ".join(f"{name} {1000 * timings[name]['wall']:.0f}" for name in names)
            + " ms/step"
        )
    for name in names[1:]:
        for clock in ("wall", "cpu"):
            ratios = [
                timings["off"][clock] / timings[name][clock] for timings in rounds
            ]
            print(
                f"speed of {name} over off ({clock} time per step), median of "
                f"{len(ratios)} rounds: {statistics.median(ratios):.2f} "
                f"(range {min(ratios):.2f}-{max(ratios):.2f})"
            )


if __name__ == "__main__":
    main()
