"""Age-regression networks for UTKFace: course CNN, our AgeCNN, Task 1 table.

Usage:

    from model import build_model, feature_map_table, format_feature_map_table

    course = build_model("course_cnn", image_size=200, initial_age=33.3)  # built
    print(format_feature_map_table(feature_map_table(course)))  # Task 1

The sizes of `AgeCNN` (and the image size of both) are given by the caller: the presets of
`train_loop.py` hold them, and `train_loop.make_model(config)` builds a model from them.

Inputs: float RGB images (batch, image_size, image_size, 3) in whatever range the data
module produces; the models do not rescale (AgeCNN's batch norm after the stem makes it
insensitive to the scale, unless its stem has none: `unnormalized_parts`). With
`attribute_inputs=True` the input is a dict {"image": images, "gender": (batch,) 0/1,
"race": (batch,) 0..4}, -1 meaning unknown.

Output contract:
- `head="regression"` without `gender_head`: a (batch, 1) float32 tensor, the age, so
  `model.predict(images)` gives ages as in the course code (an AgeCNN of several
  `members` outputs each member's age, (batch, members), while training only).
- Any other configuration: a dict with "age" (batch, 1) float32, the age estimate,
  plus "logits" ((batch, max_age + 1) for "classification", (batch, max_age) for
  "ordinal") and
  "gender_logit" (batch, 1) when `gender_head=True`.
`losses.loss_terms(model, outputs, labels)` turns any of these into a training loss,
and `ages_from_outputs(model, outputs, method)` into ages by expected value or median.

A model may carry `age_widening`, (centre, factor below it, factor above it) (None: none),
which `train` fits on the validation faces after training (evaluation.fit_widening). The
network's outputs ignore it; the readout (readout.read_ages) maps each predicted age a to
max(0, centre + factor * (a - centre)) with the factor of a's side, so that a saved model
predicts as it was read out.

Every layer that produces an output is float32, so everything works under the
"mixed_float16" policy and a model saved there loads and predicts under "float32".
"""

from typing import NamedTuple

import keras
import numpy as np
from keras import layers, ops

from blocks import (
    ACTIVATIONS,
    Blur,
    OrdinalThresholds,
    ResidualBlock,
    SpaceToDepth,
    StandardizedConv2D,
    batch_norm,
)

HEADS = ("regression", "classification", "ordinal")
# The most networks an AgeCNN may average (its `members`).
MAX_MEMBERS = 8
# What several members share of the body, from its input: nothing, the stem, or the stem
# and the stages up to the one named; the rest of each member is its own.
MEMBERS_SHARE = ("none", "stem", "stage1", "stage2", "stage3")
OUTPUT_ACTIVATIONS = ("relu", "linear")
# What the head reads of the last stage's feature map: its mean over the positions, or every
# position's channels, the map flattened (then the network takes one image size).
POOLINGS = ("average", "flatten")
# The stem: a 3 × 3 convolution at the stem's stride, stage 1 halving the resolution again
# (conv); or each 2 × 2 square of pixels as one pixel (SpaceToDepth) before that
# convolution, stage 1 keeping the resolution (space_to_depth): the same sizes from stage 1
# on, without a feature map at half the image's side.
STEMS = ("conv", "space_to_depth")
# The gradient of the ReLU output below 0 while training (its output is max(0, z) always).
RELU_GRADIENTS = ("zero", "straight_through")


