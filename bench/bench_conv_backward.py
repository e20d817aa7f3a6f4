"""Could a convolution's kernel gradient cost less than TensorFlow's? The CPU preset's
convolutions of one member (its stem's, then each stage's stride-2 3×3 convolution and its
3×3 one), three ways, each over every layer of the member in one step:

- forward: the convolutions themselves, for scale;
- tensorflow: their kernels' gradients by TensorFlow's op (Conv2DBackpropFilter, oneDNN's
  kernel on a CPU), as the tape takes them in training;
- patches: the same gradients as one matrix product a layer, the input's k×k patches
  (`tf.image.extract_patches`, "im2col") times the output's gradient.

    python bench/bench_conv_backward.py --rounds 3
    python bench/bench_conv_backward.py --rounds 3 --precision float32

In the profile of a train step (bench_profile.py) the kernels' gradients take more time
than the convolutions forward and the inputs' gradients together, on a matrix product's
arithmetic. The inputs and the outputs' gradients are random, --batch of them; the 1×1
shortcuts, batch norm and the heads are left out. A test holds the two gradients to each
other. It prints the milliseconds of a step of each, the median over the rounds, and the
ratios within rounds.
"""

import common  # first: the repository's path and TensorFlow's environment

import tensorflow as tf

from config import PRESETS


def member_layers(image_size, widths, stem_stride):
    """A member's convolutions, [(input side, input channels, output channels, kernel
    side, stride)]: the stem, then each stage's two 3×3 convolutions."""
    layers = [(image_size, 3, widths[0], 3, stem_stride)]
    side, depth = -(-image_size // stem_stride), widths[0]
    for width in widths:
        layers.append((side, depth, width, 3, 2))
        side = -(-side // 2)
        layers.append((side, width, width, 3, 1))
        depth = width
    return layers


def kernel_gradient_by_patches(inputs, output_gradient, kernel_side, stride):
    """The gradient of a "SAME" convolution's kernel (kernel_side, kernel_side, input
    channels, output channels), from its inputs and its output's gradient, as one matrix
    product of the inputs' patches and the output's gradient."""
    depth, width = inputs.shape[-1], output_gradient.shape[-1]
    patches = tf.image.extract_patches(
        inputs,
        [1, kernel_side, kernel_side, 1],
        [1, stride, stride, 1],
        [1, 1, 1, 1],
        "SAME",
    )
    patches = tf.reshape(patches, (-1, kernel_side * kernel_side * depth))
    product = tf.matmul(
        patches, tf.reshape(output_gradient, (-1, width)), transpose_a=True
    )
    return tf.reshape(product, (kernel_side, kernel_side, depth, width))


def kernel_gradient_by_tensorflow(inputs, output_gradient, kernel_side, stride):
    """The same gradient by TensorFlow's own op."""
    depth, width = inputs.shape[-1], output_gradient.shape[-1]
    return tf.raw_ops.Conv2DBackpropFilter(
        input=inputs,
        filter_sizes=(kernel_side, kernel_side, depth, width),
        out_backprop=output_gradient,
        strides=(1, stride, stride, 1),
        padding="SAME",
    )


def layer_tensors(layers, batch, dtype, seed):
    """For each layer: random inputs, kernel and output gradient of its shapes."""
    found = []
    for number, (side, depth, width, kernel_side, stride) in enumerate(layers):
        out = -(-side // stride)
        shapes = (
            (batch, side, side, depth),
            (kernel_side, kernel_side, depth, width),
            (batch, out, out, width),
        )
        found.append(
            [
                tf.cast(
                    tf.random.stateless_normal(shape, (seed, 3 * number + i)), dtype
                )
                for i, shape in enumerate(shapes)
            ]
        )
    return found


class Contender:
    """One way of the three over every layer of a member, timed over --steps steps."""

    def __init__(self, way, layers, tensors, arguments):
        self.way, self.layers, self.tensors = way, layers, tensors
        self.steps, self.batch = arguments.steps, arguments.batch
        self.step = tf.function(self._step)
        self.step()  # traced and warmed up, untimed

    def _step(self):
        found = []
        for (_, _, _, side, stride), (inputs, kernel, gradient) in zip(
            self.layers, self.tensors
        ):
            if self.way == "forward":
                found.append(tf.nn.conv2d(inputs, kernel, stride, "SAME"))
            elif self.way == "tensorflow":
                found.append(
                    kernel_gradient_by_tensorflow(inputs, gradient, side, stride)
                )
            else:
                found.append(kernel_gradient_by_patches(inputs, gradient, side, stride))
        return found

    def run(self):
        return common.timed_steps(self.step, self.steps, self.steps * self.batch)


def main(argv=None):
    """Time the three ways in rotating rounds and print their medians and ratios."""
    parser = common.step_parser(__doc__)
    arguments = parser.parse_args(argv)
    common.header("bench_conv_backward")
    preset, network = PRESETS["cpu"], PRESETS["cpu"]["network"]
    layers = member_layers(
        preset["image_size"], network["widths"], network["stem_stride"]
    )
    dtype = tf.as_dtype(arguments.precision)  # bfloat16 or float32
    print(f"{arguments.precision}, {len(layers)} convolutions, batch {arguments.batch}")
    tensors = layer_tensors(layers, arguments.batch, dtype, arguments.seed)
    contenders = {
        way: Contender(way, layers, tensors, arguments)
        for way in ("forward", "tensorflow", "patches")
    }
    results = common.step_medians(
        contenders, arguments.rounds, arguments.steps, digits=2
    )
    for later, earlier in (("tensorflow", "forward"), ("patches", "tensorflow")):
        ratio = common.median_ratio(results, earlier, later)
        print(f"{later} against {earlier}: {ratio:.2f}x the time")


if __name__ == "__main__":
    main()
