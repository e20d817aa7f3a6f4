"""An exported age model run in its own runtime, without TensorFlow: a .tflite file in
LiteRT (`ai-edge-litert`, the runtime of phones and edge devices), an .onnx file in ONNX
Runtime. Both take what `export` promises: RGB uint8 face crops (n, side, side, 3), and
answer their ages (n,).

    ages = runtimes.file_ages("model.tflite", faces)   # faces: uint8 (n, 200, 200, 3)
"""

from pathlib import Path

import numpy as np


def _litert_interpreter(path):
    """LiteRT's interpreter of a .tflite file (TensorFlow's, where LiteRT is missing)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # pragma: no cover - LiteRT has no build for this platform
        from tensorflow.lite.python.interpreter import Interpreter
    return Interpreter(model_path=str(path))


def litert_ages(path, images):
    """Ages (n,) that a .tflite file gives for uint8 images of its input size."""
    interpreter = _litert_interpreter(path)
    given = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(given["index"], np.shape(images))
    interpreter.allocate_tensors()
    interpreter.set_tensor(given["index"], np.asarray(images, np.uint8))
    interpreter.invoke()
    found = interpreter.get_output_details()[0]
    return interpreter.get_tensor(found["index"]).reshape(-1).astype(np.float64)


def flex_ops(path):
    """The names of the Select TF ("flex") ops in a .tflite file: none, for a file that
    runs in LiteRT alone."""
    details = _litert_interpreter(path)._get_ops_details()
    return sorted({op["op_name"] for op in details if "Flex" in op["op_name"]})


def onnx_ages(path, images):
    """Ages (n,) that an .onnx file gives for uint8 images of its input size."""
    import onnxruntime

    session = onnxruntime.InferenceSession(
        str(path), providers=["CPUExecutionProvider"]
    )
    name = session.get_inputs()[0].name
    found = session.run(None, {name: np.asarray(images, np.uint8)})[0]
    return np.asarray(found).reshape(-1).astype(np.float64)


def file_ages(path, images):
    """Ages (n,) that an exported .tflite or .onnx file gives for uint8 face crops."""
    if Path(path).suffix == ".onnx":
        return onnx_ages(path, images)
    return litert_ages(path, images)
