"""Rounds in a rotating order: how the benchmarks here time their contenders."""


def rotating_rounds(contenders, rounds):
    """For each round, (its number from 0, the order it ran in, {name: result}): every
    contender's `run()` once, in an order that starts one later each round, so that none
    always runs first, while the processor is coolest, or last."""
    names = tuple(contenders)
    for number in range(rounds):
        shift = number % len(names)
        order = names[shift:] + names[:shift]
        yield number, order, {name: contenders[name].run() for name in order}
