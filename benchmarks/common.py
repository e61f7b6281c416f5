"""Helpers shared by the benchmark scripts: command-line values, workers, the machine, result files."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import yaml

RESULTS = Path(__file__).parent / "results"
SCHEMA = Path(__file__).resolve().parents[1] / "config" / "schema.yaml"
RESULT_PREFIX = "RESULT "
"""A worker prints its result as one line: this prefix, then JSON."""

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


def shape_text(shape: tuple[int, ...] | list[int]) -> str:
    """(32, 128, 128) → ``32x128x128``."""
    return "x".join(map(str, shape))


def schema_default(section: str, key: str) -> Any:
    """The default of ``section.key`` in config/schema.yaml (e.g. predict.block)."""
    schema = yaml.safe_load(SCHEMA.read_text())
    return schema["properties"][section]["properties"][key]["default"]


def run_worker(command: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run a worker in a fresh interpreter; return the JSON it printed after :data:`RESULT_PREFIX`."""
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode:
        raise RuntimeError(f"{command[0]} worker failed ({done.returncode}):\n{done.stdout[-3000:]}\n"
                           f"{done.stderr[-3000:]}")
    line = next(line for line in reversed(done.stdout.splitlines()) if line.startswith(RESULT_PREFIX))
    return json.loads(line[len(RESULT_PREFIX):])


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages (as ``uptime`` prints them)."""
    return [round(v, 2) for v in os.getloadavg()]


def cpu_model() -> str:
    """The CPU model name (from /proc/cpuinfo, else platform.processor)."""
    fallback = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return fallback
    return next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")), fallback)


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
