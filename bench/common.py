"""What the benchmarks share: their flags, the faces, the models they time, and timed rounds
in a rotating order. Import it first: it puts the repository on the path and, through
`devices`, sets TensorFlow's environment before TensorFlow loads.

    import common
    parser = common.parser(__doc__, limit=1000)
    faces = common.faces(parser.parse_args(), "test")
    results = common.timed_rounds({"a": contender_a, "b": contender_b}, rounds=3)

The machine may be shared and noisy, so a benchmark alternates its contenders over rounds,
each round starting one later than the one before, so that none always runs first (while
the processor is coolest) or last. Ratios are taken within a round and their median over
the rounds is reported, with the process's CPU time (all its threads), which moves less
than the wall time when other processes take the cores, as a cross-check.
"""

import argparse
import dataclasses
import functools
import itertools
import statistics
import sys
import time
from pathlib import Path
from typing import NamedTuple, Optional

REPOSITORY = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY))

# devices first: it sets TensorFlow's environment (the Keras backend, oneDNN) before the
# import.
import devices  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402

import augmentation  # noqa: E402
import train_loop  # noqa: E402
import utk_data  # noqa: E402
from config import AT_LEAST_ONE  # noqa: E402
from flags import add_config_arguments, config_from_arguments  # noqa: E402
from flags import checked_number  # noqa: E402
from losses import log_age_prior  # noqa: E402
from model import forward_flops  # noqa: E402

# The model the examples of the docstrings read: what `python train_loop.py train --out
# runs/default` writes.
EXAMPLE_MODEL = "runs/default/model.keras"
SPLITS = ("train", "val", "test")
# A train step's FLOPs: forward + backward (the gradients of the inputs and of the weights),
# about three forward passes.
PASSES_PER_STEP = 3

# ---------------------------------------------------------------------------------------
# Flags
# ---------------------------------------------------------------------------------------


# An argparse type: a whole number of at least 1.
positive = checked_number(int, AT_LEAST_ONE)


