"""export.py: every format takes RGB uint8 face crops and gives `predict --crop none`'s
ages, checked in its own runtime (LiteRT, ONNX Runtime) in a process without TensorFlow;
the LiteRT file holds no Select TF ops; export without the data writes the file."""

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import export
import photos
import readout
import runtimes
import train_loop
import utk_data

REPOSITORY = Path(__file__).resolve().parents[1]
# Run in a fresh process: the exported files' ages, and whether TensorFlow was loaded.
IN_RUNTIME = """
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import runtimes
crops = np.load(sys.argv[2])
ages = {path: runtimes.file_ages(path, crops).tolist() for path in sys.argv[3:]}
print(json.dumps({"ages": ages, "tensorflow": "tensorflow" in sys.modules}))
"""


@pytest.fixture(scope="module")
def trained(real_folder, tmp_path_factory):
    """A small model trained for a few seconds on real faces, and 16 of its test faces'
    files (UTKFace's 200 x 200 JPEG crops)."""
    out = tmp_path_factory.mktemp("export") / "run"
    config = train_loop.TrainConfig(
        data=str(real_folder), out=str(out), limit=800, image_size=48, epochs=2,
        precision="float32",
    )  # fmt: skip
    run = train_loop.train(config, verbose=0)
    return out / "model.keras", run.model, [str(r.path) for r in run.test.records[:16]]


def _crops(paths):
    """The files decoded as another program decodes them: uint8 (n, 200, 200, 3)."""
    return np.stack([np.asarray(Image.open(path).convert("RGB")) for path in paths])


def _in_runtime(crops, files, tmp_path):
    np.save(tmp_path / "crops.npy", crops)
    command = [sys.executable, "-c", IN_RUNTIME, REPOSITORY, tmp_path / "crops.npy"]
    done = subprocess.run(
        [*map(str, command), *map(str, files)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert not found["tensorflow"]
    return {Path(path): np.array(ages) for path, ages in found["ages"].items()}


@pytest.mark.slow
def test_every_format_gives_predicts_ages_for_face_crops(trained, tmp_path):
    trained_file, _, paths = trained
    # Widened as train widens, each side of the centre by its own factor.
    model = readout.load_model(trained_file)
    model.age_widening = (30.0, 1.05, 1.2)
    model_file = tmp_path / "widened.keras"
    model.save(model_file)
    rows, _ = photos.predict_paths(model, paths, tta=True, crop="none")
    predicted = np.array([row.age for row in rows])
    crops = _crops(paths)
    files = [
        export.export_model(model_file, form, tmp_path / f"model.{form}")[1]
        for form in ("tflite", "onnx")
    ]
    assert runtimes.flex_ops(files[0]) == []
    for path, ages in _in_runtime(crops, files, tmp_path).items():
        np.testing.assert_allclose(ages, predicted, atol=0.05, err_msg=path.name)
    _, folder = export.export_model(model_file, "saved_model", tmp_path / "saved")
    np.testing.assert_allclose(
        export.saved_model_ages(folder, crops), predicted, atol=0.05
    )
    # Any size: the same faces at 120 px are resized inside, as predict resizes them.
    smaller = utk_data.resize_square(crops, 120).numpy()
    assert export.saved_model_ages(folder, smaller).shape == (16,)


@pytest.mark.slow
def test_quantized_files_are_smaller_and_change_the_ages_little(trained, tmp_path):
    model_file, model, paths = trained
    crops, sizes, ages = _crops(paths), {}, {}
    for quantize in export.QUANTIZATIONS:
        path = tmp_path / f"{quantize}.tflite"
        export.export_model(model_file, "tflite", path, quantize)
        sizes[quantize], ages[quantize] = path.stat().st_size, runtimes.file_ages(
            path, crops
        )
    assert sizes["dynamic"] < sizes["float16"] < sizes["none"]
    for quantize in ("float16", "dynamic"):
        assert np.abs(ages[quantize] - ages["none"]).max() < 1.0


def test_export_without_the_data_writes_the_file_and_says_so(
    tmp_path, monkeypatch, capsys
):
    config = train_loop.TrainConfig(arch="course_cnn", image_size=32)
    model_file = tmp_path / "model.keras"
    train_loop.make_model(config, initial_age=30.0).save(model_file)
    monkeypatch.setenv("UTKFACE_DATA", str(tmp_path / "nowhere"))
    arguments = ["export", "--model", model_file, "--format", "tflite"]
    assert train_loop.main(arguments) == 0
    assert (tmp_path / "model.tflite").is_file()
    assert "check skipped" in capsys.readouterr().out
    assert train_loop.main([*arguments, "--check"]) == 1
    assert "nowhere" in capsys.readouterr().err


def test_export_names_what_is_wrong(tmp_path, capsys):
    missing = tmp_path / "missing.keras"
    assert train_loop.main(["export", "--model", missing, "--format", "tflite"]) == 1
    assert f"{missing}: no such file" in capsys.readouterr().err
    text = tmp_path / "text.keras"
    text.write_text("not a model")
    assert train_loop.main(["export", "--model", text, "--format", "onnx"]) == 1
    assert f"{text}: not a Keras model file" in capsys.readouterr().err
    damaged = tmp_path / "damaged.keras"
    with zipfile.ZipFile(damaged, "w") as archive:
        archive.writestr("config.json", "{not json")
    assert train_loop.main(["export", "--model", damaged, "--format", "tflite"]) == 1
    assert f"{damaged}: not a readable Keras model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_loop.main(["export", "--model", damaged, "--format", "keras2"])
    assert "invalid choice: 'keras2'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="format must be one of"):
        export.export_model(damaged, "keras2")
