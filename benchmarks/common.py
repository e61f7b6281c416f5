"""Helpers shared by the benchmark scripts: shapes on the command line, result files."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"

PRINT_PEAK_RSS_KIB = (
    "\nprint(next(int(line.split()[1]) for line in open('/proc/self/status') if line.startswith('VmHWM:')))"
)
"""Code to append to a ``python -c`` worker: prints its own peak RSS in KiB (VmHWM).

Not ``ru_maxrss``: on Linux a child keeps its parent's high-water mark through fork and exec,
so a worker started by a large parent would report the parent's peak.
"""


def parse_shape(text: str) -> tuple[int, int, int]:
    """``64x512x512`` → (64, 512, 512)."""
    z, y, x = (int(v) for v in text.lower().split("x"))
    return z, y, x


def parse_setting(text: str) -> tuple[str, Any]:
    """``key=value`` with the value parsed as JSON when it parses, else kept as a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def save_results(name: str, machine: str, rows: list[dict[str, Any]], table: list[str]) -> Path:
    """Write ``results/<name>.json`` and ``results/<name>.md`` (the given table lines); return the PNG path to use."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text("\n".join(table) + "\n")
    return RESULTS / f"{name}.png"
