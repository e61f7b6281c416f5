"""Finding acquisitions in the input folder and resolving per-acquisition settings."""

from __future__ import annotations

import copy
import os
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
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


def canonical(value: Any) -> Any:
    """``value`` with every mapping's keys sorted (recursively), so its ``repr`` is stable.

    Snakemake compares ``params`` by ``repr``; sorting keeps a reordered config
    file from looking like a changed value.
    """
    if isinstance(value, Mapping):
        return {key: canonical(value[key]) for key in sorted(value)}
    if isinstance(value, (list, tuple)):
        return [canonical(item) for item in value]
    return value


@dataclass(frozen=True)
class ArrivalRule:
    """When an acquisition counts as completely arrived (config section ``arrival``).

    ``min_age_seconds``: neither the input nor (for a folder) anything inside it
    was modified or renamed for at least this long (0 = no wait).
    ``marker_suffix``: when not empty, the file ``{acquisition}{marker_suffix}``
    (e.g. ``sample_07.done``) must exist next to the input.
    """

    min_age_seconds: float = 0.0
    marker_suffix: str = ""

    @classmethod
    def from_mapping(cls, settings: Mapping[str, Any] | None) -> ArrivalRule:
        """Build from the ``arrival`` config section (missing keys take the defaults)."""
        settings = settings or {}
        return cls(float(settings.get("min_age_seconds", 0)), str(settings.get("marker_suffix", "")))


def last_change(path: Path) -> float:
    """Latest change time (max of mtime and ctime) of a file, or of a folder and everything in it.

    ctime is included because copies that preserve timestamps (``cp -p``,
    ``rsync -a``) set an old mtime; the ctime still shows when the file landed.
    """
    path = Path(path)
    stat = path.stat()
    newest = max(stat.st_mtime, stat.st_ctime)
    if path.is_dir():
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                try:
                    entry = os.stat(os.path.join(root, name), follow_symlinks=False)
                except FileNotFoundError:  # removed while we looked: still changing
                    return time.time()
                newest = max(newest, entry.st_mtime, entry.st_ctime)
    return newest


def arrival_pending(name: str, path: Path, rule: ArrivalRule, now: float | None = None) -> str | None:
    """Why acquisition ``name`` at ``path`` is not complete yet, or ``None`` when it is."""
    path = Path(path)
    if rule.marker_suffix:
        marker = path.parent / f"{name}{rule.marker_suffix}"
        if not marker.exists():
            return f"waiting for marker file {marker}"
    if rule.min_age_seconds > 0:
        now = time.time() if now is None else now
        try:
            age = now - last_change(path)
        except FileNotFoundError:
            return "input disappeared while it was checked"
        if age < rule.min_age_seconds:
            return f"changed {max(age, 0):.0f}s ago (< arrival.min_age_seconds={rule.min_age_seconds:g})"
    return None


def split_arrived(found: Mapping[str, Path], rule: ArrivalRule,
                  now: float | None = None) -> tuple[dict[str, Path], dict[str, str]]:
    """Split discovered acquisitions into complete ones and still-arriving ones (name -> reason)."""
    now = time.time() if now is None else now
    arrived: dict[str, Path] = {}
    pending: dict[str, str] = {}
    for name, path in found.items():
        reason = arrival_pending(name, path, rule, now)
        if reason is None:
            arrived[name] = path
        else:
            pending[name] = reason
    return arrived, pending
