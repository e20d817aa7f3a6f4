"""The settings of a training run: `TrainConfig`, the presets, the course's settings, and
their checks (the command-line flags made from the dataclass: flags.py).

    config = resolve_config(TrainConfig(preset="cpu", out="runs/default"))
    config.image_size, config.epochs        # 96, 68: filled from the preset

A field left `None` is taken from the preset (or, for the course network, the course's
settings); every flag is checked when it is parsed, so a bad value names its flag.
"""

import dataclasses
import json
from dataclasses import dataclass, field
from typing import NamedTuple, Optional

import augmentation
import devices
import utk_data
from blocks import ACTIVATIONS
from losses import LOSSES
from model import HEADS, MEMBERS_SHARE, OUTPUT_ACTIVATIONS
from schedules import SCHEDULES

# The compute types of `--precision`: "auto" chooses one of the others for the machine.
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")


# Settings a run may be resumed with other values of: where things are, and how the
# training is spread over devices (the checkpoint holds no device).
WHERE = ("data", "out", "strategy")
# How a run is read out, after training and on its way (the trained weights' validations
# beside their average's, which change no weight): a resumed or finished run takes them
# from the command, so that a finished run can be read out again with others.
READOUT = ("tta", "widen", "validate_trained_every")


def _option(default, help_text, choices=None, bounds=None, parse=None, absent=()):
    """A TrainConfig field: its default, its help, and the values it admits (`choices`,
    `bounds`, a Bounds of a number, or `parse`, which raises ValueError for a text it
    does not admit).

    `absent`: the values with which the setting does what the versions before it did, so
    that a run saved by such a version, without the setting, is resumed with one of them
    (with none, such a run is refused), and a run folder named after its settings keeps
    its name when the setting is added (run_name)."""
    metadata = {
        "help": help_text,
        "choices": choices,
        "bounds": bounds,
        "parse": parse,
        "absent": absent,
    }
    return field(default=default, metadata=metadata)


class Bounds(NamedTuple):
    """The range of a number: from `low` to `high` (None: no end), each end included or
    not."""

    low: Optional[float] = None
    high: Optional[float] = None
    low_included: bool = True
    high_included: bool = True

    def problem(self, value):
        """What is wrong with `value` ("must be at least 1"), or None when it is in range."""
        too_low = self.low is not None and (
            value < self.low or (value == self.low and not self.low_included)
        )
        too_high = self.high is not None and (
            value > self.high or (value == self.high and not self.high_included)
        )
        if not (too_low or too_high or value != value):  # value != value: NaN
            return None
        if self.high is None:
            return (
                f"must be {'at least' if self.low_included else 'above'} {self.low:g}"
            )
        opening = "[" if self.low_included else "("
        closing = "]" if self.high_included else ")"
        return f"must lie in {opening}{self.low:g}, {self.high:g}{closing}"


# The stages of the network (age_cnn): each preset gives four widths and four block counts.
STAGES = 4


def blocks_per_stage(text):
    """The residual blocks of each stage from --blocks ("1,1,2,2" gives (1, 1, 2, 2));
    ValueError for anything but four whole numbers from 1 to 8."""
    parts = [part.strip() for part in str(text).split(",")]
    if len(parts) != STAGES or not all(
        p.isascii() and p.isdigit() and 1 <= int(p) <= 8 for p in parts
    ):
        raise ValueError(
            f"must be {STAGES} whole numbers from 1 to 8 separated by commas, "
            f"one for each stage (e.g. 1,1,2,2), got {text!r}"
        )
    return tuple(int(part) for part in parts)


# The ranges of the numeric settings.
AT_LEAST_ONE = Bounds(1)
POSITIVE = Bounds(0, low_included=False)
NOT_NEGATIVE = Bounds(0)


