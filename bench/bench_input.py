"""How fast does the input pipeline feed the train step? Images/second of `utk_data`'s
decoding, and of its batches from memory, against the simplest alternatives.

    python bench/bench_input.py decode --limit 3000
    python bench/bench_input.py memory --limit 4000
    python bench/bench_input.py memory --limit 512 --passes 1 --rounds 1

decode (at --image-size, 128 px by default): --limit training faces linked into a temporary
folder, the file cache warmed before, every contender reading the same links:

1. pil: a naive loop, `Image.open(path).convert("RGB").resize(...)` to float32 / 255;
2. raw: `tf.io.decode_jpeg` of the files' bytes in a tf.data map over all cores, no
   resize, reduced in C++: the decode limit;
3. first: `load_records` of the folder + `make_dataset` (training=False, batch 64: it
   decodes the images into memory) + a first pass over it (the parts are printed);
4. cached: a second pass over the same dataset, from the images in memory.

memory: --limit training faces decoded into memory once at 128 px (batches of 128, the GPU
preset's) and at 96 px (batches of 64, the CPU preset's); every contender gathers its
batches from them, timed over --passes passes after one untimed batch, each run from a
fresh iterator (so that none fills its prefetch buffer while another is timed):

1. raw: `make_dataset(raw=True)`, what training uses: uint8 gathers, the labels and the
   augmentation seed of each batch, nothing else;
2. augmented: `make_dataset(raw=False)`, scaled to float32 and augmented in tf.data, as
   training did before;
3. plain: scaled to float32, not augmented;
4. prepare: the augmentation alone, `tf.function(augmentation.prepare_batch)` on raw batches
   held in memory: what the train step adds (its largest difference from the augmented
   batches is printed: 0 but for float rounding when both give the same images);
5. prepare_flip_pass: the same with the pass over the batch its flip once made (every
   image reversed, and each picked from the reversed copy or the batch, before the
   frames were cut; a flipped frame is now cut right to left instead).

The train step with the augmentation in tf.data, against the augmentation inside it:
`python bench/bench_step.py "precision=float32 batches=pipeline" precision=float32`.
"""

import tempfile
import types
from pathlib import Path

import common  # first: the repository's path and TensorFlow's environment

import numpy as np
import tensorflow as tf
from PIL import Image

import utk_data
from augmentation import Augmentation, augment_batch, prepare_batch

# (image size, batch size) of the memory part: the GPU and the CPU presets'.
SIZES = ((128, 128), (96, 64))
# A rate at 128 px that keeps a GPU training a ResNet-18-sized network busy.
GPU_FEED_RATE = 20_000


def contender(run, *arguments):
    """Something with a run() that calls run(*arguments), as timed rounds ask for."""
    return types.SimpleNamespace(run=lambda: run(*arguments))


# ---------------------------------------------------------------------------------------
# decode
# ---------------------------------------------------------------------------------------


def time_pil(paths, image_size):
    """The naive PIL loop to float32 [0, 1] images."""
    start, images = common.clocks(), []
    for path in paths:
        with Image.open(path) as image:
            resized = image.convert("RGB").resize((image_size, image_size))
        images.append(np.asarray(resized, np.float32) / 255.0)
    return {"pil": common.since(start, len(images))}


