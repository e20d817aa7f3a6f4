"""bench/bench_profile.py: a profiled train step, its ops' time summed by kind."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import bench_profile  # noqa: E402
from synthetic import make_folder  # noqa: E402


@pytest.mark.parametrize(
    "op_type, name, kind",
    [
        ("_MklNativeConv2D", "S/age_cnn_1/member1_1/stem_conv_1/convolution", 0),
        ("_MklNativeConv2DBackpropFilter", "S/gradient_tape/age_cnn_1/x/Conv", 1),
        ("_MklNativeFusedBatchNormGradV3", "S/gradient_tape/age_cnn_1/norm", 2),
        ("ReluGrad", "S/gradient_tape/age_cnn_1/member2_1/relu", 3),
        ("AddV2", "S/age_cnn_1/member3_1/stage1_block1_1/add", 4),
        ("AddN", "S/AddN_10", 4),
        ("AssignSubVariableOp", "S/adam_w/AssignSubVariableOp_40", 5),
        ("Mul", "S/weight_average/mul_3", 6),
        ("ReverseV2", "ReverseV2", 7),
        ("_UnaryOpsComposition", "S/Neg", 8),
    ],
)
def test_each_op_is_put_in_its_kind(op_type, name, kind):
    name = name.replace("S/", "StatefulPartitionedCall/")
    found = bench_profile.kind_of(op_type, name, "age_cnn", "adam_w")
    assert found == bench_profile.KINDS[kind]


@pytest.mark.parametrize(
    "name, part",
    [
        ("S/age_cnn_1/member1_1/stem_conv_1/convolution", "the stem"),
        ("S/gradient_tape/age_cnn_1/member3_1/stem_relu_1/ReluGrad", "the stem"),
        ("S/gradient_tape/age_cnn_1/member2_1/stage4_block1_1/conv2_1/c", "stage4"),
        ("S/age_cnn_1/stage1_block2_1/norm1_1/FusedBatchNormV3", "stage1"),
        ("S/age_cnn_1/member1_1/hidden_1/Relu", "the rest of the network"),
    ],
)
def test_each_op_is_put_in_its_part_of_the_network(name, part):
    name = name.replace("S/", "StatefulPartitionedCall/")
    assert bench_profile.part_of(name) == part


def test_a_profile_of_the_step_shares_its_time_among_the_kinds(tmp_path, capsys):
    folder = make_folder(tmp_path / "UTKFace", 40, seed=3)
    settings = ["image_size=32", "members=2", "batch_size=8", "precision=float32"]
    flags = ["--data", str(folder), "--limit", "16", "--steps", "2", "--warmup", "1"]
    flags.append("--by-part")
    bench_profile.main(flags + settings)
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split(" | ")[0][2:]: line for line in lines if line.startswith("| ")}
    assert set(bench_profile.KINDS) < set(rows)
    shares = [float(rows[kind].split(" | ")[2][:-4]) for kind in bench_profile.KINDS]
    assert sum(shares) == pytest.approx(100, abs=len(shares))  # each rounded
    # A train step convolves forward and backward, normalises and updates the weights.
    for kind in bench_profile.KINDS[:3] + ("the optimizer", "the weight average"):
        assert float(rows[kind].split(" | ")[1]) > 0, kind
    # The network's work again by part: the stem and both stages convolve.
    for part in ("the stem", "stage1", "stage2"):
        assert float(rows[part].split(" | ")[1]) > 0, part
    # The parts' sum (the last "all" row) is the network's work counted by kind.
    counted = sum(
        float(rows[kind].split(" | ")[1]) for kind in bench_profile.PART_KINDS
    )
    assert float(rows["all"].split(" | ")[1]) == pytest.approx(counted, abs=0.3)
