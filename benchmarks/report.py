"""What every benchmark reports: the median, spread and runs of a repeated measurement, each result
as one JSON line when it is measured, and all results as one JSON file (``--out``, read by
``benchmarks.run``)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "spread": max(values) - min(values), "runs": values}


def show(result: dict) -> None:
    print(json.dumps(result), flush=True)


def write(results: list[dict], out: str | None) -> None:
    if out:
        Path(out).write_text(json.dumps(results, indent=1))
