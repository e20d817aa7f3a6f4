"""Where does a train step's time go? TensorFlow's profiler over train steps of the
preset's model (or of settings over it), each op's self-time summed by kind of op.

    python bench/bench_profile.py --limit 1024 --steps 10
    python bench/bench_profile.py --limit 1024 --steps 10 members=1 fused_batch_norm=false
    python bench/bench_profile.py --limit 1024 --steps 10 --by-part stem=space_to_depth

The step is `Trainer.train_step` as `train` runs it (bench_step's: uint8 batches held in
memory, scaled and augmented inside the step), profiled over --steps steps after
--warmup untimed ones. An op's self-time is the time of its own work, on however many
threads it ran: the kinds' shares add up to the step's work, not to its wall time. The
kinds, by the op's type and the name scope it ran in:

- convolutions, forward; convolutions, backward (the gradients of their inputs and of
  their kernels);
- batch norm, forward and backward;
- ReLU and its gradient;
- the network's other ops, forward and backward (the gradients' sums, casts, the
  shortcuts' adds, the head);
- the optimizer (AdamW's or RMSprop's update of every weight);
- the weight average;
- the augmentation (and whatever else of the step runs outside the model's update);
- the rest (the loss, the metrics).

With --by-part, the first four kinds (the convolutions forward and backward, batch norm,
the ReLU) are summed again by the part of the network they ran in, every member's
together: the stem, each stage, and the rest (the head).
"""

import glob
import json
import re
import sys
import tempfile
from collections import Counter

import common  # first: the repository's path and TensorFlow's environment

import tensorflow as tf
from tensorflow.python.profiler.internal import _pywrap_profiler_plugin

KINDS = (
    "convolutions, forward",
    "convolutions, backward",
    "batch norm",
    "ReLU",
    "the network's other ops",
    "the optimizer",
    "the weight average",
    "the augmentation",
    "the rest",
)


def kind_of(op_type, name, model_name, optimizer_name):
    """The kind (one of KINDS) of an op of a profiled train step, by its type and its
    name (its name scopes: the model's, the tape's, the optimizer's; the update is a
    function of its own, called from the step)."""
    scopes = name.split("/")
    if "Conv2DBackprop" in op_type:
        return "convolutions, backward"
    if "Conv2D" in op_type:
        return "convolutions, forward"
    if "BatchNorm" in op_type:
        return "batch norm"
    if op_type in ("Relu", "ReluGrad"):
        return "ReLU"
    if "weight_average" in scopes:
        return "the weight average"
    if optimizer_name in scopes:
        return "the optimizer"
    # Keras names the model's scope after it, with a number when traced again.
    in_model = any(scope.rpartition("_")[0] == model_name for scope in scopes)
    # AddN: the tape's sums of a tensor's gradients from its several uses (the shortcuts).
    if (
        model_name in scopes
        or in_model
        or "gradient_tape" in scopes
        or op_type == "AddN"
    ):
        return "the network's other ops"
    if not scopes[0].startswith("StatefulPartitionedCall"):
        return "the augmentation"
    return "the rest"


# The kinds of op that --by-part sums by the network's part, and the parts by their scope.
PART_KINDS = KINDS[:4]
PART_SCOPE = re.compile(r"^(stem|stage\d+)_")
PARTS = ("the stem", "stage1", "stage2", "stage3", "stage4", "the rest of the network")


def part_of(name):
    """The part of the network (one of PARTS) an op of the given name ran in: the first
    of its name scopes that names a stem layer or a stage's block."""
    for scope in name.split("/"):
        found = PART_SCOPE.match(scope)
        if found:
            return "the stem" if found.group(1) == "stem" else found.group(1)
    return PARTS[-1]


