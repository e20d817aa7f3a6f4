"""The command-line flags of a training run: one for each field of config.TrainConfig,
each value checked as it is parsed, so that a bad value names its flag.

    parser = argparse.ArgumentParser()
    add_config_arguments(parser)                  # --image-size, --epochs, ...
    config = config_from_arguments(parser.parse_args(["--epochs", "5"]))
"""

import argparse
import dataclasses
from typing import Optional

from config import PRESETS, TrainConfig, flag_name


def checked_number(kind, bounds):
    """A flag's argparse type: the value parsed as `kind`, refused out of `bounds`."""

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        problem = bounds.problem(value) if bounds else None
        if problem:
            raise argparse.ArgumentTypeError(f"{problem}, got {text}")
        return value

    parse.__name__ = kind.__name__  # what argparse names in its errors
    return parse


def checked_text(parse):
    """A flag's argparse type: the text, refused unless `parse` admits it."""

    def check(text):
        try:
            parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
        return text

    check.__name__ = parse.__name__
    return check


def _value_type(annotation):
    """The type a flag parses for a field annotated int, float, str or Optional of them."""
    kinds = [
        kind
        for kind in getattr(annotation, "__args__", (annotation,))
        if kind is not type(None)
    ]
    return kinds[0] if kinds and kinds[0] in (int, float) else str


def add_config_arguments(parser):
    """One flag per TrainConfig field: --image-size for image_size, and so on."""
    from_preset = set(PRESETS["cpu"]) | {"image_size", "jit_compile"}
    for config_field in dataclasses.fields(TrainConfig):
        help_text = config_field.metadata["help"]
        if config_field.name in from_preset:
            help_text += " (default: from the preset)"
        elif config_field.default is not None:
            help_text += f" (default: {config_field.default})"
        if config_field.type in (bool, Optional[bool]):
            parser.add_argument(
                flag_name(config_field.name),
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_text,
            )
            continue
        kind = _value_type(config_field.type)
        bounds, parse = config_field.metadata["bounds"], config_field.metadata["parse"]
        parser.add_argument(
            flag_name(config_field.name),
            type=(
                checked_text(parse)
                if parse
                else checked_number(kind, bounds) if kind is not str else str
            ),
            choices=config_field.metadata["choices"],
            default=None,
            help=help_text,
        )


def config_from_arguments(arguments):
    """A TrainConfig from parsed arguments: flags not given keep the dataclass defaults."""
    given = {
        config_field.name: getattr(arguments, config_field.name)
        for config_field in dataclasses.fields(TrainConfig)
        if getattr(arguments, config_field.name) is not None
    }
    return TrainConfig(**given)
