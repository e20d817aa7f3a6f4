"""Benchmark the `utk_data` input pipeline against a naive PIL loop and the raw JPEG decode.

    python bench/bench_pipeline.py
    python bench/bench_pipeline.py --data ~/UTKFace --images 3000 --image-size 128 --rounds 3

On the same real images it prints images/second for four contenders:

1. pil: a naive loop, `Image.open(path).convert("RGB").resize(...)` to float32 / 255;
2. raw: `tf.io.decode_jpeg` of the file bytes (read with `tf.io.read_file`) in a tf.data
   map over all cores, no resize, default options: the decode limit;
3. first: `load_records` + `make_dataset` (training=False) + its first pass, decode included;
4. cached: a second pass over the same dataset object (the decoded images are in memory).

The machine may be shared and noisy, so the contenders alternate over `--rounds` rounds;
each ratio is computed within a round and its median over rounds is compared with its minimum.
CPU time (user + system, all threads) is printed beside the wall time: unlike the wall time
it hardly changes when other processes take the cores.
"""

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY_ROOT))

import utk_data  # noqa: E402

# The chosen images: a seeded sample of the usable files, in sorted-name order.
SEED = 0
# The batch size of the pipeline under test.
BATCH_SIZE = 64
# The speed-ups the pipeline must reach: (faster contender, slower contender, minimum ratio).
MINIMUM_RATIOS = (
    ("first", "raw", 0.7),
    ("first", "pil", 3.0),
    ("cached", "pil", 10.0),
)
LABELS = {
    "pil": "naive PIL loop",
    "raw": "raw decode_jpeg (tf.data, AUTOTUNE)",
    "first": "load_records + make_dataset, first pass",
    "cached": "second (cached) pass",
}


def parse_arguments(argv=None):
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", help="folder, archive or URL (default: see README)")
    parser.add_argument("--images", type=int, default=3000, help="images to time")
    parser.add_argument("--image-size", type=int, default=128, help="side in pixels")
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds of all contenders"
    )
    arguments = parser.parse_args(argv)
    if min(arguments.images, arguments.image_size, arguments.rounds) < 1:
        raise ValueError("--images, --image-size and --rounds must be positive")
    return arguments


class Clock:
    """Wall and CPU seconds since the last `lap`."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def lap(self):
        """Return (wall, CPU) seconds since the last lap and start the next one."""
        wall, cpu = time.perf_counter(), time.process_time()
        elapsed = (wall - self.wall, cpu - self.cpu)
        self.wall, self.cpu = wall, cpu
        return elapsed


def choose_records(folder, count):
    """A seeded sample of `count` usable records of `folder`, sorted by file name."""
    records, _ = utk_data.load_records(folder, verbose=False)
    if count > len(records):
        raise ValueError(
            f"{folder}: only {len(records):,} usable images, not {count:,}"
        )
    chosen = random.Random(SEED).sample(records, count)
    return sorted(chosen, key=lambda record: record.path.name)


def link_records(records, folder):
    """Fill `folder` with symbolic links to the records' files; return the links' paths."""
    links = []
    for record in records:
        link = Path(folder) / record.path.name
        link.symlink_to(record.path.resolve())
        links.append(str(link))
    return links


def warm_file_cache(paths):
    """Read every file once so that no contender pays for the disk; return the bytes read."""
    total = 0
    for path in paths:
        with open(path, "rb") as file:
            total += len(file.read())
    return total


def warm_up_tensorflow():
    """Import TensorFlow and run one tiny tf.data pipeline, outside the timings."""
    import tensorflow as tf

    dataset = tf.data.Dataset.range(8).map(
        lambda value: value * 2, num_parallel_calls=tf.data.AUTOTUNE
    )
    list(dataset)
    return tf


def _check_count(name, count, expected):
    if count != expected:
        raise ValueError(f"{name}: {count:,} images came out, {expected:,} expected")


def time_pil(paths, image_size):
    """(wall, CPU) seconds for the naive PIL loop to make float32 [0, 1] images."""
    from PIL import Image

    clock = Clock()
    images = []
    for path in paths:
        with Image.open(path) as image:
            resized = image.convert("RGB").resize((image_size, image_size))
        images.append(np.asarray(resized, np.float32) / 255.0)
    seconds = clock.lap()
    _check_count("pil", len(images), len(paths))
    return {"pil": seconds}


def time_raw_decode(tf, paths):
    """(wall, CPU) seconds to read and `decode_jpeg` every file in a parallel tf.data map."""
    clock = Clock()
    dataset = tf.data.Dataset.from_tensor_slices(paths)
    dataset = dataset.map(
        lambda path: tf.io.decode_jpeg(tf.io.read_file(path)),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    # Reduce in C++ so that the decode, not a Python loop over single images, is timed;
    # the sum of the image sizes depends on every decoded image, so none can be skipped.
    count, _ = dataset.reduce(
        (tf.constant(0, tf.int64), tf.constant(0, tf.int64)),
        lambda state, image: (state[0] + 1, state[1] + tf.size(image, tf.int64)),
    )
    count = int(count)
    seconds = clock.lap()
    _check_count("raw", count, len(paths))
    return {"raw": seconds}


def _consume(dataset):
    """Iterate a dataset of (images, ages) batches once; return the number of images."""
    count = 0
    for images, _ in dataset:
        count += int(images.shape[0])
    return count


def time_pipeline(folder, image_size, expected):
    """(wall, CPU) seconds of the first pass, its parts, and the cached pass on `folder`."""
    clock = Clock()
    records, _ = utk_data.load_records(folder, verbose=False)
    load = clock.lap()
    dataset = utk_data.make_dataset(
        records, image_size=image_size, batch_size=BATCH_SIZE, training=False
    )
    make = clock.lap()
    first_count = _consume(dataset)
    iterate = clock.lap()
    cached_count = _consume(dataset)
    cached = clock.lap()
    _check_count("first", first_count, expected)
    _check_count("cached", cached_count, expected)
    first = tuple(sum(parts) for parts in zip(load, make, iterate))
    return {
        "first": first,
        "cached": cached,
        "load_records": load,
        "make_dataset": make,
        "iterate": iterate,
    }


def run_round(tf, round_number, paths, link_folder, image_size):
    """Time every contender once, starting at a different one each round."""
    runners = {
        "pil": lambda: time_pil(paths, image_size),
        "raw": lambda: time_raw_decode(tf, paths),
        "first+cached": lambda: time_pipeline(link_folder, image_size, len(paths)),
    }
    names = list(runners)
    shift = round_number % len(names)
    order = names[shift:] + names[:shift]
    seconds = {}
    for name in order:
        seconds.update(runners[name]())
    return order, seconds


def print_round(round_number, order, seconds, count):
    """One round's rates, CPU cost and the parts of the first pass."""
    print(f"round {round_number + 1} (order: {', '.join(order)})")
    for name in LABELS:
        wall, cpu = seconds[name]
        print(
            f"    {name:<7} {count / wall:>9,.0f} img/s   "
            f"wall {wall:6.3f} s   CPU {cpu / count * 1e6:6.0f} us/img"
        )
    parts = " + ".join(
        f"{name} {seconds[name][0]:.3f} s"
        for name in ("load_records", "make_dataset", "iterate")
    )
    print(f"    first pass = {parts} (make_dataset includes the decode)")


