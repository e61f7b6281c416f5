"""Helpers shared by the benchmark scripts: shapes on the command line, result files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def parse_shape(text: str) -> tuple[int, int, int]:
    """``64x512x512`` → (64, 512, 512)."""
    z, y, x = (int(v) for v in text.lower().split("x"))
    return z, y, x


def save_results(name: str, machine: str, rows: list[dict[str, Any]], table: list[str]) -> Path:
    """Write ``results/<name>.json`` and ``results/<name>.md`` (the given table lines); return the PNG path to use."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text("\n".join(table) + "\n")
    return RESULTS / f"{name}.png"
