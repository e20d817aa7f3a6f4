"""What does one setting cost a train step, and an epoch, against another? Steps of the
preset's model, built and trained as `train` does, under settings that differ.

    python bench/bench_step.py --rounds 1 --steps 3 --limit 256 precision=float32 ema=0
    python bench/bench_step.py --val-steps 10 precision=float32 precision=mixed_bfloat16
    python bench/bench_step.py --rounds 3 --steps 10 --settings "batches=prepared ema=0" \\
        onednn=0 onednn=1 "onednn=1 distribution_head=true ema=0.999"
    python bench/bench_step.py --rounds 3 --steps 15 --limit 2048 --settings \\
        "batches=pipeline ema=0 distribution_head=false precision=float32" \\
        run=fit jit_compile=false jit_compile=true precision=mixed_bfloat16
    python bench/bench_step.py --limit 4000 --steps 30 --rounds 7 \\
        "precision=float32 batches=pipeline" precision=float32
    python bench/bench_step.py --rounds 3 --val-steps 10 threads=0,0 threads=1,2

Each contender (A, B, ... in the order given) is a string of TrainConfig settings,
name=value (true or false for a switch), over the machine's preset and `--settings`, and
of three more:

- run=step (default): `Trainer.train_step`, `float()` of each loss waiting for the step as
  `train` does; run=fit: `model.fit()` of the same model and optimizer, Keras's
  jit_compile="auto" (no XLA on a CPU), one call a run (prepared batches unless
  batches=pipeline), a callback reading the clocks from its second batch on. fit() trains
  the network alone: give it distribution_head=false ema=0 (and its rivals the same).
- batches=raw (default): uint8 batches and their augmentation seeds held in memory, which
  the step scales and augments, as `train` does; batches=prepared: augmented before and
  held in memory, the step alone; batches=pipeline: augmented in `tf.data` beside the
  step, a fresh iterator each run (as training did before).
- onednn=0 or 1: a fresh process each run with TF_ENABLE_ONEDNN_OPTS so set (TensorFlow
  reads it once, at its import); the process warms up untimed too.
- threads=INTRA,INTER: a fresh process each run, as for onednn, with TensorFlow's thread
  pools so sized before its first op (`tf.config.threading`: the threads one op may use,
  and the ops run at once; 0: TensorFlow's choice, a thread a core).

The batches are an epoch (seed 0) of --limit training faces decoded into memory; every run
starts at its first batch, so contenders of one size train on the same images in the same
order (their last losses are a check). A run times --steps steps after an untimed one,
then --val-steps test steps; with them, an epoch of the split this project's runs used
(17,019 training and 2,197 validation faces, validated twice with an average of the
weights) is estimated. Ratios are given for every pair, the later over the earlier.
"""

import argparse
import itertools
import json
import math
import os
import subprocess
import sys
import time
from typing import NamedTuple

import common  # first: the repository's path and TensorFlow's environment

import keras
import tensorflow as tf

import devices
import utk_data
from model import age_labels

# The faces of the split this project's runs used: what an epoch's steps are planned for.
TRAIN_FACES, VAL_FACES = 17_019, 2_197
EXTRAS = {"run": ("step", "fit"), "batches": ("raw", "prepared", "pipeline")}
EXTRAS["onednn"] = ("0", "1")
# The flags a process of its own is given.
CHILD_FLAGS = ("limit", "seed", "steps", "warmup_steps", "val_steps", "settings")


class Spec(NamedTuple):
    """A contender as the command line gives it, and its resolved TrainConfig."""

    text: str
    config: object
    run: str = "step"
    batches: str = "raw"
    onednn: str = None
    threads: tuple = None  # (intra, inter)


def read_spec(text, shared=""):
    """The Spec of "name=value ..." over the shared settings."""
    extras, settings = {}, []
    for item in f"{shared} {text}".split():
        name, _, value = item.partition("=")
        if name in EXTRAS and value not in EXTRAS[name]:
            raise ValueError(f"{item!r}: {name} is one of {', '.join(EXTRAS[name])}")
        if name == "threads":
            extras[name] = thread_counts(item, value)
        elif name in EXTRAS:
            extras[name] = value
        else:
            settings.append(item)
    if extras.get("run") == "fit" and extras.get("batches", "raw") == "raw":
        extras["batches"] = "prepared"  # fit() takes images ready for the model
    return Spec(text, common.config_of(" ".join(settings)), **extras)