@dataclass
class TrainConfig:
    """Every training setting; `None` means "take it from the preset"."""

    # Where the data is and how much of it to use.
    data: Optional[str] = _option(
        None, "folder, archive or URL of UTKFace (see README)"
    )
    limit: Optional[int] = _option(
        None, "use only this many training images (quick runs)", bounds=AT_LEAST_ONE
    )
    # The model.
    preset: Optional[str] = _option(
        None, "cpu or gpu; default: gpu when one is present", ("cpu", "gpu")
    )
    arch: Optional[str] = _option(
        None,
        "network; course_cnn comes with the course's settings (200 px, RMSprop 1e-3, "
        "batch 64, 20 epochs, no augmentation), which other flags override",
        ("course_cnn", "age_cnn"),
    )
    width: Optional[float] = _option(
        None,
        "the network's channels times this, in every stage, rounded to a multiple of 16 "
        "(1: the preset's; 1.25: a wider, slower network)",
        bounds=Bounds(0.25, 4),
    )
    blocks: Optional[str] = _option(
        None,
        "residual blocks in each of the network's four stages, e.g. 1,1,2,2",
        parse=blocks_per_stage,
    )
    squeeze_excite: Optional[int] = _option(
        None,
        "squeeze-and-excitation in every residual block (Hu et al., 2018): the block's "
        "channels scaled by gates read off their means through a bottleneck of "
        "channels / R units; R, or 0 for none",
        bounds=Bounds(0, 64),
        absent=(0, None),
    )
    pooled_shortcut: Optional[bool] = _option(
        None,
        "a shortcut that halves the resolution averages each 2x2 square before its 1x1 "
        "convolution, instead of reading one pixel of four (ResNet-D, He et al., 2019)",
        absent=(False, None),
    )
    eca: Optional[int] = _option(
        None,
        "efficient channel attention in every residual block (Wang et al., 2020): its "
        "channels scaled by gates from a 1-D convolution of width K over their means; "
        "K, or 0 for none",
        bounds=Bounds(0, 15),
        absent=(0, None),
    )
    blur: Optional[bool] = _option(
        None,
        "anti-aliased downsampling (Zhang, 2019): a [1, 2, 1] blur before every "
        "convolution that halves the resolution",
        absent=(False, None),
    )
    activation: Optional[str] = _option(
        None,
        "the activation inside the network (the output's ReLU aside): relu; silu, "
        "x times sigmoid(x), smooth and not zero below 0 (Elfwing et al., 2018); or "
        "hard_silu, x times relu6(x + 3) / 6, its piecewise version (Howard et al., 2019)",
        tuple(ACTIVATIONS),
        absent=("relu", None),
    )
    pooling: Optional[str] = _option(
        None,
        "what the head reads of the last feature map: its mean over the positions "
        "(average), or every position's channels (flatten; the network then takes "
        "images of --image-size alone)",
        ("average", "flatten"),
        absent=("average", None),
    )
    stem: Optional[str] = _option(
        None,
        "the network's first layer: a 3x3 convolution at half the image's side, stage 1 "
        "halving it again (conv); or each 2x2 square of pixels stacked as one pixel first, "
        "the same convolution then at a quarter of the side and stage 1 keeping it "
        "(space_to_depth: the same maps from stage 1 on, a faster step; even image sides)",
        ("conv", "space_to_depth"),
        absent=("conv", None),
    )
    unnormalized_parts: Optional[int] = _option(
        None,
        "how many of the network's first parts (the stem, stage 1, ...) have no batch "
        "norm: their convolutions take biases, and each residual block's second one "
        "starts at zero (where the maps are largest, batch norm is a large share of the "
        "step); 0 for batch norm everywhere",
        bounds=Bounds(0, 5),
        absent=(0, None),
    )
    standardized_kernels: Optional[bool] = _option(
        None,
        "in the parts without batch norm (--unnormalized-parts), every convolution's "
        "kernel standardized as it is used (weight standardization, as NF-ResNets use it, "
        "Brock et al., 2021), and each residual block's second convolution scaled by a "
        "gain that starts at zero",
        absent=(False, None),
    )
    dropout: Optional[float] = _option(
        None,
        "the fraction of the head's hidden units that dropout zeroes in each training "
        "step (0: none)",
        bounds=Bounds(0, 1, high_included=False),
        absent=(0.3, None),
    )
    members: Optional[int] = _option(
        None,
        "train this many networks of the chosen shape at once, each from its own random "
        "weights and held to the ages by its own loss, and predict the ReLU of their mean "
        "output (1: one network; regression output only: the preset's members become one "
        "network with another head or output)",
        bounds=Bounds(1, 8),
    )
    members_share: Optional[str] = _option(
        None,
        "what several members share of the network, from its input: none, the stem, or "
        "the stem and the stages up to stage1, stage2 or stage3 (one pass over the "
        "largest feature maps instead of one a member; the rest of each is its own)",
        MEMBERS_SHARE,
        absent=("none", None),
    )
    head: str = _option("regression", "output head", HEADS)
    output_activation: str = _option(
        "relu", "activation of the regression output", OUTPUT_ACTIVATIONS
    )
    relu_gradient: Optional[str] = _option(
        None,
        "the ReLU output's gradient below 0 while training: zero, as a ReLU has, or "
        "straight_through, the identity's, so that a face predicted 0 still pulls its "
        "output up (the output is max(0, z) either way)",
        ("zero", "straight_through"),
    )
    gender_head: bool = _option(False, "also predict gender (multi-task)")
    attribute_inputs: bool = _option(
        False, "give gender and race to the model as inputs"
    )
    distribution_head: Optional[bool] = _option(
        None,
        "train a softmax over ages on soft labels beside the ReLU output, as a teacher "
        "of the shared features (regression head only)",
    )
    image_size: Optional[int] = _option(
        None, "input side in pixels", bounds=Bounds(32, 512)
    )
    start_image_size: Optional[int] = _option(
        None,
        "progressive resizing: train the first --start-fraction of the epochs on "
        "images of this side (--start-view), a faster step, and the rest on "
        "--image-size (0: off)",
        bounds=Bounds(0, 512),
        absent=(0, None),
    )
    start_fraction: Optional[float] = _option(
        None,
        "with --start-image-size: the share of the epochs trained at that size (the "
        "last epoch is always at full size)",
        bounds=Bounds(0, 1, high_included=False),
        absent=(0.65, None),  # the preset's; without --start-image-size, no matter
    )
    start_view: Optional[str] = _option(
        None,
        "with --start-image-size: what its smaller images show, each face's frame "
        "resized (the face smaller) or a part of it cropped (the face at its scale)",
        augmentation.VIEWS,
        absent=("cropped", None),
    )
    # Optimisation.
    batch_size: Optional[int] = _option(
        None, "images a step trains on", bounds=Bounds(1, 4096)
    )
    selective_backprop: Optional[float] = _option(
        None,
        "train each step on this fraction of the faces it reads (it reads "
        "--batch-size / F): the faces drawn with a chance that grows with the error of "
        "the age predicted for them first, so that fewer faces already learnt are "
        "trained on (Selective-Backprop, Jiang et al., 2019); 1: every face read",
        bounds=Bounds(0, 1, low_included=False),
        absent=(1.0, None),
    )
    epochs: Optional[int] = _option(
        None, "epochs (a time budget fits them instead)", bounds=AT_LEAST_ONE
    )
    optimizer: Optional[str] = _option(
        None,
        "adamw; lion, the sign of a momentum (Chen et al., 2023: a learning rate 3 to "
        "10 times smaller and a weight decay as many times larger than AdamW's); or "
        "rmsprop (the course's)",
        ("adamw", "lion", "rmsprop"),
    )
    learning_rate: Optional[float] = _option(
        None, "peak learning rate", bounds=Bounds(0, 10, low_included=False)
    )
    schedule: Optional[str] = _option(
        None, "warm-up, then cosine or linear decay to zero; or constant", SCHEDULES
    )
    warmup_epochs: Optional[float] = _option(
        None, "linear warm-up length in epochs", bounds=NOT_NEGATIVE
    )
    weight_decay: Optional[float] = _option(
        None, "decoupled weight decay (AdamW, Lion)", bounds=Bounds(0, 1)
    )
    loss: str = _option("l1", "regression loss", LOSSES)
    loss_weighting: Optional[str] = _option(
        None,
        "weight each face's loss: none, or lds, by the inverse square root of how "
        "common its age is, smoothed over neighbouring ages (Yang et al., 2021)",
        ("none", "lds"),
    )
    loss_weighting_epochs: Optional[int] = _option(
        None,
        "with --loss-weighting lds: weigh the faces only in the last N epochs, every face "
        "the same before (deferred re-weighting, Cao et al., 2019); default: every epoch",
        bounds=AT_LEAST_ONE,
    )
    balanced_mse: Optional[float] = _option(
        None,
        "weight of a Balanced MSE term beside the L1 loss (Ren et al., 2022: a squared "
        "error that divides out how common each training age is, against the pull of "
        "the old and young faces towards the middle ages); 0: off",
        bounds=Bounds(0, 10),
    )
    rank_sim: Optional[float] = _option(
        None,
        "weight of a RankSim term (Gong et al., 2022): each face's neighbours ranked by "
        "their features' similarity should come in the order of their ages' closeness, "
        "the old faces' included; 0: off",
        bounds=Bounds(0, 1000),
        absent=(0.0, None),
    )
    mutual: Optional[float] = _option(
        None,
        "weight of a term holding each of several members (--members) to the mean age "
        "of the others, held fixed (co-distillation, Anil et al., 2018); 0: off",
        bounds=Bounds(0, 10),
        absent=(0.0, None),
    )
    fused_batch_norm: Optional[bool] = _option(
        None,
        "batch norm's training pass as TensorFlow's fused kernel (the same statistics, "
        "a faster step); off or on, the same network",
    )
    augment: Optional[bool] = _option(None, "flip, crop/shift, brightness/contrast")
    largest_frame: Optional[float] = _option(
        None,
        "the augmentation's largest frame, times the image's side: 1.0 only crops "
        "inside it (0.88 to 1.0 times its side); above 1.0 some frames are larger than "
        "the image and show the face smaller, as a face found in a photo may be framed "
        "(the border mirrored from the image)",
        bounds=Bounds(1.0, 1.5),
    )
    rotation: Optional[float] = _option(
        None,
        "the augmentation's largest turn of a frame, in degrees either way (0: none)",
        bounds=Bounds(0, 45),
    )
    erasing: Optional[float] = _option(
        None,
        "the chance that the augmentation replaces a rectangle of a face (2-40 %% of "
        "its area) by noise: random erasing (0: none)",
        bounds=Bounds(0, 1),
    )
    rand_augment: Optional[float] = _option(
        None,
        "the magnitude, from 0 to 1, of RandAugment's operations on tones and colours "
        "(Cubuk et al., 2020): each face gets two of identity, autocontrast, solarize, "
        "posterize, colour and sharpness, drawn at random (0: none)",
        bounds=Bounds(0, 1),
        absent=(0.0, None),
    )
    patience: Optional[int] = _option(
        None, "early stopping: epochs without a better val MAE", bounds=AT_LEAST_ONE
    )
    ema: Optional[float] = _option(
        None,
        "momentum of an average of the weights, which is validated and saved; 0: off",
        bounds=Bounds(0, 1, high_included=False),
    )
    validate_trained_every: Optional[int] = _option(
        None,
        "with --ema: validate the trained weights too, beside their average, every N "
        "epochs and in the last, to show what the average adds (each such validation "
        "costs about 4 %% of an epoch); 0: never",
        bounds=NOT_NEGATIVE,
    )
    tta: Optional[bool] = _option(
        None,
        "test metrics average each face's age over its views: as it is and zoomed in on "
        "its centre (readout.TTA_ZOOMS), each also mirrored",
    )
    widen: Optional[bool] = _option(
        None,
        "after training, widen the predicted ages away from their median, by a factor "
        "on each side fitted on the validation faces so that every decade of age "
        "counts the same: "
        "fewer old and young faces pulled towards the middle ages (saved in the model)",
    )
    seed: int = _option(
        0,
        "seeds training (initialisation, order, augmentation), never the split",
        bounds=Bounds(0, 2**31 - 1),
    )
    time_budget: Optional[float] = _option(
        None,
        "minutes for the whole run: epochs and schedule fitted to it",
        bounds=POSITIVE,
    )
    # Devices.
    precision: Optional[str] = _option(
        None,
        "compute type (default: auto, which takes mixed_float16 on a GPU, "
        "mixed_bfloat16 on a processor with bfloat16 units (AMX or AVX512-BF16), "
        "float32 elsewhere)",
        PRECISIONS,
    )
    jit_compile: Optional[bool] = _option(
        None, "XLA-compile the train and test steps (default: with a GPU)"
    )
    strategy: str = _option(
        "auto",
        "how the training is spread: one device; mirrored, a replica per GPU; "
        "multi_worker, the machines TF_CONFIG lists; tpu; auto: multi_worker with "
        "TF_CONFIG, tpu on a TPU runtime, mirrored with several GPUs, else one",
        devices.STRATEGIES,
    )
    # Output.
    out: str = _option(
        "runs/default", "folder for model.keras, metrics, history, checkpoints"
    )

    @property
    def augmentation(self):
        """The training faces' augmentation (an augmentation.Augmentation), or None for
        none; from a resolved config."""
        if not self.augment:
            return None
        return augmentation.Augmentation(
            self.largest_frame, self.rotation, self.erasing, self.rand_augment
        )

    @property
    def start_epochs(self):
        """The epochs that progressive resizing trains on smaller images (0: none): never
        the last, which is validated, so that a run has a best epoch."""
        if not self.start_image_size:
            return 0
        return min(round(self.start_fraction * self.epochs), self.epochs - 1)

    @property
    def read_batch_size(self):
        """The faces a train step reads, of a resolved config: the batch size, or with
        selective_backprop below 1 the more of them that the step chooses its batch from.
        """
        return max(self.batch_size, round(self.batch_size / self.selective_backprop))

    def validates_trained(self, epoch):
        """Whether `epoch` (from 0) of a resolved config validates the trained weights
        beside their average: with an average, every validate_trained_every-th epoch and
        the last."""
        every = self.validate_trained_every
        if not self.ema or not every:
            return False
        return (epoch + 1) % every == 0 or epoch + 1 == self.epochs

    @property
    def validation_passes(self):
        """The validations of an epoch, on the mean over a run's epochs: one of the
        weights saved (the average, with one) and, one epoch in validate_trained_every,
        one of the trained weights beside it."""
        every = self.validate_trained_every
        return 1 + (1 / every if self.ema and every else 0)

    def train_image_size(self, epoch):
        """The side of the training images in `epoch` (from 0) of a resolved config: the
        start size for the first start_fraction of the epochs, then image_size."""
        if epoch < self.start_epochs:
            return self.start_image_size
        return self.image_size