def _check_choice(name, value, choices):
    """Raise ValueError unless value is one of choices."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def _apply(layer, inputs, trace, training=False):
    """Call one layer and, when tracing, note its output and the layer in trace."""
    outputs = layer(inputs, training=training)
    _note(trace, layer.name, outputs, layer)
    return outputs


def _note(trace, name, outputs, layer=None):
    """Append (name, output shape without batch, layer) to trace unless it is None."""
    if trace is not None:
        trace.append((name, tuple(outputs.shape[1:]), layer))


@keras.saving.register_keras_serializable(package="age_regression")
def relu_straight_through(z):
    """max(0, z), whose gradient is 1 everywhere, as if it were the identity.

    A plain ReLU passes no gradient where z < 0: a face whose output is below 0 is
    predicted 0 and cannot pull its output back up. Here the L1 loss's gradient passes
    through the kink (a straight-through estimator), so every face pulls z towards its
    age, while every value the model outputs is still max(0, z)."""
    # z + (max(0, z) - z) is exactly max(0, z); the gradient flows through z alone.
    return z + ops.stop_gradient(ops.relu(z) - z)


def output_activation_function(output_activation, relu_gradient="zero"):
    """The activation of an age output: "relu", "linear", or the ReLU whose gradient
    below 0 is the identity's (relu_straight_through)."""
    _check_choice("output_activation", output_activation, OUTPUT_ACTIVATIONS)
    _check_choice("relu_gradient", relu_gradient, RELU_GRADIENTS)
    if output_activation == "relu" and relu_gradient == "straight_through":
        return relu_straight_through
    return output_activation