def thread_counts(item, value):
    """(intra, inter) of a threads=INTRA,INTER setting."""
    counts = value.split(",")
    if len(counts) != 2 or not all(count.isdigit() for count in counts):
        raise ValueError(f"{item!r}: threads=INTRA,INTER, two counts (0: one a core)")
    return tuple(int(count) for count in counts)


class StepClock(keras.callbacks.Callback):
    """Reads the clocks when a fit() call begins its second batch and when it ends."""

    def on_train_batch_begin(self, batch, logs=None):
        if batch == 1:
            self.start = common.clocks()

    def on_train_end(self, logs=None):
        # fit() has turned the epoch's logs into numbers by now: every step is done.
        self.elapsed = common.since(self.start, 0)


class FitContender(common.StepContender):
    """`model.fit()` on the same model and optimizer, on prepared batches held in memory
    or on batches augmented in tf.data."""

    def __init__(self, config, decoded, steps, batches="prepared", val_steps=0):
        if config.distribution_head or config.ema or config.selective_backprop < 1:
            raise ValueError(
                "run=fit trains the network alone on every face it reads: ema=0 "
                "distribution_head=false selective_backprop=1"
            )
        super().__init__(config, decoded, steps, batches, val_steps)
        model = self.trainer.model
        model.compile(self.trainer.optimizer, "mae", jit_compile="auto")
        size, batch_size = config.image_size, config.batch_size
        if batches == "pipeline":  # (images, ages), augmented beside the steps
            self.dataset = utk_data.make_dataset(
                decoded, size, batch_size, True, seed=0
            )
            return
        per_epoch = utk_data.steps_per_epoch(len(decoded.records), batch_size)
        epoch = list(itertools.islice(self.batches(), per_epoch))
        images = tf.concat([images for images, _ in epoch], 0)
        ages = tf.concat([age_labels(labels) for _, labels in epoch], 0)
        dataset = tf.data.Dataset.from_tensor_slices((images, ages))
        self.dataset = dataset.batch(batch_size).repeat()

    def train(self, steps):
        """The Timing of one fit() call of 1 + `steps` steps, the first untimed."""
        clock = StepClock()
        history = self.trainer.model.fit(
            self.dataset, epochs=1, steps_per_epoch=1 + steps, shuffle=False,
            callbacks=[clock], verbose=0,
        )  # fmt: skip
        loss = history.history["loss"][-1]
        return clock.elapsed._replace(images=steps * self.config.batch_size, loss=loss)


class ChildContender:
    """A contender timed in a process of its own each run, TF_ENABLE_ONEDNN_OPTS or the
    sizes of TensorFlow's thread pools set."""

    def __init__(self, spec, arguments):
        flags = [f"--{name.replace('_', '-')}" for name in CHILD_FLAGS]
        values = [str(getattr(arguments, name)) for name in CHILD_FLAGS]
        flags = [*itertools.chain(*zip(flags, values))]
        flags += ["--data", arguments.data] if arguments.data else []
        self.command = [sys.executable, __file__, "--child", *flags, "--", spec.text]
        self.environment = dict(os.environ)
        if spec.onednn:
            self.environment["TF_ENABLE_ONEDNN_OPTS"] = spec.onednn

    def run(self):
        """The Timing the process measured."""
        finished = subprocess.run(
            self.command, env=self.environment, capture_output=True, text=True
        )
        if finished.returncode:
            raise RuntimeError(f"the timing process failed:\n{finished.stderr[-2000:]}")
        found = json.loads(finished.stdout.strip().splitlines()[-1])
        self.onednn, self.threads = found["onednn"], found["threads"]
        return common.Timing(*found["timing"])


def make_contender(spec, arguments, decoded_at, in_child=False):
    """The contender a Spec describes (in processes of its own when it sets oneDNN or the
    threads)."""
    if (spec.onednn or spec.threads) and not in_child:
        return ChildContender(spec, arguments)
    decoded = decoded_at(spec.config.image_size)
    kind = FitContender if spec.run == "fit" else common.StepContender
    return kind(
        spec.config, decoded, arguments.steps, spec.batches, arguments.val_steps
    )