_FIELDS = {option.name: option for option in dataclasses.fields(TrainConfig)}


# Everything a preset sets, in one table: the network (its architecture and input size) and
# how it is trained. A TrainConfig's `None` fields are filled from here.
CPU_PRESET = dict(
    # Why each of these values: EXPERIMENTS.md (speed, epochs, test-time views, the weight
    # average, the widening, the members) and answers.md, Task 2 (the straight-through
    # ReLU output).
    arch="age_cnn",
    image_size=96,
    # Progressive resizing, off: EXPERIMENTS.md, "Smaller images first".
    start_image_size=0,
    start_fraction=0.65,
    start_view="cropped",
    width=1.0,
    blocks="1,1,1,1",
    # Squeeze-and-excitation and the pooled shortcuts off: EXPERIMENTS.md,
    # "Squeeze-and-excitation, pooled shortcuts".
    squeeze_excite=0,
    pooled_shortcut=False,
    eca=0,
    blur=False,
    activation="relu",
    pooling="average",
    # The stem of squares: 0.79 of the epoch's time, and on 66 epochs no better than this
    # stem on 53 in the same time: EXPERIMENTS.md, "A stem of squares".
    stem="conv",
    unnormalized_parts=0,
    standardized_kernels=False,
    # Three networks trained at once and averaged: EXPERIMENTS.md, "Several networks in
    # one model".
    members=3,
    members_share="none",
    network=dict(
        widths=(16, 32, 80, 160),
        stem_stride=2,
        head_units=128,
    ),
    # 0.1 and 0.5 were worse at the short budget: EXPERIMENTS.md, "A lighter
    # co-distillation, the head's dropout".
    dropout=0.3,
    batch_size=64,
    # Off: EXPERIMENTS.md, "Training on the faces not yet learnt".
    selective_backprop=1.0,
    epochs=68,
    optimizer="adamw",
    learning_rate=3e-3,
    schedule="cosine",
    warmup_epochs=1.0,
    # Keras's AdamW shrinks each kernel by weight_decay × learning rate a step, so 5e-4
    # shrank the kernels by about 1 % over a whole run; 0.05 left the old faces less biased.
    weight_decay=0.05,
    augment=True,
    largest_frame=1.0,
    rotation=0.0,
    erasing=0.0,
    rand_augment=0.0,
    patience=10,
    distribution_head=False,
    ema=0.999,
    # The trained weights' validation costs as much as the average's: EXPERIMENTS.md,
    # "Training on the faces not yet learnt".
    validate_trained_every=4,
    tta=True,
    widen=True,
    relu_gradient="straight_through",
    loss_weighting="none",
    balanced_mse=0.05,
    # Off: EXPERIMENTS.md, "Ranked features".
    rank_sim=0.0,
    mutual=0.0,
    fused_batch_norm=True,
)
PRESETS = {
    "cpu": CPU_PRESET,
    # For a Colab GPU: a ResNet-18-sized body at 128 px; the rest as the CPU preset.
    "gpu": {
        **CPU_PRESET,
        "image_size": 128,
        "network": {
            **CPU_PRESET["network"],
            "widths": (64, 128, 256, 512),
            "head_units": 256,
        },
        "blocks": "2,2,2,2",
        # One network: the members were measured on the CPU preset only.
        "members": 1,
        "members_share": "none",
        "batch_size": 128,
        "epochs": 60,
        # Measured on the CPU preset only: the GPU preset trains with the L1 loss alone,
        # and the weight decay it had before.
        "balanced_mse": 0.0,
        "weight_decay": 5e-4,
        "learning_rate": 2e-3,
        "warmup_epochs": 2.0,
        "patience": 12,
    },
}
# The course's network and settings, used when --arch course_cnn is asked for without more
# flags: 200 px, RMSprop 1e-3, batch 64, 20 epochs, no augmentation.
COURSE_SETTINGS = dict(
    # The course network has its own layers: --width, --blocks and --members shape
    # age_cnn only.
    width=None,
    blocks=None,
    squeeze_excite=None,
    pooled_shortcut=None,
    eca=None,
    blur=None,
    activation=None,
    pooling=None,
    stem=None,
    unnormalized_parts=None,
    standardized_kernels=None,
    dropout=None,
    members=None,
    members_share=None,
    image_size=200,
    # Its flatten layer takes images of one size.
    start_image_size=0,
    batch_size=64,
    selective_backprop=1.0,
    epochs=20,
    optimizer="rmsprop",
    learning_rate=1e-3,
    schedule="constant",
    warmup_epochs=0.0,
    weight_decay=0.0,
    augment=False,
    patience=20,
    distribution_head=False,
    ema=0.0,
    tta=False,
    widen=False,
    relu_gradient="zero",
    loss_weighting="none",
    balanced_mse=0.0,
    rank_sim=0.0,
    mutual=0.0,
)