def time_raw_decode(paths):
    """`decode_jpeg` of every file in a parallel tf.data map, reduced in C++ so that the
    decode, not a Python loop, is timed (the sum of the sizes needs every image)."""
    start = common.clocks()
    dataset = tf.data.Dataset.from_tensor_slices(paths).map(
        lambda path: tf.io.decode_jpeg(tf.io.read_file(path)),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    count, _ = dataset.reduce(
        (tf.constant(0, tf.int64), tf.constant(0, tf.int64)),
        lambda state, image: (state[0] + 1, state[1] + tf.size(image, tf.int64)),
    )
    return {"raw": common.since(start, int(count))}


def time_pipeline(folder, image_size):
    """The first pass of `load_records` + `make_dataset`, its parts, and a second pass."""
    seconds, start = {}, common.clocks()
    records, _ = utk_data.load_records(folder, verbose=False)
    seconds["load_records"] = common.since(start, len(records))
    start = common.clocks()
    dataset = utk_data.make_dataset(records, image_size, 64, training=False)
    seconds["make_dataset"] = common.since(start, len(records))
    for name in ("iterate", "cached"):
        start = common.clocks()
        count = sum(int(images.shape[0]) for images, _ in dataset)
        seconds[name] = common.since(start, count)
    parts = [seconds[name] for name in ("load_records", "make_dataset", "iterate")]
    seconds["first"] = common.Timing(*np.sum([part[:2] for part in parts], 0), count)
    return seconds


def decode(arguments):
    """The decode part: each round and the medians."""
    with tempfile.TemporaryDirectory(prefix="bench_input-") as folder:
        paths = common.link_files(common.faces(arguments, "train"), folder)
        megabytes = sum(Path(path).stat().st_size for path in paths) / 1e6
        for path in paths:  # Read once, so that no contender pays for the disk.
            Path(path).read_bytes()
        print(f"{len(paths):,} faces linked, {megabytes:.1f} MB read once untimed")
        contenders = {
            "pil": contender(time_pil, paths, arguments.image_size),
            "raw": contender(time_raw_decode, paths),
            "pipeline": contender(time_pipeline, folder, arguments.image_size),
        }
        results = []
        for number, order, found in common.rotating_rounds(
            contenders, arguments.rounds
        ):
            timings = [timing for run in found.values() for timing in run.items()]
            results.append(dict(timings))
            shown = ", ".join(f"{name} {timing.wall:.2f} s" for name, timing in timings)
            print(f"round {number + 1} ({', '.join(order)}): {shown}")
    print(f"\n=== decode at {arguments.image_size} px: medians over the rounds ===")
    labels = {
        "pil": "naive PIL loop",
        "raw": "raw decode_jpeg (tf.data, AUTOTUNE)",
        "first": "load_records + make_dataset, first pass",
        "cached": "second (cached) pass",
    }
    common.print_rates(results, labels)
    for faster, slower in (("first", "raw"), ("first", "pil"), ("cached", "pil")):
        print(f"{faster}/{slower}: {common.median_ratio(results, faster, slower):.2f}x")


# ---------------------------------------------------------------------------------------
# memory
# ---------------------------------------------------------------------------------------


def time_batches(source, batches):
    """1 + `batches` batches of a fresh iterator, the last `batches` timed."""
    iterator = iter(source)
    next(iterator)
    start = common.clocks()
    count = sum(int(next(iterator)[0].shape[0]) for _ in range(batches))
    return common.since(start, count)


def time_prepare(prepare, cached, batches):
    """The augmentation of `batches` raw batches held in memory, after an untimed one."""
    prepare(*cached[0])
    start, count = common.clocks(), 0
    for number in range(batches):
        images, seeds = cached[number % len(cached)]
        # Eager execution is synchronous: the batch is ready when the call returns.
        prepare(images, seeds)
        count += int(images.shape[0])
    return common.since(start, count)


def memory_contenders(decoded, batch_size, passes):
    """The four contenders of one size, warmed up (tracing and thread pools untimed)."""
    per_pass = len(decoded.records) // batch_size
    batches = passes * per_pass
    sources = {
        name: utk_data.make_dataset(
            decoded, decoded.image_size, batch_size, training=True,
            augmentation=settings, with_attributes=True, seed=0, raw=raw,
        )  # fmt: skip
        for name, raw, settings in (
            ("raw", True, Augmentation()),
            ("augmented", False, Augmentation()),
            ("plain", False, None),
        )
    }
    contenders = {
        name: contender(time_batches, source, batches)
        for name, source in sources.items()
    }
    prepare = tf.function(
        lambda images, seeds: prepare_batch(images, seeds[0], Augmentation())
    )
    raw = iter(sources["raw"])
    cached = [
        (images, seeds) for images, _, seeds in (next(raw) for _ in range(per_pass))
    ]
    contenders["prepare"] = contender(time_prepare, prepare, cached, batches)

    def flip_pass(images, seeds):
        """prepare and the pass over the batch its flip once made: a reversed copy of
        every image, and each image picked from it or from the batch."""
        floats = tf.cast(images, tf.float32) / 255.0  # as prepare_batch begins
        flip = tf.random.stateless_uniform([tf.shape(images)[0]], seeds[1]) < 0.5
        floats = tf.where(flip[:, None, None, None], tf.reverse(floats, [2]), floats)
        return augment_batch(floats, seeds[0], Augmentation())

    flip_pass = tf.function(flip_pass)
    contenders["prepare_flip_pass"] = contender(
        time_prepare, flip_pass, cached, batches
    )
    for source in sources.values():
        time_batches(source, 4)
    time_prepare(prepare, cached, 4)
    time_prepare(flip_pass, cached, 4)
    augmented, _ = next(iter(sources["augmented"]))
    difference = float(tf.reduce_max(tf.abs(prepare(*cached[0]) - augmented)))
    print(
        f"{decoded.image_size} px: the step's augmentation of a raw batch against the "
        f"augmented dataset's batch: largest difference {difference:.2g}"
    )
    return contenders


def memory(arguments):
    """The memory part at each size of SIZES: each round and the medians."""
    records, results = common.faces(arguments, "train"), {}
    for size, batch_size in SIZES:
        start = common.clocks()
        decoded = utk_data.decode_records(records, size)
        seconds = common.since(start, 0).wall
        print(f"{len(decoded.records):,} faces decoded at {size} px in {seconds:.1f} s")
        contenders = memory_contenders(decoded, batch_size, arguments.passes)
        label = f"{size} px, batch {batch_size}, round"
        results[size] = common.timed_rounds(contenders, arguments.rounds, label)
    for size, batch_size in SIZES:
        print(
            f"\n=== memory, {size} px, batch {batch_size}: medians over the rounds ==="
        )
        labels = {name: name for name in results[size][0]}
        common.print_rates(results[size], labels, reference="augmented")
    raw = common.median(results[128], lambda found: common.rate(found["raw"]))[0]
    verdict = "yes" if raw >= GPU_FEED_RATE else "NO"
    print(f"raw at 128 px reaches {GPU_FEED_RATE:,} img/s: {verdict} ({raw:,.0f})")


def main(argv=None):
    """Run the part asked for."""
    parser = common.parser(__doc__, limit=4000, rounds=3)
    parser.add_argument("part", choices=("decode", "memory"))
    parser.add_argument("--image-size", type=common.positive, default=128)
    parser.add_argument("--passes", type=common.positive, default=3)
    arguments = parser.parse_args(argv)
    common.header(f"bench_input {arguments.part}")
    if arguments.part == "decode":
        decode(arguments)
    else:
        memory(arguments)


if __name__ == "__main__":
    main()
