"""Could the CPU preset's members run as one grouped convolution? The members' 3×3
convolutions, each member's own, against all members' at once as one convolution of
`groups=members`, forward and backward.

    python bench/bench_grouped.py --rounds 3
    python bench/bench_grouped.py --rounds 3 --precision float32 --jit-compile

The preset trains `members` networks of the same shape side by side (model.AgeCNN); on a
CPU their small convolutions use the cores less well than one large one would. A grouped
convolution (`tf.nn.conv2d` with a kernel of input depth channels / groups) does every
member's convolution of a layer in one op. Each contender is the convolutions of the
preset's stages (after its stem: a stride-2 3×3 convolution into each stage's width and a
3×3 one at that width, with a ReLU after each, then the global mean), on --batch random
feature maps, its gradient taken of every kernel: "separate" runs each member's stack
alone, "grouped" one stack whose every convolution holds all members' kernels side by
side. Batch norm, the stem, the shortcuts and the heads are left out: they are the same
either way. The two compute the same features from the same kernels (a test holds them
to it); only the ops differ. It prints the milliseconds of a step of each, the median over
the rounds, and the ratio within rounds.
"""

import common  # first: the repository's path and TensorFlow's environment

import tensorflow as tf

from config import PRESETS


def member_stacks(widths, members, seed):
    """Each member's kernels of the stages, [(kernel, stride)] a member."""
    generator = tf.random.Generator.from_seed(seed)
    found = []
    for _ in range(members):
        kernels, depth = [], widths[0]
        for width in widths:
            for stride, inputs in ((2, depth), (1, width)):
                kernel = generator.normal((3, 3, inputs, width)) * 0.1
                kernels.append((tf.Variable(kernel), stride))
            depth = width
        found.append(kernels)
    return found


def grouped_stack(stacks):
    """One stack of the members' kernels side by side: each convolution's output channels
    are the members' in turn, which is what a grouped convolution gives each group."""
    return [
        (tf.Variable(tf.concat([stack[i][0] for stack in stacks], -1)), stride)
        for i, (_, stride) in enumerate(stacks[0])
    ]


def features(inputs, stacks, dtype=tf.float32):
    """The members' pooled features (batch, members × last width) of inputs (batch,
    size, size, members × first width): with one member's stack each on its own channels,
    or one grouped stack on all of them (a list of one)."""
    depth = inputs.shape[-1] // len(stacks)  # the input channels of a stack
    outputs = []
    for member, stack in enumerate(stacks):
        found = inputs[..., member * depth : (member + 1) * depth]
        for kernel, stride in stack:
            found = tf.nn.conv2d(found, tf.cast(kernel, dtype), stride, "SAME")
            found = tf.nn.relu(found)
        outputs.append(tf.reduce_mean(tf.cast(found, tf.float32), axis=(1, 2)))
    return tf.concat(outputs, axis=-1)


class Contender:
    """A train step's convolutions, each member's apart or grouped, timed over --steps."""

    def __init__(self, arguments, stacks, inputs):
        self.dtype = tf.as_dtype(arguments.precision)  # bfloat16 or float32
        self.steps, self.batch, self.stacks = arguments.steps, arguments.batch, stacks
        self.inputs = tf.cast(inputs, self.dtype)
        self.step = tf.function(self._step, jit_compile=arguments.jit_compile)
        self.step()  # traced and warmed up, untimed

    def _step(self):
        kernels = [kernel for stack in self.stacks for kernel, _ in stack]
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(features(self.inputs, self.stacks, self.dtype))
        return tape.gradient(loss, kernels)

    def run(self):
        return common.timed_steps(self.step, self.steps, self.steps * self.batch)


def main(argv=None):
    """Time both contenders in rotating rounds and print their medians and ratio."""
    parser = common.step_parser(__doc__)
    parser.add_argument(
        "--jit-compile", action="store_true", help="compile each step with XLA"
    )
    arguments = parser.parse_args(argv)
    common.header("bench_grouped")
    print(f"{arguments.precision}, XLA {'on' if arguments.jit_compile else 'off'}")
    preset, network = PRESETS["cpu"], PRESETS["cpu"]["network"]
    widths, members = network["widths"], preset["members"]
    size = preset["image_size"] // network["stem_stride"]  # after the stem
    stacks = member_stacks(widths, members, arguments.seed)
    inputs = tf.random.stateless_normal(
        (arguments.batch, size, size, widths[0] * members), (arguments.seed, 1)
    )
    contenders = {
        "separate": Contender(arguments, stacks, inputs),
        "grouped": Contender(arguments, [grouped_stack(stacks)], inputs),
    }
    results = common.step_medians(contenders, arguments.rounds, arguments.steps)
    ratio = common.median_ratio(results, "grouped", "separate")
    print(f"grouped against separate: {ratio:.2f}x the images a second")


if __name__ == "__main__":
    main()