def resolve_config(config):
    """Fill every `None` of a TrainConfig from its preset (and the course settings)."""
    gpu = devices.has_gpu()
    preset = config.preset or ("gpu" if gpu else "cpu")
    values = {k: v for k, v in PRESETS[preset].items() if k != "network"}
    arch = config.arch or values["arch"]
    if arch == "course_cnn":
        values.update(COURSE_SETTINGS)
        # The settings of age_cnn's network are None in COURSE_SETTINGS.
        given = [
            flag_name(name)
            for name, value in COURSE_SETTINGS.items()
            if value is None and getattr(config, name) is not None
        ]
        if given:
            raise ValueError(
                f"{', '.join(given)}: for the network of --arch age_cnn only; the "
                "course network (--arch course_cnn) has the course's layers"
            )
    values.update(jit_compile=gpu)
    explicit = {
        name: value
        for name, value in dataclasses.asdict(config).items()
        if value is not None
    }
    precision = explicit.pop("precision", "auto")
    if precision == "auto":
        precision = devices.auto_precision(gpu)
    resolved = dataclasses.replace(
        config,
        **{
            **values,
            **explicit,
            "preset": preset,
            "arch": arch,
            "precision": precision,
        },
    )
    resolved = _members_for_the_outputs(resolved, asked=config.members)
    return _members_share(resolved, asked=config.members_share)