def epoch_seconds(config, timing):
    """An epoch of the split's faces at this speed, its validation passes included."""
    val_steps = math.ceil(VAL_FACES / config.batch_size) * config.validation_passes
    steps = utk_data.steps_per_epoch(TRAIN_FACES, config.read_batch_size)
    step_seconds = timing.wall * config.read_batch_size / timing.images
    return steps * step_seconds + val_steps * timing.test_seconds


def print_summary(specs, results, arguments):
    """The medians of each contender, then the median ratios of every pair."""
    print(f"\n=== summary: medians over {arguments.rounds} round(s) ===")
    median = lambda value: common.median(results, value)[0]  # noqa: E731
    epochs = {
        name: lambda found, name=name: epoch_seconds(specs[name].config, found[name])
        for name in specs
    }
    for name, spec in specs.items():
        speed, low, high = common.median(
            results, lambda found: common.rate(found[name])
        )
        cpu = median(lambda found: 1000 * found[name].cpu / found[name].images)
        line = (
            f"{name} {spec.text}: {speed:,.1f} img/s ({low:,.1f}-{high:,.1f}), "
            f"CPU {cpu * spec.config.read_batch_size:,.0f} ms a step"
        )
        if arguments.val_steps:
            line += f", an epoch {median(epochs[name]):.1f} s"
        print(line + f"; last loss {results[-1][name].loss:.4f}")
    for first, second in itertools.combinations(specs, 2):
        wall = common.median_ratio(results, second, first)
        cpu = common.median_ratio(results, second, first, "cpu")
        line = f"{second}/{first}: img/s {wall:.3f} (a CPU second: {cpu:.3f})"
        if arguments.val_steps:
            ratio = median(lambda found: epochs[second](found) / epochs[first](found))
            count = specs[first].config.epochs
            line += (
                f", epoch seconds {ratio:.3f}: {count} epochs of {first} take the time "
                f"of {count / ratio:.1f} of {second}"
            )
        print(line)


def main(argv=None):
    """Build and warm up the contenders, run the rounds, print them and the summary."""
    parser = common.parser(__doc__, limit=1024, rounds=3)
    parser.add_argument("contenders", nargs="+", help="settings: name=value ...")
    parser.add_argument("--settings", default="", help="settings of every contender")
    parser.add_argument("--steps", type=common.positive, default=20)
    parser.add_argument("--warmup-steps", type=common.positive, default=3)
    parser.add_argument("--val-steps", type=int, default=0, help="test steps a run")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    decoded_at = common.faces_decoder(arguments)
    if arguments.child:  # One run in this process, of a contender that sets its own.
        spec = read_spec(arguments.contenders[0], arguments.settings)
        if spec.threads:  # before TensorFlow's first op, which makes its pools
            tf.config.threading.set_intra_op_parallelism_threads(spec.threads[0])
            tf.config.threading.set_inter_op_parallelism_threads(spec.threads[1])
        contender = make_contender(spec, arguments, decoded_at, in_child=True)
        contender.run(arguments.warmup_steps)
        threading = tf.config.threading
        threads = [
            threading.get_intra_op_parallelism_threads(),
            threading.get_inter_op_parallelism_threads(),
        ]
        found = {"onednn": devices.onednn_enabled(), "threads": threads}
        print(json.dumps({"timing": contender.run(), **found}))
        return
    common.header("bench_step")
    texts = enumerate(arguments.contenders)
    specs = {chr(65 + n): read_spec(text, arguments.settings) for n, text in texts}
    contenders = {}
    for name, spec in specs.items():
        started, config = time.perf_counter(), spec.config
        contenders[name] = make_contender(spec, arguments, decoded_at)
        if not isinstance(contenders[name], ChildContender):  # they warm up each run
            contenders[name].run(arguments.warmup_steps)
        print(
            f"{name} {spec.text}: {spec.run}, {config.image_size} px, batch "
            f"{config.batch_size}, {config.precision}, jit_compile {config.jit_compile}, "
            f"EMA {config.ema}, teacher {config.distribution_head}, {spec.batches} "
            f"batches; ready in {time.perf_counter() - started:.1f} s"
        )
    results = common.timed_rounds(contenders, arguments.rounds)
    for name, contender in contenders.items():
        if isinstance(contender, ChildContender):
            intra, inter = contender.threads
            print(
                f"{name}: in its processes, oneDNN {contender.onednn}, threads an op "
                f"{intra}, ops at once {inter} (0: TensorFlow's choice)"
            )
    print_summary(specs, results, arguments)


if __name__ == "__main__":
    main()
