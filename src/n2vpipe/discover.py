"""Finding acquisitions in the input folder, checking the input and results folders, and resolving
per-acquisition settings."""

from __future__ import annotations

import copy
import difflib
import functools
import os
import stat
import string
import tempfile
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from n2vpipe.errors import InputError
from n2vpipe.layout import acquisition_name, is_ome_zarr, plane_files

SAFE_NAME = r"[A-Za-z0-9_][A-Za-z0-9_.\-]*"
"""Acquisition names allowed as wildcards: letters, digits, ``_``, ``.``, ``-``; no leading dot or dash."""

SAFE_CHARACTERS = frozenset(string.ascii_letters + string.digits + "_.-")
"""The characters :data:`SAFE_NAME` allows."""

RESERVED_NAMES = {"logs": "folder in results_dir (the cron logs)",
                  "summary.csv": "batch summary table in results_dir",
                  "summary.html": "batch summary page in results_dir"}
"""Names of results_dir's own entries, which no acquisition may take, and what each one is."""


@functools.cache
def snakemake_periodicity() -> Any:
    """Snakemake's own test for wildcard values it refuses (``PeriodicWildcardError`` aborts the whole
    DAG). Imported when first needed: training reads :data:`RUN_ONLY` from this module, and the
    library's training and inference run without Snakemake too (benchmarks, dask workers)."""
    from snakemake.io import PeriodicityDetector

    return PeriodicityDetector()


@dataclass(frozen=True)
class SkippedInput:
    """An input left out of the run, and why."""

    path: Path
    reason: str

    def message(self) -> str:
        """One line naming the input and the reason (``PATH: skipped, REASON``)."""
        return f"{shown(self.path)}: skipped, {self.reason}"


def shown(path: Path) -> str:
    """``path`` as printed in messages: as is, or quoted (``repr``) when it holds characters that
    do not print (a newline), so every message stays one line."""
    text = str(path)
    return text if text.isprintable() else repr(text)


