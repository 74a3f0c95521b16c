"""Results records: the one schema every stage appends to, one row per metric.

Each run writes ``<runs_dir>/<run_id>.csv`` (by default ``results/runs/``: :func:`default_runs_dir`)
atomically, rewriting the whole file, so a killed run never leaves a half-written row. Several
processes may add to the same run at once (the evaluation jobs of one checkpoint finishing together
on a cluster): every read-modify-write of a run's file holds an exclusive lock on
``<runs_dir>/.records.lock`` (POSIX ``lockf``, which NFS honours too), so none of their rows is lost.
:func:`read_records` reads every file back into one pandas DataFrame; the leaderboard is built from it.

A value is a number that was measured: a metric that could not be computed (NaN, no detections) is
refused here, so it is never written as a blank that reads as a number.

``details`` holds, as JSON, the choices that make numbers comparable or not beyond the named columns
(for example which LARS exclusion rule or alpha a run used, paper vs authors' code).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from lowssl.io import atomic_write_text
from lowssl.paths import home


def default_runs_dir() -> Path:
    """Where records go unless a stage is told otherwise: ``results/runs/`` under
    :func:`lowssl.paths.home` (``$LOWSSL_HOME``, else the working directory)."""
    return home() / "results" / "runs"


STAGES = ("pretrain", "linear", "knn", "semisup", "detection")
LOCK_NAME = ".records.lock"


@dataclass
class Record:
    run_id: str
    stage: str
    method: str
    recipe: str
    backbone: str
    pretrain_epochs: int
    dataset: str
    protocol: str
    branch: str
    metric: str
    value: float
    checkpoint_sha256: str = ""
    config_hash: str = ""
    git_commit: str = ""
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    details: str = "{}"
    # The seed of the run whose numbers these are (pre-training, or the random initialisation);
    # None where it is not known (a third-party checkpoint).
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"record stage '{self.stage}' is not one of {', '.join(STAGES)}")
        if not re.fullmatch(r"[A-Za-z0-9._-]+", self.run_id):
            raise ValueError(f"run_id '{self.run_id}' may only contain letters, digits, '.', '_' and '-'")
        if isinstance(self.details, dict):
            self.details = json.dumps(self.details, sort_keys=True)
        self.value = float(self.value)
        if not math.isfinite(self.value):
            raise ValueError(
                f"metric '{self.metric}' of run '{self.run_id}' is {self.value}: it could not be computed, "
                "so it is not recorded as a number"
            )
        self.seed = None if self.seed is None or self.seed == "" or pd.isna(self.seed) else int(self.seed)


COLUMNS = [f.name for f in fields(Record)]


def pretrain_budget(config: dict) -> str:
    """What a pre-training run cost, from its resolved config (a checkpoint's ``config``), as records'
    ``details.pretrain_budget``: numbers from different budgets are never pooled or compared."""
    data = config.get("data") or {}
    images = data.get("subset") or "all"
    return f"{images} {data.get('dataset', '?')} images x {config.get('epochs', '?')} epochs, batch {config.get('batch_size', '?')}"


def recorded_budget(details: str) -> str:
    """The ``pretrain_budget`` a record's ``details`` JSON holds ("" where none was recorded)."""
    return str(json.loads(details or "{}").get("pretrain_budget", ""))


#: Protocol fields that describe a protocol or vary over the runs a cell pools, not how it evaluates.
NOT_SETTINGS = ("name", "seed", "note", "source")


def recorded_protocol(details: str) -> dict:
    """The evaluation settings a record's ``details`` JSON holds: its resolved ``protocol`` less the
    fields of :data:`NOT_SETTINGS` ({} where none was recorded). Two records under one protocol name
    but other settings were made before and after a preset changed."""
    protocol = json.loads(details or "{}").get("protocol") or {}
    return {key: value for key, value in protocol.items() if key not in NOT_SETTINGS}


def write_records(records: list[Record], runs_dir: str | Path | None = None) -> Path:
    """Write (or replace) the records of one run as ``<runs_dir>/<run_id>.csv``."""
    if not records:
        raise ValueError("no records to write")
    run_ids = {r.run_id for r in records}
    if len(run_ids) != 1:
        raise ValueError(f"records of one file must share one run_id, got {sorted(run_ids)}")
    frame = pd.DataFrame([asdict(r) for r in records], columns=COLUMNS).astype({"seed": "Int64"})
    runs_dir = Path(runs_dir or default_runs_dir())
    with _locked(runs_dir):
        return atomic_write_text(runs_dir / f"{run_ids.pop()}.csv", frame.to_csv(index=False))


@contextlib.contextmanager
def _locked(runs_dir: Path) -> Iterator[None]:
    """Hold the records folder's lock (re-entrant within a process through ``_held``)."""
    key = str(runs_dir.resolve())
    if key in _held:
        yield
        return
    runs_dir.mkdir(parents=True, exist_ok=True)
    with open(runs_dir / LOCK_NAME, "a+") as lock:
        fcntl.lockf(lock, fcntl.LOCK_EX)
        _held.add(key)
        try:
            yield
        finally:
            _held.discard(key)
            fcntl.lockf(lock, fcntl.LOCK_UN)


_held: set[str] = set()


def _result_key(record: Record) -> tuple[str, str, str, str, str]:
    return record.stage, record.protocol, record.branch, record.dataset, record.metric


def append_records(records: list[Record], runs_dir: str | Path | None = None) -> Path:
    """Add rows to a run's file, replacing earlier rows of the same result: (stage, protocol, branch,
    dataset, metric), so e.g. a held-out result never overwrites the val result of the same checkpoint."""
    runs_dir = Path(runs_dir or default_runs_dir())
    path = runs_dir / f"{records[0].run_id}.csv"
    with _locked(runs_dir):  # the read and the write, as one step for every other writer
        if path.exists():
            old = [Record(**row) for row in _read_csv(path).to_dict("records")]
            new_keys = {_result_key(r) for r in records}
            records = [r for r in old if _result_key(r) not in new_keys] + records
        return write_records(records, runs_dir)


def _read_csv(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    if "seed" not in frame.columns:  # files of lowssl before the seed column: the seed is not known
        frame["seed"] = ""
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"results file {path} lacks columns {missing}; it was not written by lowssl")
    frame["value"] = frame["value"].astype(float)
    frame["pretrain_epochs"] = frame["pretrain_epochs"].astype(int)
    frame["seed"] = pd.to_numeric(frame["seed"].replace("", None)).astype("Int64")
    return frame[COLUMNS]


def read_records(runs_dir: str | Path | None = None) -> pd.DataFrame:
    """All records under ``runs_dir`` as one DataFrame with :data:`COLUMNS` (empty if none)."""
    paths = sorted(Path(runs_dir or default_runs_dir()).glob("*.csv"))
    if not paths:
        return pd.DataFrame(columns=COLUMNS)
    return pd.concat([_read_csv(p) for p in paths], ignore_index=True)
