"""Run train_loop's command line, or one training step, with this machine's CPU split into
several logical devices, as tests of MirroredStrategy need: TensorFlow splits a device only
before it first runs, so each such test runs this file in a process of its own.

    CPU_REPLICAS=2 python tests/on_cpus.py train --strategy mirrored ...
    CPU_REPLICAS=2 python tests/on_cpus.py one-step    # prints JSON: both strategies' weights
"""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import devices  # noqa: E402  (first: TensorFlow's environment)
import tensorflow as tf  # noqa: E402

CPU = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    CPU, [tf.config.LogicalDeviceConfiguration()] * int(os.environ["CPU_REPLICAS"])
)

import numpy as np  # noqa: E402

import train_loop  # noqa: E402


def weights_after_steps(name, steps=3):
    """The model's variables after `steps` steps on one fixed global batch of 8 images,
    under the strategy `name`, and the last step's loss."""
    # Keras's batch norm on one device too: the replicas synchronise theirs, which the
    # fused kernel cannot (tests/test_model.py holds the fused kernel to Keras's; its
    # moving variance takes Bessel's factor, 8/7 here where a feature map is 1 × 1).
    config = train_loop.TrainConfig(
        out="unused", image_size=32, batch_size=8, precision="float32", ema=0.999,
        fused_batch_norm=False,
        # No dropout: its random masks differ between one device and two replicas.
        dropout=0.0,
    )  # fmt: skip
    config = train_loop.resolve_config(config)
    images = tf.random.stateless_uniform((8, 32, 32, 3), (1, 2))
    labels = {
        "age": tf.random.stateless_uniform((8, 1), (3, 4), 1, 90),
        "gender": tf.constant([0, 1] * 4),
        "race": tf.constant([0, 1, 2, 3] * 2),
    }
    strategy = devices.make_strategy(name)
    trainer = train_loop._make_trainer(config, strategy, 30.0, [], 10)
    batches = tf.data.Dataset.from_tensors((images, labels)).repeat(steps)
    for batch in strategy.experimental_distribute_dataset(batches):
        loss = trainer.train_step(*batch)
    variables = [variable.numpy().tolist() for variable in trainer.model.variables]
    return variables, float(loss), strategy.num_replicas_in_sync


def one_step():
    """Print as JSON the largest difference between the weights trained on one device and
    on the mirrored replicas, their losses and replica counts."""
    one, one_loss, one_replicas = weights_after_steps("one")
    two, two_loss, two_replicas = weights_after_steps("mirrored")
    difference = max(float(np.max(np.abs(np.subtract(a, b)))) for a, b in zip(one, two))
    print(
        json.dumps(
            {
                "difference": difference,
                "losses": [one_loss, two_loss],
                "replicas": [one_replicas, two_replicas],
            }
        )
    )
    return 0


if __name__ == "__main__":
    arguments = sys.argv[1:]
    sys.exit(one_step() if arguments == ["one-step"] else train_loop.main(arguments))