def parser(doc, limit=None, rounds=None):
    """The flags every benchmark takes (--data, --limit, --seed, and --rounds when it
    times rounds); its description the first paragraph of `doc`, its epilog the second
    (the examples)."""
    paragraphs = doc.split("\n\n")
    parser = argparse.ArgumentParser(
        description=" ".join(paragraphs[0].split()),
        epilog=paragraphs[1] if len(paragraphs) > 1 else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", help="folder, archive or URL of UTKFace (see README)")
    limit_help = f"faces to use (default: {limit or 'every face of the split'})"
    parser.add_argument("--limit", type=positive, default=limit, help=limit_help)
    if rounds:
        parser.add_argument(
            "--rounds", type=positive, default=rounds, help="of them all"
        )
    parser.add_argument("--seed", type=int, default=0, help="chooses the faces")
    return parser


def add_model_argument(parser, several=False, required=True):
    """--model: a model.keras file that `train` wrote (with `several`, one or more)."""
    parser.add_argument(
        "--model",
        nargs="+" if several else None,
        required=required,
        help=f"model.keras file{'s' if several else ''}, e.g. {EXAMPLE_MODEL}",
    )


# ---------------------------------------------------------------------------------------
# Faces and models
# ---------------------------------------------------------------------------------------


# Every split of a folder, read once a process (utk_data.load_splits).
_load_splits = functools.cache(utk_data.load_splits)


def faces(arguments, split="train", rng=None):
    """The records of a split (train, val or test) of --data: all of them, in order,
    without --limit; with it, that many drawn at random by `rng` (default: one seeded by
    --seed)."""
    records = dict(zip(SPLITS, _load_splits(arguments.data)))[split]
    if arguments.limit is None:
        return records
    if arguments.limit > len(records):
        raise ValueError(
            f"the {split} split has {len(records):,} faces, not {arguments.limit:,}"
        )
    rng = rng if rng is not None else np.random.default_rng(arguments.seed)
    return [
        records[index] for index in rng.permutation(len(records))[: arguments.limit]
    ]


def faces_decoder(arguments):
    """A function from an image size to --limit training faces decoded at that size into
    memory (utk_data.decode_records), read and decoded once each."""
    records = functools.cache(lambda: faces(arguments, "train"))
    return functools.cache(lambda size: utk_data.decode_records(records(), size))


def mean_age(records):
    """The mean age of records: the initial output `train` gives a model."""
    return float(np.mean([record.age for record in records]))


def config_of(settings=""):
    """The resolved TrainConfig of "name=value ..." (TrainConfig fields, true or false for
    a switch) over the machine's preset, read as `train` reads its flags."""
    flags = []
    for item in settings.split():
        name, equals, value = item.partition("=")
        if not equals:
            raise ValueError(f"a setting is name=value, got {item!r}")
        flag = "--" + name.replace("_", "-")
        if value in ("true", "false"):
            flags.append(flag if value == "true" else "--no-" + flag[2:])
        else:
            flags += [flag, value]
    config_parser = argparse.ArgumentParser(prog="settings")
    add_config_arguments(config_parser)
    config = config_from_arguments(config_parser.parse_args(flags))
    return train_loop.resolve_config(dataclasses.replace(config, out="unused"))


def make_model(config, initial_age):
    """The model `train` builds for `config`: from its seed, under its precision."""
    keras.utils.set_random_seed(config.seed)
    with train_loop.dtype_policy(config.precision):
        return train_loop.make_model(config, initial_age)


def make_trainer(config, initial_age, steps_per_epoch):
    """A Trainer of make_model's model and `train`'s optimizer. A Balanced MSE term gets
    every age as common: its cost does not depend on the distribution."""
    model = make_model(config, initial_age)
    optimizer = train_loop.make_optimizer(config, steps_per_epoch)
    age_prior = log_age_prior([], utk_data.MAX_AGE) if config.balanced_mse else None
    return train_loop.Trainer(model, optimizer, config, age_prior=age_prior)


def training_batches(decoded, config, kind="raw"):
    """A function that starts a run's training batches (seed 0) of decoded faces over:
    kind "raw", an epoch of uint8 batches and augmentation seeds held in memory, which the
    train step scales and augments, as `train` does; "prepared", the same batches augmented
    before, held in memory; "pipeline", a fresh iterator of batches augmented in tf.data.
    """
    dataset = utk_data.make_dataset(
        decoded, config.image_size, config.read_batch_size, True,
        augmentation=config.augmentation, with_attributes=True, seed=0,
        raw=kind != "pipeline",
    )  # fmt: skip
    if kind == "pipeline":
        return lambda: iter(dataset)
    steps = utk_data.steps_per_epoch(len(decoded.records), config.read_batch_size)
    epoch = list(dataset.take(steps))
    if kind == "prepared":
        epoch = [
            (augmentation.prepare_batch(images, seeds[0], config.augmentation), labels)
            for images, labels, seeds in epoch
        ]
    return lambda: itertools.cycle(epoch)


class StepContender:
    """`Trainer.train_step` of the model `train` builds for `config`, on training batches
    of decoded faces (see training_batches); each run starts at their first batch, so
    contenders of one size train on the same images in the same order."""

    def __init__(self, config, decoded, steps, batches="raw", val_steps=0):
        per_epoch = utk_data.steps_per_epoch(
            len(decoded.records), config.read_batch_size
        )
        self.trainer = make_trainer(config, mean_age(decoded.records), per_epoch)
        self.flops = PASSES_PER_STEP * forward_flops(self.trainer.model)  # an image
        self.config, self.steps, self.val_steps = config, steps, val_steps
        self.batches = training_batches(decoded, config, batches)
        evaluation = utk_data.make_dataset(
            decoded, config.image_size, config.batch_size, False, with_attributes=True
        )
        self.val_batches = list(evaluation.take(val_steps)) if val_steps else []

    def train(self, steps):
        """The Timing of `steps` train steps after an untimed one."""
        batches = self.batches()
        float(self.trainer.train_step(*next(batches)))
        start = clocks()
        for _ in range(steps):
            # float() waits for the step, as the finiteness check of `train` does.
            loss = float(self.trainer.train_step(*next(batches)))
        # The images read: with selective_backprop, more than the step trains on.
        return since(start, steps * self.config.read_batch_size, loss)

    def run(self, steps=None):
        """The Timing of a run: its train steps, then its test steps (`val_steps`)."""
        timing = self.train(steps or self.steps)
        start = time.perf_counter()
        for number in range(self.val_steps):
            images, labels = self.val_batches[number % len(self.val_batches)]
            self.trainer.test_step(images, labels).numpy()
        test = (time.perf_counter() - start) / max(1, self.val_steps)
        flops = self.flops * timing.images
        return timing._replace(flops=flops, test_seconds=test)


def link_files(records, folder):
    """Symbolic links in `folder` to the records' files; their paths."""
    links = []
    for record in records:
        link = Path(folder) / Path(record.path).name
        link.symlink_to(Path(record.path).resolve())
        links.append(str(link))
    return links


def header(name):
    """Print the benchmark's name, the machine and its CPU kernels."""
    print(f"=== {name} ===")
    print("machine:", devices.describe_machine())
    print(devices.describe_kernels())


# ---------------------------------------------------------------------------------------
# Timed rounds
# ---------------------------------------------------------------------------------------


class Timing(NamedTuple):
    """One timed run: wall and process CPU seconds, the images it did, a loss to compare
    contenders by (or None), its FLOPs and the seconds of a test step, if counted."""

    wall: float
    cpu: float
    images: int
    loss: Optional[float] = None
    flops: float = 0.0
    test_seconds: float = 0.0


def clocks():
    """The wall clock and this process's CPU clock (all its threads), in seconds."""
    return time.perf_counter(), time.process_time()


def since(start, images, loss=None):
    """The Timing of a run that began at `start`, a clocks() reading."""
    wall, cpu = clocks()
    return Timing(wall - start[0], cpu - start[1], images, loss)


def rate(timing, clock="wall"):
    """Images (or units) a second of the wall clock, or of CPU time with clock="cpu"."""
    return timing.images / getattr(timing, clock)


def rotating_rounds(contenders, rounds):
    """For each round, (its number from 0, the order it ran in, {name: result}): every
    contender's `run()` once, in an order that starts one later each round."""
    names = tuple(contenders)
    for number in range(rounds):
        shift = number % len(names)
        order = names[shift:] + names[:shift]
        yield number, order, {name: contenders[name].run() for name in order}


def timed_rounds(contenders, rounds, label="round", show=rate, unit="img/s"):
    """The rounds' {name: result}, each round printed (`show(result)` of each)."""
    results = []
    for number, order, found in rotating_rounds(contenders, rounds):
        results.append(found)
        shown = "  ".join(f"{name} {show(found[name]):,.1f}" for name in contenders)
        print(f"{label} {number + 1} ({', '.join(order)}): {shown} {unit}")
    return results


def step_parser(doc):
    """The flags of a benchmark of ops in steps of their own: parser()'s with --rounds,
    and --steps, --batch and --precision (bfloat16 or float32)."""
    flags = parser(doc, rounds=3)
    flags.add_argument("--steps", type=positive, default=20)
    flags.add_argument("--batch", type=positive, default=64)
    flags.add_argument(
        "--precision", choices=("bfloat16", "float32"), default="bfloat16"
    )
    return flags


def timed_steps(step, steps, images):
    """The Timing of `steps` calls of `step` (a tf.function returning tensors), the
    last waited for; `images` the images (or units) they did."""
    start = clocks()
    for _ in range(steps):
        outputs = step()
    _ = [output.numpy() for output in outputs]  # wait for the last step
    return since(start, images)


def step_medians(contenders, rounds, steps, digits=1):
    """Time `contenders` (each a `run()` of `steps` steps) in rotating rounds, print
    each round and each contender's median milliseconds a step (and range); returns the
    rounds' results."""

    def milliseconds(timing):
        return 1000 * timing.wall / steps

    results = timed_rounds(contenders, rounds, show=milliseconds, unit="ms a step")
    width = max(len(name) for name in contenders) + 1
    for name in contenders:
        value, low, high = median(results, lambda found: milliseconds(found[name]))
        print(
            f"{name:<{width}}{value:.{digits}f} ms a step "
            f"({low:.{digits}f}-{high:.{digits}f})"
        )
    return results


def median(results, value):
    """(median, lowest, highest) of value(round's results) over the rounds."""
    values = [value(found) for found in results]
    return statistics.median(values), min(values), max(values)


def median_ratio(results, name, reference, clock="wall"):
    """The median over rounds of name's rate over reference's, both of one round."""

    def ratio(found):
        return rate(found[name], clock) / rate(found[reference], clock)

    return median(results, ratio)[0]


def print_rates(results, labels, reference=None):
    """A line per contender: its median rate (and range), its CPU time per image, and,
    with `reference`, its median speed over the reference's."""
    for name, label in labels.items():
        speed, low, high = median(results, lambda found: rate(found[name]))
        cpu = median(results, lambda found: 1e6 / rate(found[name], "cpu"))[0]
        line = (
            f"{label:<42} {speed:>9,.1f} img/s ({low:,.1f}-{high:,.1f}), "
            f"CPU {cpu:,.0f} us/img"
        )
        if reference:
            line += f", {median_ratio(results, name, reference):.2f}x {reference}"
        print(line)