def time_by_part(rows, model_name, optimizer_name):
    """Microseconds of self-time of the network's convolutions, batch norms and ReLUs
    (PART_KINDS), by part (every part of PARTS present, 0 for none)."""
    found = {part: 0.0 for part in PARTS}
    for op_type, name, microseconds in rows:
        if kind_of(op_type, name, model_name, optimizer_name) in PART_KINDS:
            part = part_of(name)
            found[part] = found.get(part, 0.0) + microseconds
    return found


def op_rows(tools_data):
    """The host ops of the profiler's "framework_op_stats" table: [(type, name,
    self-time in microseconds)], idle time left out."""
    table = json.loads(tools_data)
    table = table[0] if isinstance(table, list) else table
    columns = [column["id"] for column in table["cols"]]
    rows = [
        dict(zip(columns, [cell.get("v") for cell in row["c"]]))
        for row in table["rows"]
    ]
    return [
        (row["type"], row["operation"], row["total_self_time"])
        for row in rows
        if row["type"] != "IDLE"
    ]


def time_by_kind(rows, model_name, optimizer_name):
    """Microseconds of self-time by kind, every kind present (0 for none)."""
    found = Counter({kind: 0.0 for kind in KINDS})
    for op_type, name, microseconds in rows:
        found[kind_of(op_type, name, model_name, optimizer_name)] += microseconds
    return found


def profile(contender, steps, warmup):
    """The op rows of `steps` train steps of a StepContender, after `warmup` untimed."""
    contender.train(warmup)
    folder = tempfile.mkdtemp(prefix="profile-")
    tf.profiler.experimental.start(folder)
    try:
        contender.train(steps)
    finally:
        tf.profiler.experimental.stop()
    paths = glob.glob(f"{folder}/**/*.xplane.pb", recursive=True)
    data, ok = _pywrap_profiler_plugin.xspace_to_tools_data(
        paths, "framework_op_stats", {}
    )
    if not ok:
        raise RuntimeError("the profiler's trace could not be read")
    return op_rows(data.decode() if isinstance(data, bytes) else data)


def print_table(found, steps, heading="kind of op"):
    """Each kind's (or part's) milliseconds a step and its share of the work listed."""
    total = sum(found.values())
    print(f"\n| {heading} | ms a step | share |\n|---|---:|---:|")
    for kind, microseconds in found.items():
        share = 100 * microseconds / total if total else 0.0
        print(f"| {kind} | {microseconds / 1000 / steps:.1f} | {share:.0f} % |")
    print(f"| all | {total / 1000 / steps:.1f} | 100 % |")


def main(argv=None):
    parser = common.parser(__doc__, limit=1024)
    parser.add_argument("--steps", type=common.positive, default=10)
    parser.add_argument("--warmup", type=common.positive, default=5)
    parser.add_argument(
        "--by-part",
        action="store_true",
        help="also sum the network's convolutions, batch norms and ReLUs by its part",
    )
    parser.add_argument(
        "settings", nargs="*", help="TrainConfig settings, name=value, over the preset"
    )
    arguments = parser.parse_args(argv)
    common.header("bench_profile")
    config = common.config_of(" ".join(arguments.settings))
    decoded = common.faces_decoder(arguments)(config.image_size)
    contender = common.StepContender(config, decoded, arguments.steps)
    rows = profile(contender, arguments.steps, arguments.warmup)
    trainer = contender.trainer
    optimizer = getattr(trainer.optimizer, "inner_optimizer", trainer.optimizer)
    found = time_by_kind(rows, trainer.model.name, optimizer.name)
    print(
        f"{' '.join(arguments.settings) or 'the preset'}: {config.image_size} px, batch "
        f"{config.batch_size}, {config.precision}, {arguments.steps} steps profiled"
    )
    print_table(found, arguments.steps)
    if arguments.by_part:
        parts = time_by_part(rows, trainer.model.name, optimizer.name)
        print_table(
            parts,
            arguments.steps,
            "part of the network (convolutions, batch norm, ReLU)",
        )


if __name__ == "__main__":
    sys.exit(main())