def _members_share(config, asked):
    """The config with what its members share checked: one network shares nothing, so
    the preset's sharing is dropped, and sharing asked for (`asked`, the --members-share
    given) raises ValueError."""
    if config.arch == "course_cnn" or config.members is None or config.members > 1:
        return config
    if asked not in (None, "none"):
        raise ValueError(
            f"--members-share {asked} needs several members (--members 2 or more), "
            f"the network has {config.members}"
        )
    return dataclasses.replace(config, members_share="none")


def _members_for_the_outputs(config, asked):
    """The config with its members checked against its outputs: several members average
    the regression output alone, so with another head, a gender head, attribute inputs
    or a teacher head the preset's members become one network, and members asked for
    (`asked`, the --members given) raise ValueError."""
    if config.arch == "course_cnn" or config.members is None or config.members <= 1:
        return config
    others = {
        f"--head {config.head}": config.head != "regression",
        "--gender-head": config.gender_head,
        "--attribute-inputs": config.attribute_inputs,
        "--distribution-head": config.distribution_head,
    }
    clashing = [flag for flag, given in others.items() if given]
    if not clashing:
        return config
    if asked is None:
        return dataclasses.replace(config, members=1)
    raise ValueError(
        f"--members {config.members} averages the members' regression outputs alone; "
        f"it does not go with {', '.join(clashing)}"
    )


