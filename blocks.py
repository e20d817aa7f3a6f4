"""The layers AgeCNN is built of: a residual block, batch norm on TensorFlow's fused
kernel, and the ordinal head's thresholds.

    from blocks import ResidualBlock

    block = ResidualBlock(32, strides=2, projection=True)  # halves the resolution

A saved model (.keras) holds the arguments of its AgeCNN and its weights under the
layers' names, not these classes: where they are defined changes no model file.
"""

import keras
import numpy as np
from keras import layers, ops

# The activations a residual block (and the AgeCNN built of them) may take inside.
ACTIVATIONS = {"relu": ops.relu, "silu": ops.silu, "hard_silu": ops.hard_silu}


@keras.saving.register_keras_serializable(package="age_regression")
class FusedBatchNormalization(layers.BatchNormalization):
    """Keras's batch norm, whose training pass is TensorFlow's fused kernel: one op
    forward and one backward, where Keras takes a dozen elementwise ones (the moments,
    the normalisation, their gradients, the casts around bfloat16). The same statistics
    and the same moving averages (the fused kernel's moving variance carries Bessel's
    correction, n / (n − 1) for n values per channel: 1.0017 at most in the CPU preset,
    where the last stage's maps are 3 × 3 in batches of 64).
    Inference, other backends, masks and renorm take Keras's own path."""

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable and self._fusable(inputs, mask)):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf  # only on this backend

        outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            inputs,
            scale=_float32(self.gamma if self.scale else ops.ones(inputs.shape[-1])),
            offset=_float32(self.beta if self.center else ops.zeros(inputs.shape[-1])),
            mean=_float32(self.moving_mean),
            variance=_float32(self.moving_variance),
            epsilon=self.epsilon,
            is_training=True,
            exponential_avg_factor=1.0 - self.momentum,
        )  # the new moving averages
        self.moving_mean.assign(mean)
        self.moving_variance.assign(variance)
        return ops.cast(outputs, self.compute_dtype)

    def _fusable(self, inputs, mask):
        """Whether TensorFlow's fused kernel computes this call: 4-D channels-last inputs
        of a float type it takes, no mask, no renorm, no synchronisation."""
        return (
            keras.backend.backend() == "tensorflow"
            and len(inputs.shape) == 4
            and self.axis in (-1, 3)
            and mask is None
            and not getattr(self, "renorm", False)  # not in Keras 3.13
            and not self.synchronized
            and keras.backend.standardize_dtype(inputs.dtype)
            in ("float16", "bfloat16", "float32")
        )


def _float32(variable):
    """A variable's value as a float32 tensor."""
    return ops.cast(ops.convert_to_tensor(variable), "float32")


def batch_norm(synchronized=False, fused=False, **options):
    """A batch norm layer: with `synchronized`, over the global batch of several replicas;
    else with `fused`, TensorFlow's fused kernel in training (FusedBatchNormalization).
    """
    if fused and not synchronized:
        return FusedBatchNormalization(**options)
    return layers.BatchNormalization(synchronized=synchronized, **options)


@keras.saving.register_keras_serializable(package="age_regression")
class StandardizedConv2D(layers.Conv2D):
    """A convolution whose kernel is standardized each time it is used: every output
    channel's weights moved to mean 0 and scaled to a variance of 1 / fan-in, then times
    a learned gain a channel (weight standardization, Qiao et al., 2019, as NF-ResNets use
    it without batch norm: Brock et al., ICLR 2021). Its output has the scale of its input
    whatever the kernel's scale, which batch norm gives a layer, at the cost of the
    kernel's few values instead of the feature map's."""

    def build(self, input_shape):
        super().build(input_shape)
        self.gain = self.add_weight(
            name="gain", shape=(self.filters,), initializer="ones"
        )

    def convolution_op(self, inputs, kernel):
        kernel = ops.cast(kernel, "float32")
        fan_in = kernel.shape[0] * kernel.shape[1] * kernel.shape[2]
        mean = ops.mean(kernel, axis=(0, 1, 2), keepdims=True)
        variance = ops.var(kernel, axis=(0, 1, 2), keepdims=True)
        kernel = (kernel - mean) * ops.rsqrt(variance * fan_in + 1e-4)
        kernel = ops.cast(kernel * _float32(self.gain), inputs.dtype)
        return super().convolution_op(inputs, kernel)

    # Keras's convolution saves its kernel and bias alone: every variable, as a layer does.
    def save_own_variables(self, store):
        keras.layers.Layer.save_own_variables(self, store)

    def load_own_variables(self, store):
        keras.layers.Layer.load_own_variables(self, store)


