"""Finding acquisitions in the input folder and resolving per-acquisition settings."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from n2vpipe.io import acquisition_name

SAFE_NAME = r"[A-Za-z0-9][A-Za-z0-9_.\-]*"
"""Acquisition names allowed as wildcards: letters, digits, ``_``, ``.``, ``-``; no leading dot."""


def discover_acquisitions(input_dir: Path, patterns: Iterable[str]) -> tuple[dict[str, Path], list[str]]:
    """Map acquisition names to input paths; return problems found as messages.

    Files whose names are not :data:`SAFE_NAME`, and names claimed by two files,
    are left out with a message naming them, so one odd file costs no other
    acquisition its results.
    """
    input_dir = Path(input_dir)
    found: dict[str, Path] = {}
    problems: list[str] = []
    if not input_dir.is_dir():
        return found, [f"input_dir {input_dir} does not exist or is not a folder"]
    paths = sorted({p for pattern in patterns for p in input_dir.glob(pattern) if not p.name.startswith(".")})
    for path in paths:
        name = acquisition_name(path)
        if not re.fullmatch(SAFE_NAME, name):
            problems.append(f"{path}: skipped, acquisition names may only use letters, digits, '_', '.', '-'")
        elif name in found:
            problems.append(f"{path}: skipped, acquisition name {name!r} is already taken by {found[name]}")
        else:
            found[name] = path
    return found, problems


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``base`` with ``override`` merged in, recursing into nested mappings."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def config_for(config: Mapping[str, Any], acquisition: str) -> dict[str, Any]:
    """The whole config as it applies to one acquisition (its overrides merged in)."""
    overrides = config.get("acquisitions", {}).get(acquisition, {})
    return deep_merge({k: v for k, v in config.items() if k != "acquisitions"}, overrides)