def run_name(config):
    """A run-folder name that changes with every setting of the training, e.g.
    "gpu-30min-1a2b3c".

    It starts with the preset (or the course network) and the time budget, for the reader,
    and ends with a hash of the resolved settings: a rerun with the same settings finds its
    run again and resumes it, also after an update of this code that adds settings, and a
    rerun with other settings starts a new run.
    """
    config = resolve_config(config)
    # Neither where the run is, nor how it is read out, nor a setting that does what the
    # versions before it did: the name stays when this code adds settings.
    settings = {
        name: value
        for name, value in dataclasses.asdict(config).items()
        if name not in (*WHERE, *READOUT) and not _as_before(name, value)
    }
    parts = ["course" if config.arch == "course_cnn" else config.preset]
    if config.time_budget:
        parts.append(f"{config.time_budget:g}min")
    if config.limit:
        parts.append(f"limit{config.limit}")
    digest = utk_data.stable_hash(json.dumps(settings, sort_keys=True))
    return "-".join(parts + [f"{digest:016x}"[:6]])


def check_loss_weighting_epochs(config):
    """Raise ValueError unless config.loss_weighting_epochs (if given) goes with LDS
    weighting and lies in 1..config.epochs."""
    if config.loss_weighting_epochs is None:
        return
    if config.loss_weighting != "lds":
        raise ValueError("--loss-weighting-epochs needs --loss-weighting lds")
    if not 0 < config.loss_weighting_epochs <= config.epochs:
        raise ValueError(
            f"--loss-weighting-epochs must lie in 1..{config.epochs} (the epochs), "
            f"got {config.loss_weighting_epochs}"
        )