@keras.saving.register_keras_serializable(package="age_regression")
class CourseCNN(keras.Model):
    """The course skeleton's CNN: two strided 5×5 convolutions, three dense layers."""

    # It has a plain regression head only; the training code asks every model these.
    head = "regression"
    gender_head = False
    attribute_inputs = False

    def __init__(
        self,
        image_size,
        initial_age=None,
        output_activation="relu",
        relu_gradient="zero",
        age_widening=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        activation = output_activation_function(output_activation, relu_gradient)
        # How the readout maps the predicted ages after training (None: as they are).
        self.age_widening = _widening(age_widening)
        self.image_size = image_size
        self.initial_age = initial_age
        self.output_activation = output_activation
        self.relu_gradient = relu_gradient
        self.conv1 = layers.Conv2D(8, 5, strides=4, activation="relu", name="conv1")
        self.conv2 = layers.Conv2D(16, 5, strides=4, activation="relu", name="conv2")
        self.flatten = layers.Flatten(name="flatten")
        self.dropout = layers.Dropout(0.2, name="dropout")
        self.dense1 = layers.Dense(128, activation="relu", name="dense1")
        self.dense2 = layers.Dense(64, activation="relu", name="dense2")
        # The course code left this bias at 0. A ReLU output that starts near 0 gets no
        # gradient for every image where it is negative, so it can die before it learns;
        # starting at the mean training age (about 33) keeps it on the live side of the
        # kink, close to the best constant for the L1 loss (the median age, 29).
        self.age_layer = layers.Dense(
            1,
            activation=activation,
            bias_initializer=keras.initializers.Constant(initial_age or 0.0),
            dtype="float32",  # Ages stay float32 under mixed precision.
            name="output",
        )

    def forward(self, images, training=False, trace=None):
        """Run the network; when trace is a list, note every layer's output in it."""
        features = _apply(self.conv1, images, trace)  # (batch, 49, 49, 8)
        features = _apply(self.conv2, features, trace)  # (batch, 12, 12, 16)
        features = _apply(self.flatten, features, trace)  # (batch, 2304)
        features = _apply(self.dropout, features, trace, training)
        features = _apply(self.dense1, features, trace)  # (batch, 128)
        features = _apply(self.dense2, features, trace)  # (batch, 64)
        return _apply(self.age_layer, features, trace)  # (batch, 1)

    def call(self, inputs, training=False):
        """Predict ages (batch, 1) from images (batch, image_size, image_size, 3)."""
        return self.forward(inputs, training)

    def get_config(self):
        """Return the constructor arguments so that .keras files round-trip."""
        return _model_config(
            self,
            image_size=self.image_size,
            initial_age=self.initial_age,
            output_activation=self.output_activation,
            relu_gradient=self.relu_gradient,
        )


def _model_config(model, **arguments):
    """Merge a model's base config with its constructor arguments."""
    config = keras.Model.get_config(model)
    # Sublayers follow the policy in force when the model is rebuilt, so the model's own
    # policy must too: a mixed_float16 model reloaded on a CPU is float32 throughout.
    config.pop("dtype", None)
    return {**config, **arguments, "age_widening": model.age_widening}


def _widening(age_widening):
    """An age_widening as a model keeps it: None, or (centre, factor below it, factor above
    it) as floats. A model saved with one factor for both sides, (centre, factor), loads
    with that factor on both."""
    if age_widening is None:
        return None
    values = tuple(float(value) for value in age_widening)
    if len(values) == 2:
        values = (values[0], values[1], values[1])
    if len(values) != 3:
        raise ValueError(
            "age_widening must be (centre, factor below, factor above), got "
            f"{tuple(age_widening)}"
        )
    if min(values[1:]) <= 0:
        raise ValueError(f"age_widening's factors must be positive, got {values[1:]}")
    return values


def _check_age_cnn_arguments(
    widths, blocks_per_stage, head, max_age, output_activation,
    gender_head, attribute_inputs, distribution_head, members=1, members_share="none",
):  # fmt: skip
    """Raise ValueError for AgeCNN arguments that do not fit together."""
    if not (isinstance(members, int) and 1 <= members <= MAX_MEMBERS):
        raise ValueError(f"members must be a whole number from 1 to {MAX_MEMBERS}")
    _check_choice("members_share", members_share, MEMBERS_SHARE)
    if members_share != "none" and members == 1:
        raise ValueError("members_share needs several members to share layers")
    # MEMBERS_SHARE's index is the number of the body's parts shared, the stem first.
    if MEMBERS_SHARE.index(members_share) - 1 >= len(widths):
        raise ValueError(
            f"members_share {members_share!r} leaves the members no stage of their own "
            f"(the network has {len(widths)} stages)"
        )
    if members > 1 and (
        head != "regression" or gender_head or attribute_inputs or distribution_head
    ):
        raise ValueError(
            "several members average the regression output alone: no classification "
            "or ordinal head, gender head, attribute inputs or teacher head"
        )
    _check_choice("head", head, HEADS)
    _check_choice("output_activation", output_activation, OUTPUT_ACTIVATIONS)
    if len(widths) != len(blocks_per_stage):
        raise ValueError("widths and blocks_per_stage need one entry per stage")
    if gender_head and attribute_inputs:
        raise ValueError("gender_head would just copy the gender input")
    if (head != "regression" or distribution_head) and not max_age:
        raise ValueError(
            "the classification, ordinal and distribution heads need max_age, "
            "the oldest age they can give"
        )
    if distribution_head and head != "regression":
        raise ValueError("distribution_head teaches the regression head only")


@keras.saving.register_keras_serializable(package="age_regression")
class AgeCNN(keras.Model):
    """A residual CNN from scratch with a regression, classification or ordinal head.

    With `members` above 1, the model is that many networks of this shape (regression head
    only), each from its own random weights, and its age is the ReLU of their mean output:
    an ensemble in one model and one train step. While training each member is held to
    the ages by its own loss (the model outputs (batch, members) then), as if trained
    alone, so that their errors differ and partly cancel in the mean. With
    `members_share` they share the first layers (the stem, or the stem and the first
    stages: one pass over the largest feature maps instead of one a member), and each
    has the rest of the body and a head of its own."""

    def __init__(
        self,
        image_size,
        widths,
        blocks_per_stage,
        stem_stride,
        head_units,
        dropout,
        head="regression",
        max_age=None,
        output_activation="relu",
        initial_age=None,
        gender_head=False,
        attribute_inputs=False,
        distribution_head=False,
        relu_gradient="zero",
        synchronized_batch_norm=False,
        fused_batch_norm=False,
        members=1,
        members_share="none",
        age_widening=None,
        first_part=0,
        squeeze_excite=0,
        pooled_shortcut=False,
        pooling="average",
        stem="conv",
        eca=0,
        blur=False,
        activation="relu",
        unnormalized_parts=0,
        standardized_kernels=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        # How the readout maps the predicted ages after training (None: as they are).
        self.age_widening = _widening(age_widening)
        _check_choice("pooling", pooling, POOLINGS)
        _check_choice("stem", stem, STEMS)
        _check_choice("activation", activation, tuple(ACTIVATIONS))
        if not 0 <= unnormalized_parts <= len(widths) + 1:
            raise ValueError(
                f"unnormalized_parts must be from 0 to {len(widths) + 1} (the stem and "
                f"{len(widths)} stages), got {unnormalized_parts}"
            )
        if standardized_kernels and not unnormalized_parts:
            raise ValueError(
                "standardized_kernels are for the parts without batch norm: it needs "
                "unnormalized_parts 1 or more"
            )
        _check_age_cnn_arguments(
            widths, blocks_per_stage, head, max_age, output_activation,
            gender_head, attribute_inputs, distribution_head, members, members_share,
        )  # fmt: skip
        _check_choice("relu_gradient", relu_gradient, RELU_GRADIENTS)
        self.image_size = image_size
        self.widths = tuple(widths)
        self.blocks_per_stage = tuple(blocks_per_stage)
        self.stem_stride = stem_stride
        self.head_units = head_units
        self.dropout_rate = dropout
        self.head = head
        self.max_age = max_age
        self.output_activation = output_activation
        self.relu_gradient = relu_gradient
        # Trained on several replicas (tf.distribute), batch norm's statistics are those of
        # the global batch, as on one device.
        self.synchronized_batch_norm = synchronized_batch_norm
        # Trained on one device, TensorFlow's fused batch norm kernel (a faster step).
        self.fused_batch_norm = fused_batch_norm
        # Squeeze-and-excitation in every residual block (0: none; R: the bottleneck's
        # reduction, see ResidualBlock).
        self.squeeze_excite = squeeze_excite
        # The shortcuts that halve the resolution average first (see ResidualBlock).
        self.pooled_shortcut = pooled_shortcut
        # ECA's gates in every residual block (0: none; K: the width of their convolution).
        self.eca = eca
        # Every convolution that halves the resolution anti-aliased (see ResidualBlock).
        self.blur = blur
        # The activation of the stem, the blocks and the head's hidden layer
        # (blocks.ACTIVATIONS).
        self.activation = activation
        # What the head reads of the last feature map (POOLINGS).
        self.pooling = pooling
        # The stem's kind (STEMS).
        self.stem = stem
        # How many of the first parts (the stem, stage 1, ...) have no batch norm: their
        # convolutions take biases (see ResidualBlock), where the largest maps make batch
        # norm a large share of the step.
        self.unnormalized_parts = unnormalized_parts
        # Their convolutions' kernels standardized (blocks.StandardizedConv2D).
        self.standardized_kernels = standardized_kernels
        self.initial_age = initial_age
        self.gender_head = gender_head
        self.attribute_inputs = attribute_inputs
        self.distribution_head = distribution_head
        self.members = members
        self.members_share = members_share
        # The first part of the body this network has (0: the stem; a member whose first
        # parts the members share starts later, at their output).
        self.first_part = first_part
        if members > 1:
            self._make_members()
            return

        self.body = self._make_body(first_part)
        if attribute_inputs:
            # Index 0 is "unknown" (label -1), so missing labels get a learned vector.
            self.gender_embedding = layers.Embedding(3, 4, name="gender_embedding")
            self.race_embedding = layers.Embedding(6, 4, name="race_embedding")
        self.hidden = (
            layers.Dense(head_units, activation=activation, name="hidden")
            if head_units
            else None
        )
        self.dropout_layer = layers.Dropout(dropout, name="dropout")
        self.head_layers = self._make_head_layers()
        self._make_side_outputs()

    def _make_members(self):
        """`members` networks of this shape, each from its own random weights, whose
        outputs before the ReLU the model averages (see forward), after the parts of the
        body they share (none, or the stem and the stages members_share names)."""
        shared = MEMBERS_SHARE.index(self.members_share)
        self.shared_body = self._make_body(0, shared) if shared else []
        self.member_networks = [
            AgeCNN(
                self.image_size,
                self.widths,
                self.blocks_per_stage,
                self.stem_stride,
                self.head_units,
                self.dropout_rate,
                initial_age=self.initial_age,
                output_activation="linear",
                synchronized_batch_norm=self.synchronized_batch_norm,
                fused_batch_norm=self.fused_batch_norm,
                squeeze_excite=self.squeeze_excite,
                pooled_shortcut=self.pooled_shortcut,
                eca=self.eca,
                blur=self.blur,
                activation=self.activation,
                pooling=self.pooling,
                stem=self.stem,
                unnormalized_parts=self.unnormalized_parts,
                standardized_kernels=self.standardized_kernels,
                first_part=shared,
                name=f"member{member + 1}",
            )
            for member in range(self.members)
        ]
        self.age_activation = output_activation_function(
            self.output_activation, self.relu_gradient
        )

    def _forward_members(self, inputs, training, trace, embeddings=None):
        """The members' ages: while training, each member's own ReLU output (batch,
        members), which the loss holds each member to, so that each learns as if alone;
        otherwise the ReLU of the members' mean output (batch, 1), one age. With
        `embeddings` (a list), each member's features before its head are appended."""
        for layer in self.shared_body:
            inputs = _apply(layer, inputs, trace, training)
        outputs = []
        for index, member in enumerate(self.member_networks):
            if embeddings is not None:
                outputs.append(member.forward(inputs, training, embeddings=embeddings))
                continue
            if trace is None or index > 0:
                # Traced, each member after the first is one row: its layers are the
                # first's.
                outputs.append(_apply(member, inputs, trace, training))  # (batch, 1)
                continue
            # Traced, every layer of the first member, named "member1/stem_conv" and so on.
            member_trace = []
            outputs.append(member.forward(inputs, training, member_trace))
            trace.extend(
                (f"{member.name}/{name}", shape, layer)
                for name, shape, layer in member_trace
            )
        outputs = ops.concatenate(outputs, axis=-1)  # (batch, members), before the ReLU
        if not training:
            outputs = ops.mean(outputs, axis=-1, keepdims=True)  # (batch, 1)
            _note(trace, "mean", outputs)
        ages = keras.activations.get(self.age_activation)(outputs)
        _note(trace, "age", ages)
        return ages

    def _make_side_outputs(self):
        """The gender output and the teacher head, when asked for."""
        if self.gender_head:
            self.gender_layer = layers.Dense(1, dtype="float32", name="gender_logit")
        if self.distribution_head:
            # A teacher: a softmax over the ages 0..max_age, trained on soft labels, that
            # shapes the shared features; the age still comes from the ReLU output.
            self.distribution_layer = layers.Dense(
                self.max_age + 1, dtype="float32", name="age_distribution"
            )

    def _make_body(self, first_part=0, end_part=None):
        """The stem and the residual stages, ending in the pooling (`pooling`); with
        first_part and end_part, the parts from first_part up to before end_part alone
        (part 0 is the stem, part k stage k, the last the pooling)."""
        parts = range(len(self.widths) + 2)[first_part:end_part]
        return [layer for part in parts for layer in self._make_part(part)]

    def _make_part(self, part):
        """The layers of one part of the body: 0 the stem, k stage k, the last the
        pooling."""
        if part == 0:
            # Plain convolutions only: depthwise ones are slow in TensorFlow on a CPU.
            # With blur, a stem that halves the resolution blurs the image first.
            blurs = self.blur and self.stem_stride > 1
            squares = self.stem == "space_to_depth"
            normalized = self.unnormalized_parts == 0
            convolution = (
                StandardizedConv2D if self.standardized_kernels else layers.Conv2D
            )
            stem = [Blur(name="stem_blur")] if blurs else []
            stem += [SpaceToDepth(name="stem_squares")] if squares else []
            stem.append(
                convolution(
                    self.widths[0],
                    3,
                    strides=self.stem_stride,
                    padding="same",
                    use_bias=not normalized,
                    name="stem_conv",
                )
            )
            if normalized:
                stem.append(
                    batch_norm(
                        self.synchronized_batch_norm,
                        self.fused_batch_norm,
                        name="stem_norm",
                    )
                )
            stem.append(
                layers.ReLU(name="stem_relu")
                if self.activation == "relu"
                else layers.Activation(self.activation, name="stem_activation")
            )
            return stem
        if part > len(self.widths):
            if self.pooling == "flatten":
                # Every position's channels: the head can tell the eyes' corner from
                # the chin's, which the mean over the positions mixes.
                return [layers.Flatten(name="pool")]
            return [layers.GlobalAveragePooling2D(name="pool")]
        # Each stage halves the resolution in its first block, but stage 1 after a stem
        # of squares (which halved it already, and gives stage 1 its channels).
        halves = part > 1 or self.stem == "conv"
        return [
            ResidualBlock(
                self.widths[part - 1],
                strides=2 if block == 0 and halves else 1,
                projection=block == 0 and halves,
                synchronized=self.synchronized_batch_norm,
                fused_batch_norm=self.fused_batch_norm,
                squeeze_excite=self.squeeze_excite,
                pooled_shortcut=self.pooled_shortcut,
                eca=self.eca,
                blur=self.blur,
                activation=self.activation,
                normalized=part >= self.unnormalized_parts,
                standardized=part < self.unnormalized_parts
                and self.standardized_kernels,
                name=f"stage{part}_block{block + 1}",
            )
            for block in range(self.blocks_per_stage[part - 1])
        ]

    def _make_head_layers(self):
        """Create the float32 output layers of the chosen head."""
        if self.head == "regression":
            # Start at the mean age, for the reason given in CourseCNN.
            start = keras.initializers.Constant(self.initial_age or 0.0)
            activation = output_activation_function(
                self.output_activation, self.relu_gradient
            )
            return [
                layers.Dense(
                    1,
                    activation=activation,
                    bias_initializer=start,
                    dtype="float32",
                    name="age",
                )
            ]
        if self.head == "classification":
            # A Gaussian log-prior around initial_age makes the first expected age
            # about initial_age, as with the other heads.
            ages = np.arange(self.max_age + 1, dtype="float32")
            center = self.max_age / 2 if self.initial_age is None else self.initial_age
            prior = -0.5 * ((ages - center) / 15.0) ** 2  # A 15-year spread.
            return [
                layers.Dense(
                    self.max_age + 1,
                    bias_initializer=keras.initializers.Constant(prior),
                    dtype="float32",
                    name="age_logits",
                )
            ]
        # CORAL shares one weight vector across thresholds, so they cannot cross.
        return [
            layers.Dense(1, use_bias=False, dtype="float32", name="age_score"),
            OrdinalThresholds(
                self.max_age, self.initial_age, dtype="float32", name="age_thresholds"
            ),
        ]

    def forward(self, inputs, training=False, trace=None, embeddings=None):
        """Run the network; when trace is a list, note every stage's output in it; when
        embeddings is a list, append the features the head reads, (batch, units) before
        the dropout, one tensor a member (what a loss on the features, such as
        losses.rank_similarity, takes)."""
        if self.members > 1:
            return self._forward_members(inputs, training, trace, embeddings)
        images = inputs["image"] if self.attribute_inputs else inputs
        features = images  # (batch, size, size, 3)
        for layer in self.body:
            # The stem divides the size by stem_stride and every stage by 2.
            features = _apply(layer, features, trace, training)
        # features: (batch, widths[-1]) after global average pooling, (batch, side *
        # side * widths[-1]) flattened.
        if self.attribute_inputs:
            gender = ops.cast(ops.reshape(inputs["gender"], (-1,)), "int32") + 1
            race = ops.cast(ops.reshape(inputs["race"], (-1,)), "int32") + 1
            gender = _apply(self.gender_embedding, gender, trace)  # (batch, 4)
            race = _apply(self.race_embedding, race, trace)  # (batch, 4)
            features = ops.concatenate([features, gender, race], axis=-1)
            _note(trace, "with_attributes", features)  # (batch, widths[-1] + 8)
        if self.hidden is not None:
            features = _apply(self.hidden, features, trace)  # (batch, head_units)
        if embeddings is not None:
            embeddings.append(features)
        features = _apply(self.dropout_layer, features, trace, training)

        head_outputs = features
        for layer in self.head_layers:
            head_outputs = _apply(layer, head_outputs, trace)
        if self.head == "regression":
            outputs = {"age": head_outputs}  # (batch, 1)
        else:
            # head_outputs: (batch, max_age + 1) or (batch, max_age) float32 logits.
            ages = ages_from_outputs(self.head, head_outputs)  # (batch, 1)
            _note(trace, "age", ages)
            outputs = {"age": ages, "logits": head_outputs}
        if self.gender_head:
            outputs["gender_logit"] = _apply(self.gender_layer, features, trace)
        if self.distribution_head:
            # (batch, max_age + 1); only training needs the teacher's logits, but the
            # layer runs always, so that it is built with the model.
            logits = _apply(self.distribution_layer, features, trace)
            if training:
                outputs["distribution_logits"] = logits
        if len(outputs) == 1:
            return outputs["age"]  # Plain regression: a (batch, 1) tensor.
        return outputs

    def call(self, inputs, training=False):
        """Return ages (batch, 1), or a dict with "age" (see the module docstring)."""
        return self.forward(inputs, training)

    def first_member_ages(self, inputs):
        """Ages (batch, 1) in inference mode from the first member alone, at a member's
        cost: a cheap look at which faces the model gets most wrong. Several members
        come with the regression head on images alone (see _members_for_the_outputs)."""
        for layer in self.shared_body:
            inputs = layer(inputs, training=False)
        outputs = self.member_networks[0](inputs, training=False)  # before the ReLU
        return keras.activations.get(self.age_activation)(outputs)

    def get_config(self):
        """Return the constructor arguments so that .keras files round-trip."""
        return _model_config(
            self,
            image_size=self.image_size,
            widths=self.widths,
            blocks_per_stage=self.blocks_per_stage,
            stem_stride=self.stem_stride,
            head_units=self.head_units,
            dropout=self.dropout_rate,
            head=self.head,
            max_age=self.max_age,
            output_activation=self.output_activation,
            initial_age=self.initial_age,
            gender_head=self.gender_head,
            attribute_inputs=self.attribute_inputs,
            distribution_head=self.distribution_head,
            relu_gradient=self.relu_gradient,
            synchronized_batch_norm=self.synchronized_batch_norm,
            fused_batch_norm=self.fused_batch_norm,
            members=self.members,
            members_share=self.members_share,
            first_part=self.first_part,
            squeeze_excite=self.squeeze_excite,
            pooled_shortcut=self.pooled_shortcut,
            pooling=self.pooling,
            stem=self.stem,
            eca=self.eca,
            blur=self.blur,
            activation=self.activation,
            unnormalized_parts=self.unnormalized_parts,
            standardized_kernels=self.standardized_kernels,
        )


def model_inputs(model, images, labels=None):
    """The inputs `model` takes for a batch of images: the images, or with attribute inputs
    a dict that adds the labels' gender and race (-1, "unknown", when labels is None).
    """
    if not getattr(model, "attribute_inputs", False):
        return images
    if labels is None:
        # -1 is "unknown", as for a new photo whose gender and race nobody gave.
        unknown = -ops.ones(ops.shape(images)[:1], dtype="int32")
        return {"image": images, "gender": unknown, "race": unknown}
    return {"image": images, "gender": labels["gender"], "race": labels["race"]}


def model_head(model):
    """The head of a model: "regression", "classification" or "ordinal" (any Keras model
    that outputs ages (batch, 1) is a regression model here)."""
    return getattr(model, "head", "regression")


def age_labels(labels):
    """The ages (batch, 1) of a batch's labels, whether a dict with gender and race or not."""
    return labels["age"] if isinstance(labels, dict) else labels


def example_inputs(model, batch_size=1, input_shape=None):
    """Return zero inputs of the structure the model expects."""
    input_shape = input_shape or (model.image_size, model.image_size, 3)
    return model_inputs(model, ops.zeros((batch_size, *input_shape)))


def build_model(arch, **kwargs):
    """Create a built "course_cnn" or "age_cnn" from its constructor arguments."""
    classes = {"course_cnn": CourseCNN, "age_cnn": AgeCNN}
    _check_choice("arch", arch, tuple(classes))
    model = classes[arch](**kwargs)
    # Subclassed models create their weights on the first call.
    model(example_inputs(model))
    return model


def ages_from_outputs(head, outputs, method="mean"):
    """Turn model outputs (or logits) into ages (batch, 1): expected value or median."""
    head = getattr(head, "head", head)
    _check_choice("head", head, HEADS)
    _check_choice("method", method, ("mean", "median"))
    if isinstance(outputs, dict):
        if head == "regression":
            return outputs["age"]
        outputs = outputs["logits"]
    if head == "regression":
        return outputs
    logits = ops.cast(outputs, "float32")
    if head == "classification":
        probabilities = ops.softmax(logits, axis=-1)  # (batch, max_age + 1)
        if method == "mean":
            ages = ops.arange(ops.shape(logits)[-1], dtype="float32")
            return ops.sum(probabilities * ages, axis=-1, keepdims=True)
        # The median is the first age whose cumulative probability reaches 1/2.
        below_half = ops.cumsum(probabilities, axis=-1) < 0.5
        return ops.sum(ops.cast(below_half, "float32"), axis=-1, keepdims=True)
    # Ordinal: sigmoid(logit k) is P(age > k), so E[age] = sum over k of P(age > k),
    # and the median is the number of thresholds with P(age > k) > 1/2.
    exceed = ops.sigmoid(logits)  # (batch, max_age)
    if method == "median":
        exceed = ops.cast(exceed > 0.5, "float32")
    return ops.sum(exceed, axis=-1, keepdims=True)


def age_quantiles(logits, quantiles):
    """The quantiles of a classification head's age distributions: for each q, the first
    age whose cumulative probability reaches q (the median's rule), (batch, len(quantiles))
    float32 from logits (batch, max_age + 1)."""
    cumulative = ops.cumsum(ops.softmax(ops.cast(logits, "float32"), axis=-1), axis=-1)
    levels = ops.reshape(ops.convert_to_tensor(quantiles, "float32"), (1, -1, 1))
    return ops.sum(ops.cast(cumulative[:, None, :] < levels, "float32"), axis=-1)


class FeatureMap(NamedTuple):
    """One row of the Task 1 table: a layer, its output shape, its parameter count."""

    name: str
    shape: tuple
    parameters: int


def _trace(model, input_shape=None):
    """Run zero inputs through the model and return [(name, shape, layer or None)]."""
    inputs = example_inputs(model, input_shape=input_shape)
    images = inputs["image"] if isinstance(inputs, dict) else inputs
    trace = [("input", tuple(images.shape[1:]), None)]
    model.forward(inputs, training=False, trace=trace)
    return trace


def feature_map_table(model, input_shape=None):
    """List FeatureMap rows for the input and every layer's output, up to the age."""
    return [
        FeatureMap(name, shape, layer.count_params() if layer else 0)
        for name, shape, layer in _trace(model, input_shape)
    ]


def format_feature_map_table(rows):
    """Format feature-map rows as a Markdown table with a total parameter count."""
    lines = ["| layer | output shape | parameters |", "|---|---|---:|"]
    for name, shape, parameters in rows:
        lines.append(f"| {name} | {' × '.join(map(str, shape))} | {parameters:,} |")
    total = sum(row.parameters for row in rows)
    lines.append(f"| **total** | | **{total:,}** |")
    return "\n".join(lines)


def forward_flops(model, input_shape=None):
    """Count forward FLOPs per image of conv and dense layers (a multiply-add is 2)."""
    flops = 0
    # The members' input: the image, or the output of the layers they share (the last
    # row before the first member's own, "member1/...").
    members_input = None
    for name, shape, layer in _trace(model, input_shape):
        if isinstance(layer, AgeCNN):  # A member of an AgeCNN, as one row: its layers.
            flops += forward_flops(layer, members_input)
            continue
        if not name.startswith("member"):
            members_input = shape
        for weight in layer.trainable_weights if layer else []:
            if weight.name != "kernel":
                continue
            # Every convolution in a traced stage (including those inside a residual
            # block) produces that stage's output resolution.
            positions = shape[0] * shape[1] if len(weight.shape) == 4 else 1
            flops += 2 * int(np.prod(weight.shape)) * positions
    return flops
