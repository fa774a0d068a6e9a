"""How the training flags are declared and checked: ``flag`` (a dataclass field with its
``--help`` text), ``FlagGroup`` (the base of the flag groups in ``args``, which checks their
values on construction) and ``check_at_least``."""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import field
from typing import Literal


def flag(text: str, **kwargs) -> dataclasses.Field:
    """A dataclass field with its ``--help`` text; ``kwargs`` go to ``dataclasses.field``."""
    return field(metadata={"help": text}, **kwargs)


class FlagGroup:
    """Base of the flag groups: ``validate()`` runs on construction and checks every group the
    dataclass combines (each group's ``validate`` calls ``super().validate()``). ``Literal``
    fields are checked here against their choices."""

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        for name, choices in _choices(type(self)).items():
            value = getattr(self, name)
            if value not in choices:
                raise ValueError(f"--{name} must be one of {choices}, got {value!r}")


def _choices(cls: type) -> dict[str, tuple]:
    """``{field: allowed values}`` for the ``Literal`` fields of dataclass ``cls`` (``None``
    included where the field is optional)."""
    found = {}
    for name, hint in typing.get_type_hints(cls).items():
        options = typing.get_args(hint) if typing.get_origin(hint) is not Literal else (hint,)
        for option in options:
            if typing.get_origin(option) is Literal:
                found[name] = typing.get_args(option) + ((None,) if type(None) in options else ())
    return found


def check_at_least(args, minimum: float, *names: str) -> None:
    """Raise ``ValueError`` naming the first of the fields ``names`` of ``args`` that is below
    ``minimum`` or not a finite number."""
    for name in names:
        value = getattr(args, name)
        if not math.isfinite(value) or value < minimum:
            raise ValueError(f"--{name} must be >= {minimum:g}, got {value}")