def resumed_config(saved, config, out):
    """The settings a resumed run goes on with: the checkpoint's (the epochs fitted to a
    time budget are part of the run), but where the data and the run are now and how the
    command reads it out; a setting newer than the checkpoint's version from the command,
    when its value does what that version did."""
    unknown = sorted(set(saved) - set(_FIELDS))
    if unknown:
        raise ValueError(
            f"{out} holds a run with settings this version does not know "
            f"({', '.join(unknown)}): resume it with the version that started it, or "
            "choose another --out"
        )
    now = {name: getattr(config, name) for name in (*WHERE, *READOUT)}
    saved = {**_absent_settings(saved, config), **saved, **now}
    check_same_run(saved, config, out)
    return TrainConfig(**saved)


def _absent_settings(saved, config):
    """The settings that a run saved by an older version lacks and that `config` gives a
    value that does what that version did (the field's `absent`): {name: value}."""
    return {
        name: getattr(config, name)
        for name in _FIELDS
        if name not in saved and _as_before(name, getattr(config, name))
    }


def _as_before(name, value):
    """Whether the setting `name` at `value` does what the versions before it did."""
    return value in _FIELDS[name].metadata["absent"]


def check_same_run(saved, config, out):
    """Raise ValueError when the run saved in `out` has other settings than `config`,
    naming each with both values."""
    current = dataclasses.asdict(config)
    # The epochs fitted to a time budget are part of the run, whatever the command says.
    ignored = {*WHERE, *READOUT, *(("epochs",) if config.time_budget else ())}
    missing = sorted(k for k in current if k not in ignored and k not in saved)
    if missing:
        # Those with an `absent` are missing because the command asks for them.
        asked = [k for k in missing if _FIELDS[k].metadata["absent"]]
        raise ValueError(
            f"{out} holds a run of an older version, which had no "
            f"{', '.join(map(flag_name, missing))}: resume it with that version"
            + (f", or without {', '.join(map(flag_name, asked))}" if asked else "")
            + ", or choose another --out"
        )
    different = [
        f"{flag_name(k)} {saved[k]} there, {current[k]} here"
        for k in sorted(current)
        if k not in ignored and saved[k] != current[k]
    ]
    if different:
        raise ValueError(
            f"{out} holds a run with other settings ({'; '.join(different)}): resume it "
            "with the same command, or choose another --out"
        )


