"""The machine: its processor and accelerators, the compute type, the tf.distribute strategy.

    strategy = devices.make_strategy("auto")     # one device, mirrored GPUs, workers, a TPU
    devices.auto_precision(devices.has_gpu())    # "mixed_float16", "mixed_bfloat16", ...
    devices.describe_machine()                   # what metrics.json records

Importing this module sets TensorFlow's environment before TensorFlow loads (the Keras
backend, TensorFlow's oneDNN CPU kernels): import it (or train_loop, which imports it
first) before TensorFlow.
"""

import json
import os
import platform

# Both must be set before TensorFlow is first imported, which reads them only then:
# Keras 3 runs on TensorFlow here, and TensorFlow turns its oneDNN kernels on by itself
# only on processors with AVX-512 VNNI or newer; on an AVX2-only AMD EPYC they made the CPU
# preset's train step faster (EXPERIMENTS.md: `bench/bench_step.py onednn=0 onednn=1`).
# Set TF_ENABLE_ONEDNN_OPTS=0 before the first import to compare.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

# The strategies of `--strategy`: "auto" chooses one of the others for the machine.
STRATEGIES = ("auto", "one", "mirrored", "multi_worker", "tpu")
# Environment variables that a Colab TPU runtime (or a Cloud TPU VM) sets.
TPU_VARIABLES = ("COLAB_TPU_ADDR", "TPU_NAME", "TPU_ACCELERATOR_TYPE")

# ---------------------------------------------------------------------------------------
# What the machine has
# ---------------------------------------------------------------------------------------


def has_gpu():
    """True when TensorFlow sees a GPU."""
    return bool(tf.config.list_physical_devices("GPU"))


def has_tpu():
    """True on a TPU runtime (by the variables it sets; TensorFlow finds a TPU only after
    connecting to it)."""
    return any(os.environ.get(name) for name in TPU_VARIABLES)


def auto_precision(gpu):
    """The compute type `--precision auto` chooses: mixed float16 on a GPU (its tensor
    cores), mixed bfloat16 on a TPU or a processor with bfloat16 units, float32 elsewhere
    (where bfloat16 is emulated and slow)."""
    if gpu:
        return "mixed_float16"
    return "mixed_bfloat16" if has_tpu() or bfloat16_units() else "float32"


def _cpu_info(key):
    """The value of the first `key` line of Linux's /proc/cpuinfo, or None elsewhere."""
    try:
        with open("/proc/cpuinfo") as file:
            line = next((line for line in file if line.startswith(key)), None)
    except OSError:
        return None
    return line.split(":", 1)[1].strip() if line else None


# The processor features that set how fast TensorFlow's CPU kernels run, and the speed of
# the same run on one processor or another.
VECTOR_FLAGS = (
    "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16",
)  # fmt: skip


def cpu_flags(names=VECTOR_FLAGS):
    """The features among `names` that Linux lists for the processor, in that order."""
    present = set((_cpu_info("flags") or "").split())
    return [name for name in names if name in present]


def cpu_name():
    """The processor's model name."""
    return _cpu_info("model name") or platform.processor() or platform.machine()


def bfloat16_units():
    """The processor's bfloat16 matrix features (Intel AMX, AVX512-BF16) that Linux lists,
    such as ["amx_bf16", "avx512_bf16"]; [] without them or elsewhere."""
    return sorted(cpu_flags(("amx_bf16", "avx512_bf16")))


def onednn_enabled():
    """Whether TensorFlow runs its oneDNN CPU kernels (None if it cannot tell)."""
    try:
        from tensorflow.python.util import _pywrap_util_port
    except ImportError:
        return None
    return bool(_pywrap_util_port.IsMklEnabled())


def describe_kernels():
    """One line for benchmarks: oneDNN's state, and the processor's bfloat16 units."""
    units = ", ".join(bfloat16_units()) or "none"
    return f"oneDNN kernels: {onednn_enabled()}; bfloat16 units: {units}"


def describe_machine():
    """One line: the processor, its cores and features, the GPU and the software versions."""
    flags = " ".join(cpu_flags()) or "none of " + " ".join(VECTOR_FLAGS)
    gpus = [device.name for device in tf.config.list_physical_devices("GPU")]
    return (
        f"{os.cpu_count()} CPU cores ({cpu_name()}, {platform.machine()}; {flags}), "
        f"{'GPU ' + ', '.join(gpus) if gpus else 'no GPU'}; TensorFlow {tf.__version__}, "
        f"Keras {keras.__version__}, Python {platform.python_version()}"
    )


# ---------------------------------------------------------------------------------------
# tf.distribute strategies
# ---------------------------------------------------------------------------------------


def _workers_in_tf_config():
    """The number of machines that TF_CONFIG lists (0 without it)."""
    cluster = json.loads(os.environ.get("TF_CONFIG") or "{}").get("cluster", {})
    return sum(len(cluster.get(kind, [])) for kind in ("chief", "worker"))


def auto_strategy():
    """The strategy `--strategy auto` chooses: several workers when TF_CONFIG lists them,
    the TPU of a TPU runtime, all GPUs when there are several, otherwise one device."""
    if _workers_in_tf_config() > 1:
        return "multi_worker"
    if has_tpu():
        return "tpu"
    return "mirrored" if len(tf.config.list_physical_devices("GPU")) > 1 else "one"


def make_strategy(name="auto"):
    """A tf.distribute strategy: "one" (TensorFlow's default strategy, one device),
    "mirrored" (a replica per GPU, or per logical CPU device without a GPU),
    "multi_worker" (the machines of TF_CONFIG), "tpu" or "auto" (auto_strategy)."""
    if name not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {name!r}")
    name = auto_strategy() if name == "auto" else name
    if name == "one":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        cpus = tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in gpus or cpus])
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return _tpu_strategy()


def _tpu_strategy():
    """The strategy of the TPU this runtime is attached to (not tested here: the tests run
    on CPUs)."""
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def strategy_name(strategy):
    """The `--strategy` name of a tf.distribute strategy, such as "mirrored"."""
    kinds = (
        (tf.distribute.MultiWorkerMirroredStrategy, "multi_worker"),
        (tf.distribute.MirroredStrategy, "mirrored"),
        (tf.distribute.TPUStrategy, "tpu"),
    )
    return next((name for kind, name in kinds if isinstance(strategy, kind)), "one")


def wait_for_all(strategy):
    """Wait until every worker of a multi-worker strategy gets here: a worker that ended
    before the others would look like a crash to them."""
    if strategy_name(strategy) == "multi_worker":
        strategy.reduce(
            tf.distribute.ReduceOp.SUM,
            strategy.run(tf.function(lambda: 1.0)),
            axis=None,
        )


def is_chief(strategy):
    """True for the process that writes files: the only one, or the chief of several
    workers (the worker with index 0 when TF_CONFIG names no chief), as the strategy says.
    """
    return strategy.extended.should_checkpoint