@keras.saving.register_keras_serializable(package="age_regression")
class SpaceToDepth(keras.layers.Layer):
    """Each 2 × 2 square of pixels stacked as one pixel of four times the channels (the
    rows' and columns' halves, then the channels): half the height and width, nothing
    lost. Before a 3 × 3 convolution of stride 2 it makes a stem that reads 6 × 6 pixels
    at a stride of 4, with no map at half the image's side (its height and width even).
    """

    def call(self, inputs):
        _, height, width, channels = ops.shape(inputs)
        squares = ops.reshape(inputs, (-1, height // 2, 2, width // 2, 2, channels))
        squares = ops.transpose(squares, (0, 1, 3, 2, 4, 5))
        return ops.reshape(squares, (-1, height // 2, width // 2, 4 * channels))

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        half = lambda side: None if side is None else side // 2  # noqa: E731
        return (batch, half(height), half(width), 4 * channels)


@keras.saving.register_keras_serializable(package="age_regression")
class Blur(keras.layers.Layer):
    """A fixed low-pass filter, [1, 2, 1] / 4 down the columns and along the rows, the
    edges mirrored. Put before a convolution that halves the resolution, it makes that
    convolution anti-aliased (Zhang, ICML 2019, "Making Convolutional Networks
    Shift-Invariant Again"): both are linear filters, so blurring first is convolving at
    full resolution, blurring, then keeping one pixel of four, at a quarter of the cost.
    """

    def call(self, inputs):
        padded = ops.pad(inputs, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="symmetric")
        rows = padded[:, :-2] + 2 * padded[:, 1:-1] + padded[:, 2:]
        return (rows[:, :, :-2] + 2 * rows[:, :, 1:-1] + rows[:, :, 2:]) / 16

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="age_regression")
class ResidualBlock(keras.layers.Layer):
    """Two 3×3 convolutions with batch norm and a skip connection (He et al., 2016); with
    `squeeze_excite` R, the second's channels scaled by a gate read off their means (Hu et
    al., 2018: a bottleneck of filters / R units, at least 4), before the skip joins; with
    `eca` K instead, by a gate from a 1-D convolution of width K over those means (Wang et
    al., 2020: ECA, no bottleneck, K weights). With `pooled_shortcut`, a shortcut that
    halves the resolution averages each 2×2 square before its 1×1 convolution, instead of
    reading one pixel of four (He et al., 2019, "Bag of Tricks": ResNet-D). With `blur`, a
    block that halves the resolution blurs its input first (Blur): both its strided
    convolutions are anti-aliased. Not `normalized`, it has no batch norm: its
    convolutions take biases instead, and the second starts at zero, so that the block
    starts as the identity (Zhang et al., ICLR 2019: Fixup) as the zero gamma makes it
    with batch norm; `standardized` too, its convolutions are StandardizedConv2D and the
    second's output is scaled by a learned gain that starts at zero (SkipInit, De and
    Smith, NeurIPS 2020)."""

    def __init__(
        self,
        filters,
        strides=1,
        projection=False,
        synchronized=False,
        fused_batch_norm=False,
        squeeze_excite=0,
        pooled_shortcut=False,
        eca=0,
        blur=False,
        activation="relu",
        normalized=True,
        standardized=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {tuple(ACTIVATIONS)}, got {activation!r}"
            )
        if squeeze_excite and eca:
            raise ValueError(
                "a block gates its channels by squeeze_excite or eca, not both"
            )
        self.filters = filters
        self.strides = strides
        self.projection = projection
        self.squeeze_excite = squeeze_excite
        self.pooled_shortcut = pooled_shortcut
        self.eca = eca
        self.blur = blur
        # One of ACTIVATIONS: after the first convolution and after the sum.
        self.activation = activation
        self.blur_layer = Blur(name="blur") if blur and strides > 1 else None
        # With several replicas, batch norm takes its statistics over the global batch.
        self.synchronized = synchronized
        self.fused_batch_norm = fused_batch_norm
        self.normalized = normalized
        if standardized and normalized:
            raise ValueError("standardized kernels are for a block without batch norm")
        self.standardized = standardized
        convolution = StandardizedConv2D if standardized else layers.Conv2D
        norm = lambda **options: (  # noqa: E731
            batch_norm(synchronized, fused_batch_norm, **options)
            if normalized
            else None
        )
        # Named sublayers give every variable a stable path (checkpoints are keyed by it).
        self.conv1 = convolution(
            filters,
            3,
            strides=strides,
            padding="same",
            use_bias=not normalized,
            name="conv1",
        )
        self.norm1 = norm(name="norm1")
        # Zero gamma (without batch norm, a zero kernel) makes each block start as the
        # identity, which steadies early training of residual networks (Goyal et al.,
        # 2017).
        # (A standardized kernel cannot start at zero: a gain after it does.)
        self.conv2 = convolution(
            filters,
            3,
            padding="same",
            use_bias=not normalized,
            kernel_initializer=(
                "zeros" if not normalized and not standardized else "glorot_uniform"
            ),
            name="conv2",
        )
        self.norm2 = norm(gamma_initializer="zeros", name="norm2")
        # Pooled, the shortcut's convolution reads the averages at the new resolution.
        self.shortcut_pool = (
            layers.AveragePooling2D(strides, padding="same", name="shortcut_pool")
            if projection and pooled_shortcut and strides > 1
            else None
        )
        if projection:
            # A 1×1 convolution matches the shortcut to a new width or resolution.
            self.shortcut_conv = convolution(
                filters,
                1,
                strides=1 if self.shortcut_pool else strides,
                use_bias=not normalized,
                name="shortcut_conv",
            )
            self.shortcut_norm = norm(name="shortcut_norm")
        if squeeze_excite:
            self.squeeze = layers.Dense(
                max(filters // squeeze_excite, 4), activation="relu", name="squeeze"
            )
            self.excite = layers.Dense(filters, activation="sigmoid", name="excite")
        if eca:
            self.gate = layers.Conv1D(
                1, eca, padding="same", use_bias=False, name="channel_gate"
            )
        if standardized:
            self.branch_gain = self.add_weight(
                name="branch_gain", shape=(), initializer="zeros"
            )

    def call(self, inputs, training=False):
        """Return relu(F(inputs) + shortcut(inputs)), or the block's other activation."""
        if self.blur_layer is not None:
            inputs = self.blur_layer(inputs)
        shortcut = inputs
        if self.shortcut_pool is not None:
            shortcut = self.shortcut_pool(shortcut)
        if self.projection:
            shortcut = self._norm(
                self.shortcut_norm, self.shortcut_conv(shortcut), training
            )
        features = self._activate(self._norm(self.norm1, self.conv1(inputs), training))
        features = self._norm(self.norm2, self.conv2(features), training)
        if self.standardized:
            features = features * ops.cast(self.branch_gain, features.dtype)
        if self.squeeze_excite:
            # (batch, 1, 1, filters): one gate in (0, 1) a channel, from all of them.
            means = ops.mean(features, axis=(1, 2), keepdims=True)
            features = features * self.excite(self.squeeze(means))
        if self.eca:
            # The channels' means as a sequence: each gate reads its K neighbours.
            means = ops.mean(features, axis=(1, 2))[..., None]  # (batch, filters, 1)
            gates = ops.sigmoid(self.gate(means))
            features = features * ops.reshape(gates, (-1, 1, 1, self.filters))
        return self._activate(features + shortcut)

    @staticmethod
    def _norm(norm, features, training):
        """`features` through the batch norm `norm`, or as they are for None."""
        return features if norm is None else norm(features, training=training)

    def _activate(self, features):
        return ACTIVATIONS[self.activation](features)

    def compute_output_shape(self, input_shape):
        """Return the output shape, so that model.summary() can show it."""
        batch, height, width, _ = input_shape
        # "same" padding rounds up: ceil(size / strides).
        height, width = [
            None if size is None else -(-size // self.strides)
            for size in (height, width)
        ]
        return (batch, height, width, self.filters)

    def get_config(self):
        """Return the constructor arguments."""
        return {
            **super().get_config(),
            "filters": self.filters,
            "strides": self.strides,
            "projection": self.projection,
            "synchronized": self.synchronized,
            "fused_batch_norm": self.fused_batch_norm,
            "squeeze_excite": self.squeeze_excite,
            "pooled_shortcut": self.pooled_shortcut,
            "eca": self.eca,
            "blur": self.blur,
            "activation": self.activation,
            "normalized": self.normalized,
            "standardized": self.standardized,
        }


@keras.saving.register_keras_serializable(package="age_regression")
class OrdinalThresholds(keras.layers.Layer):
    """CORAL's K−1 learned biases added to one shared score (Cao et al., 2020)."""

    def __init__(self, max_age, initial_age=None, **kwargs):
        super().__init__(**kwargs)
        self.max_age = max_age
        self.initial_age = initial_age

    def build(self, input_shape):
        """Create the biases so that the first predicted age is initial_age."""
        # Bias k is the logit of P(age > k). Making it positive below the starting age
        # and negative above it, 0.1 per year, puts the first estimate there.
        center = self.max_age / 2 if self.initial_age is None else self.initial_age
        biases = 0.1 * (center - 0.5 - np.arange(self.max_age, dtype="float32"))
        self.thresholds = self.add_weight(
            shape=(self.max_age,),
            initializer=keras.initializers.Constant(biases),
            name="thresholds",
        )

    def call(self, score):
        """Turn the score (batch, 1) into K−1 logits (batch, max_age)."""
        return score + self.thresholds

    def compute_output_shape(self, input_shape):
        """Return (batch, max_age)."""
        return (input_shape[0], self.max_age)

    def get_config(self):
        """Return the constructor arguments."""
        config = super().get_config()
        return {**config, "max_age": self.max_age, "initial_age": self.initial_age}
