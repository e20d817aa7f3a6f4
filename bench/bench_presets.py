"""What an epoch of one training configuration costs against another's, in one process: the
evidence for spending what bfloat16 saves on a larger image or more epochs.

    python bench/bench_presets.py
    python bench/bench_presets.py --new "precision=mixed_bfloat16 image_size=104" --rounds 5

Each configuration (`--old`, `--new`: TrainConfig fields as name=value, over the machine's
preset) trains as `train_loop.train` trains it: its model, optimizer, average of the weights
and the augmentation inside the train step, on batches of real training faces held in
memory (the input pipeline is not timed: bench/bench_input.py times it). A round times
`--steps` train steps and `--val-steps` test steps of each, alternating which goes first.
An epoch's seconds are then estimated as a run's epochs are planned
(train_loop.epochs_for_budget): the training steps of the 17,019 training faces and the
validation passes (two with an average of the weights) over the 2,197 validation faces,
where the test steps are timed too. Printed: the medians, the new/old ratio of an epoch's
seconds (within a round, then the median), and the epochs of the new configuration that
take the time of the old one's.
"""

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# devices first: it sets TensorFlow's environment (oneDNN) before the import.
import devices  # noqa: E402
import train_loop  # noqa: E402
import utk_data  # noqa: E402

# The faces of the split this project's runs used: an epoch's steps are planned for them.
TRAIN_FACES, VAL_FACES = 17_019, 2_197


def parse_arguments(argv=None):
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", help="folder, archive or URL (default: see README)")
    parser.add_argument("--old", default="precision=float32", help="name=value ...")
    parser.add_argument(
        "--new", default="precision=mixed_bfloat16", help="name=value ..."
    )
    parser.add_argument("--images", type=int, default=1024, help="faces in memory")
    parser.add_argument("--steps", type=int, default=20, help="train steps a round")
    parser.add_argument("--val-steps", type=int, default=10, help="test steps a round")
    parser.add_argument("--rounds", type=int, default=3)
    return parser.parse_args(argv)


def config_of(settings):
    """The resolved TrainConfig of "name=value ..." over the machine's preset, read as
    `train` reads its flags (name=true and name=false for a switch)."""
    flags = []
    for item in settings.split():
        name, value = item.split("=", 1)
        flag = name.replace("_", "-")
        if value in ("true", "false"):
            flags.append(f"--{flag}" if value == "true" else f"--no-{flag}")
        else:
            flags += [f"--{flag}", value]
    arguments = train_loop._parser().parse_args(["train", "--out", "unused", *flags])
    return train_loop.resolve_config(train_loop.config_from_arguments(arguments))


class Contender:
    """A configuration's trainer and batches, timed step by step."""

    def __init__(self, config, records, initial_age):
        self.config = config
        decoded = utk_data.decode_records(records, config.image_size)
        raw = utk_data.make_dataset(
            decoded, config.image_size, config.batch_size, True,
            augment=config.augment, with_attributes=True, raw=True, epochs=1,
        )  # fmt: skip
        self.train_batches = list(raw)
        evaluation = utk_data.make_dataset(
            decoded, config.image_size, config.batch_size, False, with_attributes=True
        )
        self.val_batches = list(evaluation)
        strategy = devices.make_strategy("one")
        self.trainer = train_loop._make_trainer(
            config, strategy, initial_age, records, len(self.train_batches)
        )
        self.seconds(1, 1)  # Traces and compiles both steps.

    def seconds(self, steps, val_steps):
        """(seconds a train step, seconds a test step), each the mean over its steps."""
        start = time.perf_counter()
        for number in range(steps):
            batch = self.train_batches[number % len(self.train_batches)]
            float(self.trainer.train_step(*batch))
        middle = time.perf_counter()
        for number in range(val_steps):
            images, labels = self.val_batches[number % len(self.val_batches)]
            self.trainer.test_step(images, labels).numpy()
        end = time.perf_counter()
        return (middle - start) / steps, (end - middle) / val_steps

    def epoch_seconds(self, train_seconds, test_seconds):
        """An epoch of the split's faces: its train steps and validation passes."""
        config = self.config
        steps = utk_data.steps_per_epoch(TRAIN_FACES, config.batch_size)
        val_steps = math.ceil(VAL_FACES / config.batch_size)
        passes = 2 if config.ema else 1
        return steps * train_seconds + passes * val_steps * test_seconds


def main(argv=None):
    """Time both configurations over the rounds; print the medians and the ratio."""
    arguments = parse_arguments(argv)
    print("=== bench_presets ===")
    print("machine:", devices.describe_machine())
    records, _, _ = utk_data.load_splits(arguments.data)
    records = records[: arguments.images]
    initial_age = sum(record.age for record in records) / len(records)
    contenders = {
        name: Contender(config_of(settings), records, initial_age)
        for name, settings in (("old", arguments.old), ("new", arguments.new))
    }
    for name, contender in contenders.items():
        config = contender.config
        print(
            f"{name}: {config.image_size} px, batch {config.batch_size}, "
            f"{config.precision}, relu_gradient {config.relu_gradient}, "
            f"{config.epochs} epochs"
        )
    epochs, ratios = {"old": [], "new": []}, []
    for number in range(arguments.rounds):
        order = ["old", "new"] if number % 2 == 0 else ["new", "old"]
        for name in order:
            contender = contenders[name]
            timed = contender.seconds(arguments.steps, arguments.val_steps)
            epochs[name].append(contender.epoch_seconds(*timed))
            print(
                f"round {number + 1} {name}: {timed[0] * 1000:.0f} ms a train step, "
                f"{timed[1] * 1000:.0f} ms a test step, {epochs[name][-1]:.0f} s an epoch"
            )
        ratios.append(epochs["new"][-1] / epochs["old"][-1])
    old, new = (statistics.median(epochs[name]) for name in ("old", "new"))
    ratio = statistics.median(ratios)
    old_epochs = contenders["old"].config.epochs
    print(
        f"epoch: old {old:.0f} s, new {new:.0f} s (medians); new/old epoch seconds "
        f"ratio {ratio:.3f} (median of the rounds' ratios)"
    )
    print(
        f"{old_epochs} old epochs take the time of {old_epochs / ratio:.1f} new ones "
        f"({old_epochs * old / 60:.0f} minutes of epochs)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
