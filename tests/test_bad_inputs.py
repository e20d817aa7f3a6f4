"""Bad, faulty and hostile input through the command line: every case ends in one clear
line naming the flag or the file (or a counted skip), never a traceback, and nothing is
destroyed that the command did not create. Every bad input is made here."""

import csv
import errno
import json
import os

import keras
import numpy as np
import pytest

import config
import runs
import train_loop
from synthetic import make_folder, write_image


def _error_line(capsys):
    """The one line a failed command printed on standard error."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


# --- Flags out of range: refused when parsed, naming the flag ---------------------------


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--batch-size", "0"),
        ("--batch-size", "-4"),
        ("--epochs", "0"),
        ("--epochs", "-1"),
        ("--image-size", "0"),
        ("--width", "0"),
        ("--members", "0"),
        ("--members", "9"),
        ("--members-share", "stage4"),
        ("--start-image-size", "-8"),
        ("--start-fraction", "1.5"),
        ("--start-fraction", "1"),
        ("--rank-sim", "-1"),
        ("--mutual", "-1"),
        ("--mutual", "11"),
        ("--activation", "tanh"),
        ("--dropout", "1"),
        ("--dropout", "-0.1"),
        ("--stem", "patches"),
        ("--unnormalized-parts", "6"),
        ("--unnormalized-parts", "-1"),
        ("--selective-backprop", "0"),
        ("--selective-backprop", "1.5"),
        ("--squeeze-excite", "-1"),
        ("--squeeze-excite", "2.5"),
        ("--eca", "-1"),
        ("--eca", "16"),
        ("--eca", "2.5"),
        ("--blocks", "1,2"),
        ("--blocks", "1,1,0,2"),
        ("--blocks", "one"),
        ("--limit", "-5"),
        ("--limit", "0"),
        ("--ema", "2"),
        ("--ema", "1"),
        ("--patience", "-1"),
        ("--learning-rate", "-1"),
        ("--learning-rate", "nan"),
        ("--warmup-epochs", "-3"),
        ("--time-budget", "0"),
        ("--epochs", "many"),
    ],
)
def test_a_flag_out_of_range_is_refused_by_name(flag, value, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_loop.main(["train", flag, value, "--out", tmp_path / "run"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"argument {flag}:" in error and value in error
    assert not (tmp_path / "run").exists()


def test_a_setting_out_of_range_made_in_python_is_refused_by_name(tmp_path):
    config = train_loop.TrainConfig(batch_size=0, out=str(tmp_path))
    with pytest.raises(ValueError, match="--batch-size must lie in"):
        train_loop.train(config)


def test_blocks_made_in_python_are_refused_by_name(tmp_path):
    config = train_loop.TrainConfig(blocks="1,1,2", out=str(tmp_path))
    with pytest.raises(ValueError, match="--blocks must be 4 whole numbers"):
        train_loop.train(config)
    assert not tmp_path.joinpath("model.keras").exists()


def test_predict_refuses_a_zoom_out_of_range(capsys):
    with pytest.raises(SystemExit):
        train_loop.main(["predict", "--model", "m.keras", "--tta-zooms", "0", "x.jpg"])
    assert "argument --tta-zooms: must lie in (0, 1]" in capsys.readouterr().err


# --- A run's folder -------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("data") / "faces", 24)


def _train(data, out, *flags):
    arguments = ["train", "--data", data, "--out", out, "--epochs", "1"]
    return train_loop.main([*arguments, "--image-size", "32", "--limit", "8", *flags])


def test_the_course_network_refuses_width_blocks_and_members(
    tiny_data, tmp_path, capsys
):
    for flag in (
        ("--width", "2"),
        ("--blocks", "1,1,2,2"),
        ("--members", "2"),
        ("--members-share", "stem"),
        ("--start-image-size", "64"),
        ("--rank-sim", "100"),
        ("--squeeze-excite", "4"),
        ("--pooled-shortcut",),
        ("--eca", "3"),
        ("--blur",),
        ("--pooling", "flatten"),
        ("--mutual", "0.5"),
        ("--activation", "silu"),
        ("--dropout", "0.1"),
        ("--stem", "space_to_depth"),
        ("--unnormalized-parts", "2"),
        ("--standardized-kernels",),
    ):
        assert _train(tiny_data, tmp_path / "run", "--arch", "course_cnn", *flag) == 1
        assert flag[0] in _error_line(capsys)
        assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("size", ["32", "48", "16"])
def test_a_start_size_not_below_the_image_size_is_refused(
    size, tiny_data, tmp_path, capsys
):
    # --image-size 32 (_train): a start size must be from 32 up to below it.
    assert _train(tiny_data, tmp_path / "run", "--start-image-size", size) == 1
    line = _error_line(capsys)
    assert "--start-image-size" in line and size in line and "32" in line
    assert not (tmp_path / "run").exists()


def test_two_gates_on_the_same_channels_are_refused(tiny_data, tmp_path, capsys):
    flags = ("--squeeze-excite", "4", "--eca", "3")
    assert _train(tiny_data, tmp_path / "run", *flags) == 1
    line = _error_line(capsys)
    assert "--squeeze-excite" in line and "--eca" in line
    assert not (tmp_path / "run").exists()


def test_one_network_refuses_a_term_that_holds_it_to_the_others(
    tiny_data, tmp_path, capsys
):
    assert _train(tiny_data, tmp_path / "run", "--members", "1", "--mutual", "1") == 1
    line = _error_line(capsys)
    assert "--mutual" in line and "--members 2 or more" in line
    assert not (tmp_path / "run").exists()


def test_standardized_kernels_need_parts_without_batch_norm(
    tiny_data, tmp_path, capsys
):
    assert _train(tiny_data, tmp_path / "run", "--standardized-kernels") == 1
    line = _error_line(capsys)
    assert "--standardized-kernels" in line and "--unnormalized-parts" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "sizes, named",
    [(("--image-size", "33"), "--image-size 33"),
     (("--image-size", "48", "--start-image-size", "35"), "--start-image-size 35")],
)  # fmt: skip
def test_a_stem_of_squares_refuses_odd_image_sides(
    sizes, named, tiny_data, tmp_path, capsys
):
    assert _train(tiny_data, tmp_path / "run", "--stem", "space_to_depth", *sizes) == 1
    line = _error_line(capsys)
    assert "--stem space_to_depth" in line and named in line
    assert not (tmp_path / "run").exists()


def test_a_flattened_map_refuses_progressive_resizing(tiny_data, tmp_path, capsys):
    flags = ("--pooling", "flatten", "--image-size", "48", "--start-image-size", "32")
    assert _train(tiny_data, tmp_path / "run", *flags) == 1
    line = _error_line(capsys)
    assert "--start-image-size" in line and "--pooling flatten" in line
    assert not (tmp_path / "run").exists()


def test_the_presets_members_become_one_network_with_another_output():
    cpu = dict(preset="cpu", out="unused")
    assert train_loop.resolve_config(train_loop.TrainConfig(**cpu)).members > 1
    for option in (
        {"head": "classification"},
        {"gender_head": True},
        {"attribute_inputs": True},
        {"distribution_head": True},
    ):
        config = train_loop.TrainConfig(**cpu, **option)
        assert train_loop.resolve_config(config).members == 1, option


def test_sharing_asked_of_one_network_is_refused_and_a_presets_sharing_dropped(
    tiny_data, tmp_path, capsys, monkeypatch
):
    flags = ("--members", "1", "--members-share", "stage2")
    assert _train(tiny_data, tmp_path / "run", *flags) == 1
    line = _error_line(capsys)
    assert "--members-share stage2" in line and "several members" in line
    assert not (tmp_path / "run").exists()
    # A preset's members become one network with another head: sharing asked for is
    # refused, the preset's own sharing dropped.
    cpu = dict(preset="cpu", out="unused", head="classification")
    with pytest.raises(ValueError, match="--members-share stem"):
        train_loop.resolve_config(train_loop.TrainConfig(**cpu, members_share="stem"))
    monkeypatch.setitem(config.PRESETS["cpu"], "members_share", "stage2")
    resolved = train_loop.resolve_config(train_loop.TrainConfig(**cpu))
    assert (resolved.members, resolved.members_share) == (1, "none")
    shared = train_loop.resolve_config(train_loop.TrainConfig(preset="cpu", out="x"))
    assert shared.members > 1 and shared.members_share == "stage2"


def test_members_with_an_output_they_cannot_average_are_refused(
    tiny_data, tmp_path, capsys
):
    assert (
        _train(tiny_data, tmp_path / "run", "--members", "2", "--head", "ordinal") == 1
    )
    assert "--members 2" in _error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_out_naming_a_file_is_refused(tiny_data, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert _train(tiny_data, tmp_path / "notes.txt") == 1
    assert "--out" in _error_line(capsys)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def _numpy_checkpoint(path, **arrays):
    with open(path, "wb") as file:
        np.savez(file, **arrays)


@pytest.mark.parametrize(
    "damage",
    ["empty", "truncated", "random bytes", "a pickled object", "no state"],
)
def test_a_damaged_checkpoint_is_named(damage, tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    path = out / runs.CHECKPOINT
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "random bytes":
        path.write_bytes(os.urandom(4000))
    elif damage == "a pickled object":
        _numpy_checkpoint(path, state=np.array([{"a": 1}], dtype=object))
    elif damage == "no state":
        _numpy_checkpoint(path, weights=np.zeros(3))
    else:
        _numpy_checkpoint(path, state=np.array("{}"), weights=np.zeros(10_000))
        path.write_bytes(path.read_bytes()[:300])
    assert _train(tiny_data, out) == 1
    error = _error_line(capsys)
    assert str(path) in error and "checkpoint" in error


def test_a_checkpoint_with_an_unknown_setting_is_named(tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    state = {"config": {"seed": 0, "fancy_new_setting": 3}, "history": []}
    _numpy_checkpoint(out / runs.CHECKPOINT, state=np.array(json.dumps(state)))
    assert _train(tiny_data, out) == 1
    assert "fancy_new_setting" in _error_line(capsys)


def test_a_second_train_on_a_folder_in_use_is_refused(tiny_data, tmp_path, capsys):
    out = runs.make_run_folder(tmp_path / "run")
    with runs.lock(out):
        assert _train(tiny_data, out) == 1
    assert "another train is running" in _error_line(capsys)
    assert not (out / runs.METRICS).exists()


def test_temporary_files_of_a_killed_run_are_removed(tmp_path):
    out = runs.make_run_folder(tmp_path / "run")
    (out / ".tmp-4242-checkpoint.npz").write_bytes(b"half a checkpoint")
    (out / "notes.txt").write_text("mine")
    with runs.lock(out):
        pass
    assert sorted(path.name for path in out.iterdir()) == [".lock", "notes.txt"]


def test_a_full_disk_keeps_the_last_good_file(tmp_path):
    path = tmp_path / runs.CHECKPOINT
    path.write_bytes(b"the last good checkpoint")

    def write(temporary):
        temporary.write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left on device") as error:
        runs.atomic_write(path, write)
    assert str(path) in str(error.value)
    assert path.read_bytes() == b"the last good checkpoint"
    assert [entry.name for entry in tmp_path.iterdir()] == [runs.CHECKPOINT]


def test_malformed_metrics_are_named(tmp_path, capsys):
    for name, text in (("a", "{not json"), ("b", "[1, 2]")):
        (tmp_path / name).mkdir()
        (tmp_path / name / runs.METRICS).write_text(text)
        assert train_loop.main(["compare", tmp_path / name]) == 1
        assert str(tmp_path / name / runs.METRICS) in _error_line(capsys)


# --- Model files ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A small untrained age model saved as train saves it."""
    config = train_loop.TrainConfig(arch="course_cnn", image_size=32)
    model = train_loop.make_model(config, initial_age=30.0)
    path = tmp_path_factory.mktemp("model") / "model.keras"
    model.save(path)
    return path


