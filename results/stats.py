"""Numbers over seeds: mean, 95 % confidence interval (Student t) and n, and paired differences.

A cell of a table is the mean over the seeds that ran it, with the half-width of the two-sided 95 %
Student-t interval, ``t(0.975, n - 1) * sd / sqrt(n)`` (sd with ``ddof=1``; ``scipy.stats.t``). One
seed has no interval: it prints ``n=1``, never a ``±``. A gain is the paper's comparison, ours minus
baseline at the same budget, taken per seed (paired) and summarised the same way.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from lowssl.errors import BadInput

CONFIDENCE = 0.95


class AggregationError(BadInput, ValueError):
    """Numbers that must not be pooled: other protocols, datasets or budgets, or unpaired seeds."""


@dataclass(frozen=True)
class Summary:
    mean: float
    half_width: float | None  # None with one value: no interval
    n: int

    @property
    def interval(self) -> tuple[float, float] | None:
        if self.half_width is None:
            return None
        return self.mean - self.half_width, self.mean + self.half_width

    def excludes_zero(self) -> bool:
        return self.interval is not None and (self.interval[0] > 0 or self.interval[1] < 0)

    def format(self, decimals: int = 2, signed: bool = False) -> str:
        sign = "+" if signed else ""
        if self.half_width is None:
            return f"{self.mean:{sign}.{decimals}f} (n=1)"
        return f"{self.mean:{sign}.{decimals}f} ± {self.half_width:.{decimals}f} (n={self.n})"


def summarise(values: Sequence[float]) -> Summary:
    """Mean and 95 % Student-t half-width of independent values (one per seed)."""
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        raise AggregationError("no values to summarise")
    if not np.isfinite(data).all():
        raise AggregationError(f"non-finite values cannot be summarised: {data.tolist()}")
    if data.size == 1:
        return Summary(float(data[0]), None, 1)
    t = stats.t.ppf(0.5 + CONFIDENCE / 2, df=data.size - 1)
    return Summary(float(data.mean()), float(t * data.std(ddof=1) / math.sqrt(data.size)), int(data.size))


def paired_difference(ours: Mapping[int, float], baseline: Mapping[int, float]) -> Summary:
    """``ours - baseline`` per seed, summarised; both must hold the same seeds (a gain is paired)."""
    if set(ours) != set(baseline):
        raise AggregationError(
            f"a paired gain needs the same seeds on both sides: ours has {sorted(ours)}, "
            f"baseline {sorted(baseline)}; run the missing seeds or drop the extra ones"
        )
    return summarise([ours[seed] - baseline[seed] for seed in sorted(ours)])


def require_one_protocol(settings: Mapping[str, Mapping], cell: str) -> None:
    """Refuse to pool records of one protocol name whose settings differ: ``settings`` maps each run id
    to its record's settings (:func:`lowssl.records.recorded_protocol`); the error names the fields
    that differ and the runs on each side."""
    runs_by_variant: dict[str, list[str]] = {}
    for run_id, setting in settings.items():
        runs_by_variant.setdefault(json.dumps(dict(setting), sort_keys=True), []).append(run_id)
    if len(runs_by_variant) <= 1:
        return
    variants = [json.loads(text) for text in runs_by_variant]
    keys = sorted({key for variant in variants for key in variant})
    listed = "; ".join(
        f"{key}: {' vs '.join(json.dumps(variant.get(key)) for variant in variants)}"
        for key in keys
        if len({json.dumps(variant.get(key)) for variant in variants}) > 1
    )
    runs = " vs ".join(", ".join(run_ids) for run_ids in runs_by_variant.values())
    raise AggregationError(
        f"records of {cell} share a protocol name but not its settings ({listed}; runs {runs}): the "
        "preset changed between runs; re-run the older records under the current preset, or move them "
        "to another records folder"
    )


def require_one_budget(budgets: Iterable[tuple[str, str]], cell: str) -> None:
    """Refuse to pool records of different pre-training budgets: ``budgets`` holds each record's run id
    and its budget (:func:`lowssl.records.recorded_budget`, "" where none was recorded); the error names
    the budgets and the runs of each."""
    runs_by_budget: dict[str, list[str]] = {}
    for run_id, budget in budgets:
        runs = runs_by_budget.setdefault(budget, [])
        if run_id not in runs:
            runs.append(run_id)
    if len(runs_by_budget) <= 1:
        return
    listed = "; ".join(
        f"{budget or 'unrecorded'} (runs {', '.join(sorted(runs))})"
        for budget, runs in sorted(runs_by_budget.items())
    )
    unrecorded = (
        " (records without a budget predate its recording: re-run them to record theirs)"
        if "" in runs_by_budget
        else ""
    )
    raise AggregationError(
        f"records of {cell} come from different pre-training budgets ({listed}), which are never pooled: "
        f"keep each budget's records in its own records folder{unrecorded}"
    )