def repeated_tail(name: str) -> tuple[str, int] | None:
    """The unit Snakemake finds periodically repeated at the end of ``name`` and how often, or ``None``."""
    unit = snakemake_periodicity().is_periodic(name)
    if unit is None:
        return None
    count = 0
    while name.endswith(unit * (count + 1)):
        count += 1
    return unit, count


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be an acquisition name (a Snakemake wildcard value), or ``None`` when it can."""
    if not name:
        return "its name is empty once the TIFF/Zarr suffix is removed; rename it"
    if name.startswith("-"):
        return "its name starts with '-' (command-line tools would take it for an option); rename it"
    if name in RESERVED_NAMES:
        return f"its name {name!r} is the pipeline's own {RESERVED_NAMES[name]}; rename it"
    unsafe = sorted(set(name) - SAFE_CHARACTERS)
    if unsafe:
        listed = ", ".join(repr(character) for character in unsafe)
        return (f"its name contains {listed}; acquisition names may only use letters, digits, '_', '.', '-': "
                "rename it")
    tail = repeated_tail(name)
    if tail is not None:
        unit, count = tail
        return (f"its name ends in {unit!r} repeated {count} times, which Snakemake refuses as a wildcard "
                "value (PeriodicWildcardError): rename it")
    return None


def special_file_kind(mode: int) -> str:
    """What a file that is neither a regular file nor a folder is, in words."""
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device file"
    return "not a regular file"


def unreadable_reason(path: Path) -> str | None:
    """Why the input at ``path`` cannot be read as an image, or ``None`` when it opens.

    A folder must be an OME-Zarr image or hold .tif/.tiff plane files (an empty
    folder is left to the arrival check: it may still be filling). Regular
    files are opened (not read), so permissions, ACLs and mounts all have their say.
    """
    if path.is_symlink() and not path.exists():
        return f"it is a symbolic link to {os.readlink(path)}, which does not exist; fix or remove the link"
    try:
        mode = path.stat().st_mode
        if stat.S_ISDIR(mode):
            if is_ome_zarr(path) or plane_files(path) or not any(path.iterdir()):
                return None
            return "it is a folder with neither .tif/.tiff plane files nor OME-Zarr metadata; move it away"
        if not stat.S_ISREG(mode):
            return f"it is {special_file_kind(mode)}, not an image file; move it away"
        with open(path, "rb"):
            return None
    except PermissionError:
        return "it cannot be read (permission denied); give the pipeline's user read access"
    except OSError as error:
        return f"it cannot be opened ({error.strerror}); check the file"


def discover_acquisitions(input_dir: Path, patterns: Iterable[str]) -> tuple[dict[str, Path], list[SkippedInput]]:
    """Map acquisition names to input paths; list the inputs left out and why.

    Inputs whose names Snakemake or a shell cannot take safely, that cannot be
    read, and names claimed by two inputs are left out, each with its reason,
    so one odd file costs no other acquisition its results. Hidden files
    (leading ``.``) are ignored. Raises :class:`InputError` when ``input_dir``
    is not a folder.
    """
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise InputError(f"input_dir {input_dir} does not exist or is not a folder; mount it or fix input_dir")
    found: dict[str, Path] = {}
    skipped: list[SkippedInput] = []
    paths = sorted({p for pattern in patterns for p in input_dir.glob(pattern) if not p.name.startswith(".")})
    for path in paths:
        name = acquisition_name(path)
        reason = name_problem(name) or unreadable_reason(path)
        if reason is None and name in found:
            reason = f"acquisition name {name!r} is already taken by {found[name]}; rename one of them"
        if reason is None:
            found[name] = path
        else:
            skipped.append(SkippedInput(path, reason))
    return found, skipped


def described(configured: str | Path, resolved: Path) -> str:
    """A configured path, followed by where it resolves to when that differs."""
    return str(configured) if str(configured) == str(resolved) else f"{configured} (= {resolved})"


def overlap_problem(input_dir: str | Path, results_dir: str | Path) -> str | None:
    """Why ``results_dir`` and ``input_dir`` overlap (one is, contains or lies in the other), or ``None``.

    Both are resolved (symbolic links, relative paths) before they are compared.
    """
    inputs, results = Path(os.path.realpath(input_dir)), Path(os.path.realpath(results_dir))
    named = f"results_dir {described(results_dir, results)}"
    if results == inputs:
        relation = "is the same folder as"
    elif results.is_relative_to(inputs):
        relation = "lies inside"
    elif inputs.is_relative_to(results):
        relation = "contains"
    else:
        return None
    return (f"{named} {relation} input_dir {described(input_dir, inputs)}; results must be kept apart from "
            "the inputs: choose a results_dir outside input_dir")


def unwritable_problem(results_dir: str | Path) -> str | None:
    """Why ``results_dir`` cannot be created or written in, or ``None`` when it can.

    An existing folder is tried by creating (and removing) a temporary file in
    it; a missing one by its nearest existing parent, which must be a writable folder.
    """
    configured = results_dir
    folder = Path(os.path.realpath(results_dir))
    named = f"results_dir {described(configured, folder)}"
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if existing == folder:
        if not folder.is_dir():
            return f"{named} exists and is not a folder; remove it or choose another results_dir"
        try:
            with tempfile.TemporaryFile(dir=folder, prefix=".n2vpipe-write-test-"):
                return None
        except OSError as error:
            return f"{named} cannot be written in ({error.strerror}); fix its permissions or choose another"
    if not existing.is_dir():
        return f"{named} cannot be created: {existing} is a file, not a folder; choose another results_dir"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{named} cannot be created: {existing} is not writable; fix its permissions or choose another"
    return None


def folder_problems(input_dir: str | Path, results_dir: str | Path) -> list[str]:
    """Everything wrong with the input and results folders that makes any work impossible or unsafe."""
    if not Path(input_dir).is_dir():
        return [f"input_dir {input_dir} does not exist or is not a folder; mount it or fix input_dir"]
    if not os.access(input_dir, os.R_OK | os.X_OK):
        return [f"input_dir {input_dir} cannot be read (permission denied); give the pipeline's user access"]
    overlap = overlap_problem(input_dir, results_dir)
    if overlap is not None:
        return [overlap]
    unwritable = unwritable_problem(results_dir)
    return [] if unwritable is None else [unwritable]


def unmatched_overrides(override_names: Iterable[str], input_names: Collection[str]) -> list[str]:
    """Warnings for ``acquisitions:`` override keys that name no input, each with the closest input name."""
    warnings = []
    for key in override_names:
        if key in input_names:
            continue
        closest = difflib.get_close_matches(key, sorted(input_names), n=1)
        hint = f"did you mean {closest[0]!r}?" if closest else "no input has a similar name"
        warnings.append(f"acquisitions: {key!r} matches no input, so its settings are used by nothing; {hint}")
    return warnings


def model_from_source(config: Mapping[str, Any], acquisition: str) -> str:
    """The acquisition whose model ``acquisition`` uses (config ``model_from``); empty when it trains its own
    (unset, or naming itself: a global ``model_from: day1`` leaves day1 training)."""
    source = config_for(config, acquisition).get("model_from", "")
    return "" if source == acquisition else source


def model_from_problems(config: Mapping[str, Any], input_names: Collection[str]) -> list[str]:
    """A sentence for each acquisition in ``input_names`` whose ``model_from`` cannot be followed: it names no
    input (with the closest name), an acquisition that takes its model from elsewhere too, or sits beside
    ``model:``."""
    problems = []
    for name in input_names:
        source = model_from_source(config, name)
        if not source:
            continue
        if config_for(config, name).get("model"):
            problems.append(f"acquisition {name!r} sets both model: and model_from: {source!r}; keep one of them")
        elif source not in input_names:
            closest = difflib.get_close_matches(source, sorted(input_names), n=1)
            hint = f"did you mean {closest[0]!r}?" if closest else "no input has a similar name"
            problems.append(f"acquisition {name!r}: model_from: {source!r} names no acquisition found in "
                            f"{config['input_dir']} ({hint}); give the name of an acquisition trained in this run")
        elif model_from_source(config, source) or config_for(config, source).get("model"):
            problems.append(f"acquisition {name!r}: model_from: {source!r} names an acquisition that trains no model "
                            "of its own (it sets model: or model_from: too); name the acquisition that trains it")
    return problems


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


RUN_ONLY: dict[str, tuple[str, ...]] = {
    "train": ("device", "checkpoint_every"),
    "predict": ("device", "scheduler_address", "jobs"),
}
"""Settings that change how a job runs but not what it produces, per config section. They are not
job params, so editing them reruns nothing (scripts read them from the config), and a training
checkpoint written under other values of them is resumed. ``predict.jobs`` still reruns inference:
it changes which jobs there are."""


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
        """Build from the ``arrival`` config section (missing keys take the defaults, which
        ``tests/test_settings.py`` holds equal to the schema's)."""
        return cls(**(settings or {}))


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
