"""How close does our train step come to the machine's peak? The FLOP/s of a large matrix
product against those of the CPU preset's train step, in float32 and in bfloat16.

    python bench/bench_roofline.py --rounds 5 --figure figures/roofline.png
    python bench/bench_roofline.py --rounds 1 --steps 3 --repeats 3 --limit 256

In one process, four contenders alternate over --rounds rounds:

1. matmul_float32: `tf.matmul` of two --size x --size float32 matrices, the median of
   --repeats calls after two untimed; a call is 2 x size^3 FLOPs (a multiply-add is 2).
   Large matrix products are the densest work a processor does, near its peak: the limit
   a train step can hope to approach.
2. matmul_bfloat16: the same on bfloat16 tensors (oneDNN's AMX or AVX512-BF16 kernels
   where the processor has them; elsewhere bfloat16 is emulated, and slow).
3. step_float32: `Trainer.train_step` of the CPU preset's model as `train` builds and
   trains it (96 px, batch 64, AdamW, the average of the weights; `--settings` changes
   them), on an epoch of --limit training faces augmented beforehand and held in memory,
   so that no input pipeline is timed (bench_input.py times it); --steps steps after one.
4. step_bfloat16: the same under Keras's "mixed_bfloat16" policy (bfloat16 compute,
   float32 weights).

A train step's FLOPs are 3 forward passes (`model.forward_flops`): the backward pass computes
the gradients of both the inputs and the weights of every layer, each about as many
multiply-adds as the forward pass. Only convolutions and dense layers count (not batch
norm, the activations, the loss or the optimizer): this is the useful work, and its ratio
to the matmul's FLOP/s of the same type says how far the step is from what the processor
can do. `--figure PATH` draws the GFLOP/s as bars.
"""

import os

import common  # first: the repository's path and TensorFlow's environment

import numpy as np
import tensorflow as tf

import devices

DTYPES = {"float32": "float32", "bfloat16": "mixed_bfloat16"}  # and their Keras policy
CONTENDERS = [f"{kind}_{dtype}" for kind in ("matmul", "step") for dtype in DTYPES]


def gigaflops(timing):
    """The GFLOP/s of a timed run."""
    return timing.flops / timing.wall / 1e9


class MatmulContender:
    """`tf.matmul` of two random square matrices of one dtype, timed call by call."""

    def __init__(self, size, dtype, repeats):
        generator = tf.random.Generator.from_seed(0)
        self.left, self.right = (
            tf.cast(generator.normal((size, size)), dtype) for _ in range(2)
        )
        self.flops, self.repeats = 2 * size**3, repeats

    def run(self):
        """The Timing of the median of `repeats` calls, after two untimed."""
        timings = []
        for _ in range(2 + self.repeats):
            start = common.clocks()
            # Eager execution is synchronous by default: the product is complete when the
            # call returns.
            tf.matmul(self.left, self.right)
            timings.append(common.since(start, 0)._replace(flops=self.flops))
        return sorted(timings[2:])[self.repeats // 2]


def make_contenders(arguments):
    """The four contenders, warmed up (tracing untimed)."""
    decoded_at = common.faces_decoder(arguments)
    contenders = {}
    for dtype, policy in DTYPES.items():
        contenders[f"matmul_{dtype}"] = MatmulContender(
            arguments.size, dtype, arguments.repeats
        )
    for dtype, policy in DTYPES.items():
        config = common.config_of(f"preset=cpu precision={policy} {arguments.settings}")
        step = common.StepContender(
            config, decoded_at(config.image_size), arguments.steps, "prepared"
        )
        step.run(arguments.warmup_steps)
        print(
            f"step_{dtype}: {config.precision}, {config.image_size} px, batch "
            f"{config.batch_size}, jit_compile {config.jit_compile}, EMA {config.ema}; "
            f"{step.flops / common.PASSES_PER_STEP / 1e6:.1f} forward MFLOPs an image"
        )
        contenders[f"step_{dtype}"] = step
    for contender in contenders.values():
        contender.run()
    return contenders


def summarize(results):
    """The medians the summary prints and the figure draws, by name."""
    median = lambda value: common.median(results, value)[0]  # noqa: E731
    summary = {}
    for name in CONTENDERS:
        summary[f"{name} GFLOP/s"] = median(lambda found: gigaflops(found[name]))
    for dtype in DTYPES:
        step, matmul = f"step_{dtype}", f"matmul_{dtype}"
        summary[f"{step} img/s"] = median(lambda found: common.rate(found[step]))
        summary[f"step/matmul {dtype}"] = median(
            lambda found: gigaflops(found[step]) / gigaflops(found[matmul])
        )
    for kind in ("matmul", "step"):
        summary[f"{kind} bfloat16/float32"] = median(
            lambda found: gigaflops(found[f"{kind}_bfloat16"])
            / gigaflops(found[f"{kind}_float32"])
        )
    return summary


def print_summary(summary, rounds):
    """GFLOP/s, images/s, the step's share of the matmul and bfloat16's speed-ups."""
    print(f"\n=== summary: medians over {rounds} rounds ===")
    flags = ", ".join(devices.cpu_flags()) or "none listed"
    print(f"processor: {devices.cpu_name()}; flags: {flags}")
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
    axes.set_xticks(positions, list(DTYPES))
    axes.set_ylabel("GFLOP/s")
    axes.set_title(f"{devices.cpu_name()}, {os.cpu_count()} cores", fontsize=10)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    print(f"saved {path}")


def main(argv=None):
    """Run the rounds, print each and the summary; save the figure when asked."""
    parser = common.parser(__doc__, limit=1024, rounds=5)
    parser.add_argument("--size", type=common.positive, default=2048, help="matrices")
    parser.add_argument("--repeats", type=common.positive, default=10)
    parser.add_argument("--steps", type=common.positive, default=20)
    parser.add_argument("--warmup-steps", type=common.positive, default=3)
    parser.add_argument("--settings", default="", help="the steps' name=value ...")
    parser.add_argument("--figure", help="save a bar figure of the GFLOP/s here")
    arguments = parser.parse_args(argv)
    common.header("bench_roofline")
    contenders = make_contenders(arguments)
    results = common.timed_rounds(
        contenders, arguments.rounds, show=gigaflops, unit="GFLOP/s"
    )
    summary = summarize(results)
    print_summary(summary, arguments.rounds)
    if arguments.figure:
        save_figure(summary, arguments.figure, arguments.size)


if __name__ == "__main__":
    main()
