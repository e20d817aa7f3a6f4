"""The learning-rate schedules of the training loop: a linear warm-up from a hundredth of
the peak rate to the peak, then a cosine or a linear decay to zero at the last step; or
the peak rate throughout.

Usage:

    from schedules import learning_rate_schedule

    learning_rate = learning_rate_schedule(
        "linear", peak=3e-3, total_steps=14_000, warmup_steps=266
    )
    optimizer = keras.optimizers.AdamW(learning_rate)
"""

import keras
from keras import ops

SCHEDULES = ("cosine", "linear", "constant")
# Where a warm-up starts, as a fraction of the peak rate.
WARMUP_START = 0.01


def learning_rate_schedule(name, peak, total_steps, warmup_steps):
    """The learning rate of `name` (one of SCHEDULES): a float for "constant", else a
    schedule of the optimizer's step that reaches 0 at `total_steps`."""
    if name == "constant":
        return peak
    if name not in SCHEDULES:
        raise ValueError(f"schedule: {name!r} is not one of {', '.join(SCHEDULES)}")
    total_steps = max(1, int(total_steps))
    warmup_steps = max(0, min(int(warmup_steps), total_steps - 1))
    if name == "linear":
        return WarmupLinearDecay(peak, total_steps, warmup_steps)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=peak * WARMUP_START if warmup_steps else peak,
        decay_steps=total_steps - warmup_steps,
        warmup_target=peak if warmup_steps else None,
        warmup_steps=warmup_steps,
    )


class WarmupLinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """A linear warm-up to `peak` over `warmup_steps`, then a straight line down to 0 at
    `total_steps` (A. Defazio et al., *When, Why and How Much? Adaptive Learning Rate
    Scheduling by Refinement*, 2023: linear decay matched or beat cosine decay there).
    """

    def __init__(self, peak, total_steps, warmup_steps=0):
        if not 0 <= warmup_steps < total_steps:
            raise ValueError(
                f"warmup_steps ({warmup_steps}) must lie in [0, total_steps "
                f"({total_steps}))"
            )
        self.peak = float(peak)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        start = self.peak * WARMUP_START
        rising = start + (self.peak - start) * step / max(self.warmup_steps, 1)
        left = (self.total_steps - step) / (self.total_steps - self.warmup_steps)
        falling = self.peak * ops.clip(left, 0.0, 1.0)
        return ops.where(step < self.warmup_steps, rising, falling)

    def get_config(self):
        return {
            "peak": self.peak,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
        }