def flag_name(name):
    """The flag of a TrainConfig field: --image-size for image_size."""
    return "--" + name.replace("_", "-")


def check_config(config):
    """Raise ValueError, naming the flag, for a setting out of its range (a TrainConfig
    made in Python, as the notebook makes it, is checked as the flags are)."""
    for config_field in dataclasses.fields(TrainConfig):
        value = getattr(config, config_field.name)
        bounds, parse = config_field.metadata["bounds"], config_field.metadata["parse"]
        if value is not None and parse is not None:
            try:
                parse(value)
            except ValueError as error:
                raise ValueError(f"{flag_name(config_field.name)} {error}") from None
        if value is None or bounds is None:
            continue
        problem = bounds.problem(value)
        if problem:
            raise ValueError(f"{flag_name(config_field.name)} {problem}, got {value}")
    _check_start_image_size(config)
    if config.rank_sim and config.arch == "course_cnn":
        raise ValueError(
            "--rank-sim: the course network (--arch course_cnn) does not give its "
            "features to the loss; RankSim needs --arch age_cnn"
        )
    if config.mutual and not (config.members or 1) > 1:
        raise ValueError(
            "--mutual holds each member to the others: it needs several members "
            "(--members 2 or more, --arch age_cnn)"
        )
    if config.squeeze_excite and config.eca:
        raise ValueError(
            "--squeeze-excite and --eca both gate a block's channels: give one of them"
        )
    if config.standardized_kernels and not config.unnormalized_parts:
        raise ValueError(
            "--standardized-kernels standardizes the kernels of the parts without batch "
            "norm: it needs --unnormalized-parts 1 or more"
        )
    if config.stem == "space_to_depth":
        odd = [
            f"{flag_name(name)} {size}"
            for name in ("image_size", "start_image_size")
            for size in [getattr(config, name)]
            if size and size % 2
        ]
        if odd:
            raise ValueError(
                f"--stem space_to_depth stacks 2x2 squares of pixels: it needs images of "
                f"even sides, got {', '.join(odd)}"
            )


def _check_start_image_size(config):
    """Raise ValueError for a start size that is not smaller than the image size, too
    small for the network, or given to the course network (its flatten layer takes one
    image size)."""
    size = config.start_image_size
    if not size or config.image_size is None:
        return
    if config.arch == "course_cnn":
        raise ValueError(
            "--start-image-size: the course network (--arch course_cnn) takes images of "
            "one size (its flatten layer); progressive resizing needs --arch age_cnn"
        )
    if config.pooling == "flatten":
        raise ValueError(
            "--start-image-size: with --pooling flatten the network takes images of "
            "one size; progressive resizing needs --pooling average"
        )
    if not 32 <= size < config.image_size:
        raise ValueError(
            f"--start-image-size must be from 32 up to below --image-size "
            f"({config.image_size}), got {size} (0: off)"
        )