def print_summary(results, count):
    """The median rates and the median ratios against their minimums."""
    print()
    print("=== summary: medians over rounds ===")
    for name, label in LABELS.items():
        rate = statistics.median(count / seconds[name][0] for seconds in results)
        cpu = statistics.median(seconds[name][1] / count * 1e6 for seconds in results)
        print(f"{label:<42} {rate:>9,.0f} img/s   CPU {cpu:6.0f} us/img")
    print()
    all_pass = True
    for faster, slower, minimum in MINIMUM_RATIOS:
        ratios = [seconds[slower][0] / seconds[faster][0] for seconds in results]
        ratio = statistics.median(ratios)
        passed = ratio >= minimum
        all_pass = all_pass and passed
        print(
            f"{faster + ' / ' + slower:<15} {ratio:7.2f}x   minimum {minimum:>4g}x   "
            f"{'PASS' if passed else 'FAIL'}   "
            f"(per round: {', '.join(f'{value:.2f}' for value in ratios)})"
        )
    print()
    print(f"overall: {'PASS' if all_pass else 'FAIL'}")


def main(argv=None):
    """Run the benchmark and print each round and a summary."""
    arguments = parse_arguments(argv)
    tf = warm_up_tensorflow()
    print("=== bench_pipeline ===")
    import devices  # Only for the machine's description; it imports TensorFlow too.

    print("machine:", devices.describe_machine())

    folder = utk_data.locate(arguments.data)
    clock = Clock()
    records = choose_records(folder, arguments.images)
    whole_folder, _ = clock.lap()
    print(f"data: {folder}")
    print(
        f"images: {len(records):,} (seeded sample, seed {SEED}, sorted names), "
        f"image size {arguments.image_size}, batch {BATCH_SIZE}, "
        f"{arguments.rounds} round(s)"
    )

    with tempfile.TemporaryDirectory(prefix="bench_pipeline-") as link_folder:
        paths = link_records(records, link_folder)
        print(
            f"load_records: timed on a temporary folder of {len(paths):,} symbolic "
            "links to the chosen files, not on the whole folder "
            f"(the whole folder took {whole_folder:.2f} s once, untimed)"
        )
        print("every contender reads the same links")
        megabytes = warm_file_cache(paths) / 1e6
        print(f"file cache warmed: {megabytes:.1f} MB read once before timing")
        print()
        results = []
        for round_number in range(arguments.rounds):
            order, seconds = run_round(
                tf, round_number, paths, link_folder, arguments.image_size
            )
            print_round(round_number, order, seconds, len(paths))
            results.append(seconds)

    print_summary(results, len(paths))


if __name__ == "__main__":
    main()