def test_model_files_that_are_not_age_models_are_named(tmp_path, capsys):
    (tmp_path / "random.keras").write_bytes(os.urandom(2000))
    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    other.save(tmp_path / "other.keras")
    write_image(tmp_path / "face.jpg")
    for name, reason in (("random", "not a Keras model"), ("other", "another kind")):
        model = tmp_path / f"{name}.keras"
        assert (
            train_loop.main(["predict", "--model", model, tmp_path / "face.jpg"]) == 1
        )
        error = _error_line(capsys)
        assert str(model) in error and reason in error


def test_export_never_removes_a_folder_it_did_not_write(model_file, tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    for form in ("saved_model", "tflite"):
        arguments = ["export", "--model", model_file, "--format", form]
        assert train_loop.main([*arguments, "--out", folder]) == 1
        assert "--out" in _error_line(capsys)
    (tmp_path / "notes.txt").write_text("mine")
    arguments = ["--model", model_file, "--format", "tflite", "--out"]
    assert train_loop.main(["export", *arguments, tmp_path / "notes.txt"]) == 1
    assert "--out" in _error_line(capsys)
    assert (folder / "thesis.tex").read_text() == "years of work"
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_export_refuses_a_file_name_without_its_format_suffix(
    model_file, tmp_path, capsys
):
    for form, name in (("tflite", "age"), ("onnx", "age.tflite")):
        out = tmp_path / name
        arguments = ["export", "--model", model_file, "--format", form, "--out", out]
        assert train_loop.main(arguments) == 1
        error = _error_line(capsys)
        assert error.startswith(f"error: --out {out}:") and "must end in ." in error
        assert list(tmp_path.iterdir()) == []


# --- Pictures for predict ---------------------------------------------------------------


def test_predict_counts_every_entry_it_cannot_read(model_file, tmp_path, capsys):
    folder = tmp_path / "pictures"
    folder.mkdir()
    write_image(folder / "face.jpg")
    (folder / "album.jpg").mkdir()
    (folder / "gone.jpg").symlink_to(folder / "nowhere.jpg")
    (folder / "loop.jpg").symlink_to(folder / "loop.jpg")
    os.mkfifo(folder / "pipe.jpg")
    write_image(os.fsdecode(bytes(folder) + b"/caf\xe9.jpg"))
    out = tmp_path / "ages.csv"
    arguments = ["predict", "--model", model_file, "--crop", "none", "--out", out]
    assert train_loop.main([*arguments, folder]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [row["path"] for row in rows] == [str(folder / "face.jpg")]
    err = capsys.readouterr().err
    assert "skipped 5 file(s)" in err
    for name in ("album.jpg", "gone.jpg", "loop.jpg", "pipe.jpg", "caf\\xe9.jpg"):
        assert f"{name}:" in err


def test_predict_escapes_names_a_spreadsheet_would_run(
    model_file, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # Relative names: the cells begin with the names.
    names = ["=cmd.jpg", "+1.jpg", "-2.jpg", "@sum.jpg", "plain.jpg"]
    for name in names:
        write_image(tmp_path / name)
    arguments = [
        "predict",
        "--model",
        model_file,
        "--crop",
        "none",
        "--out",
        "ages.csv",
    ]
    assert train_loop.main([*arguments, "--", *names]) == 0
    cells = [row["path"] for row in csv.DictReader(open("ages.csv"))]
    assert cells == ["'=cmd.jpg", "'+1.jpg", "'-2.jpg", "'@sum.jpg", "plain.jpg"]
