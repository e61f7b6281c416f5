"""What the library's typed settings (:class:`~n2vpipe.train.TrainConfig`,
:class:`~n2vpipe.predict.PredictConfig`) share: built from one section of the workflow config,
refusing unknown keys, and refusing values outside the choices and bounds ``config/schema.yaml``
sets (``tests/test_settings.py`` holds each class to the schema)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar, Self

Bound = tuple[float, bool, float | None]
"""(lower bound, whether the bound itself is allowed, upper bound or ``None``) of a numeric setting."""


class ConfigSection:
    """Mixin for a frozen dataclass holding one config section's settings.

    Subclasses name the section in messages (``title``) and list their ``choices`` and ``bounds``;
    their ``__post_init__`` passes :meth:`out_of_range` plus any checks of their own to :meth:`refuse`.
    """

    title: ClassVar[str]
    choices: ClassVar[Mapping[str, tuple[str, ...]]]
    bounds: ClassVar[Mapping[str, Bound]]

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Self:
        """Build from a config mapping, rejecting keys this version does not know."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown {cls.title} settings: {', '.join(unknown)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in dataclasses.asdict(self).items()}

    def out_of_range(self) -> list[str]:
        """A sentence for each setting outside its ``choices`` or ``bounds``."""
        problems = [f"{name} must be one of {', '.join(choices)}, not {getattr(self, name)!r}"
                    for name, choices in self.choices.items() if getattr(self, name) not in choices]
        for name, (low, low_inclusive, high) in self.bounds.items():
            value = getattr(self, name)
            below = value < low if low_inclusive else value <= low
            if below or (high is not None and value > high):
                limits = f"{'>=' if low_inclusive else '>'} {low}" + (f" and <= {high}" if high is not None else "")
                problems.append(f"{name} must be {limits}, not {value!r}")
        return problems

    def refuse(self, problems: list[str]) -> None:
        """Raise one ``ValueError`` listing ``problems``, if there are any."""
        if problems:
            raise ValueError(f"{self.title} settings: {'; '.join(problems)}")
