"""Results records: the one schema every stage appends to, one row per metric.

Each run writes ``<runs_dir>/<run_id>.csv`` (by default ``results/runs/``: :func:`default_runs_dir`)
atomically, rewriting the whole file, so a killed run never leaves a half-written row. Several
processes may add to the same run at once (the evaluation jobs of one checkpoint finishing together
on a cluster): every read-modify-write of a run's file holds an exclusive lock on
``<runs_dir>/.records.lock`` (POSIX ``lockf``, which NFS honours too), so none of their rows is lost.
:func:`read_records` reads every file back into one pandas DataFrame; the leaderboard is built from it.

A value is a number that was measured: a metric that could not be computed (NaN, no detections) is
refused here, so it is never written as a blank that reads as a number.

A records file comes back through :func:`read_records` only row by verified row: each row ends with
``row_sha256``, the SHA-256 of its other cells, so a row cut short (``98.6`` -> ``9``, a file copied
in part) or altered is skipped with a :class:`RecordsWarning` naming the file and line, never read as
a number; a file that is not lowssl's (a foreign CSV, binary junk) is skipped whole the same way, and
the rest of the folder is still read. Files of lowssl before the checksums (no ``row_sha256`` column)
are still read, with one warning that they are unverified: their rows are checked only for what a cut
leaves (missing fields, an unterminated last line, a value that is no number). Appending to a run
whose file is damaged keeps that file aside as ``<run_id>.csv.damaged-<time>`` (named in a warning)
and writes its whole rows with the new ones, so neither the new result nor the evidence is lost.

Text cells are written spreadsheet-safe (:func:`spreadsheet_safe`: a method name ``=HYPERLINK(...)``
from a checkpoint is never run as a formula) and read back as the original strings.

``details`` holds, as JSON, the choices that make numbers comparable or not beyond the named columns
(for example which LARS exclusion rule or alpha a run used, paper vs authors' code).
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import io
import json
import math
import os
import re
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from lowssl.errors import RunFailed
from lowssl.io import DiskFullError, atomic_write_text
from lowssl.paths import home


def default_runs_dir() -> Path:
    """Where records go unless a stage is told otherwise: ``results/runs/`` under
    :func:`lowssl.paths.home` (``$LOWSSL_HOME``, else the working directory)."""
    return home() / "results" / "runs"


STAGES = ("pretrain", "linear", "knn", "semisup", "detection")
LOCK_NAME = ".records.lock"
#: The last column of a records file: SHA-256 of the row's other cells (:func:`row_checksum`).
CHECKSUM = "row_sha256"


class RecordsWriteError(RunFailed, OSError):
    """A records file could not be written (disk full, read-only, no permission). Its message is one
    line naming the problem and the path, so a stage can print it and still keep the result it has."""


class RecordsWarning(UserWarning):
    """Records read with a caveat: a damaged row or file was skipped, or a file is unverified."""


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
        self.pretrain_epochs = int(self.pretrain_epochs)
        try:  # the leaderboard and tables read it: a record that they could not read is refused here
            details = json.loads(self.details or "{}")
        except json.JSONDecodeError as error:
            raise ValueError(f"details of run '{self.run_id}' are not JSON ({error})") from None
        if not isinstance(details, dict):
            raise ValueError(f"details of run '{self.run_id}' are not a JSON object: {self.details[:80]}")


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


#: Leading characters that make a spreadsheet read a cell as a formula (OWASP, "CSV Injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def spreadsheet_safe(text: str) -> str:
    """``text`` as a CSV cell that no spreadsheet runs as a formula: OWASP's rule prefixes a single quote
    to a cell starting with = + - @ TAB or CR (a plain number such as -1.5 is no formula and is kept).
    A cell starting with a quote gets one more, so :func:`spreadsheet_text` undoes this exactly."""
    if text.startswith("'") or (text.startswith(FORMULA_STARTS) and not _NUMBER.fullmatch(text)):
        return "'" + text
    return text


def spreadsheet_text(cell: str) -> str:
    """The text a :func:`spreadsheet_safe` cell was made from."""
    return cell.removeprefix("'")


def markdown_safe(text: str) -> str:
    """``text`` as one markdown table cell: a ``|`` would end the cell and a newline the row."""
    return re.sub(r"[\r\n]+", " ", text).replace("|", "\\|")


def text_cells(frame: pd.DataFrame, escape: Callable[[str], str]) -> pd.DataFrame:
    """``frame`` with ``escape`` applied to its text cells; numbers stay numbers (-1.5 is not text).
    For what the results commands write from records: ``text_cells(frame, spreadsheet_safe).to_csv()``,
    ``text_cells(frame, markdown_safe).to_markdown()``."""
    text = [column for column in frame.columns if not pd.api.types.is_numeric_dtype(frame[column])]
    return frame.assign(
        **{column: frame[column].map(lambda v: escape(v) if isinstance(v, str) else v) for column in text}
    )


def row_checksum(cells: dict[str, str]) -> str:
    """SHA-256 of a row's cells as the file holds them, by column name (so it covers which value is in
    which column, whatever the columns' order)."""
    return hashlib.sha256(json.dumps(cells, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _cells(record: Record) -> list[str]:
    """A record's row: numbers exactly as Python prints them (``repr`` of a float reads back to the same
    float), text spreadsheet-safe, then :data:`CHECKSUM`."""
    numbers = {
        "pretrain_epochs": str(record.pretrain_epochs),
        "value": repr(record.value),
        "seed": "" if record.seed is None else str(record.seed),
    }
    # Text as pandas wrote it before these files had checksums: None as an empty cell.
    text = {
        name: "" if value is None else spreadsheet_safe(str(value)) for name, value in asdict(record).items()
    }
    cells = {name: numbers[name] if name in numbers else text[name] for name in COLUMNS}
    return [*cells.values(), row_checksum(cells)]


@contextlib.contextmanager
def _write_errors(path: Path) -> Iterator[None]:
    """An OSError while writing records (a full disk, a read-only one, no permission) as a one-line
    :class:`RecordsWriteError`."""
    try:
        yield
    except RecordsWriteError:
        raise
    except OSError as error:
        reason = error.strerror or " ".join(str(error).split())
        if not isinstance(error, DiskFullError):  # which names the disk, its free space and the fix
            reason += "; free space there, make the folder writable, or write the records to another folder"
        failure = RecordsWriteError(f"could not write the results records {path}: {reason}")
        failure.errno = error.errno
        raise failure from error


def write_records(records: list[Record], runs_dir: str | Path | None = None) -> Path:
    """Write (or replace) the records of one run as ``<runs_dir>/<run_id>.csv``."""
    if not records:
        raise ValueError("no records to write")
    run_ids = {r.run_id for r in records}
    if len(run_ids) != 1:
        raise ValueError(f"records of one file must share one run_id, got {sorted(run_ids)}")
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")  # as pandas writes: files of older lowssl look the same
    writer.writerow([*COLUMNS, CHECKSUM])
    writer.writerows(_cells(record) for record in records)
    runs_dir = Path(runs_dir or default_runs_dir())
    path = runs_dir / f"{run_ids.pop()}.csv"
    with _write_errors(path), _locked(runs_dir):
        return atomic_write_text(path, text.getvalue())


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


def build_records(values: Mapping[str, float], protocol: str | Mapping[str, str], **columns) -> list[Record]:
    """The only place a stage builds its records: one :class:`Record` per metric in ``values`` (in
    their order), with the same ``columns`` (run_id, stage, method, ...; a Subject's
    ``record_columns()`` among them). ``protocol`` names the protocol of every metric, or is a mapping
    metric -> protocol where each has its own (pre-training's monitors)."""
    return [
        Record(
            **columns,
            protocol=protocol if isinstance(protocol, str) else protocol[metric],
            metric=metric,
            value=value,
        )
        for metric, value in values.items()
    ]


def append_records(records: list[Record], runs_dir: str | Path | None = None) -> Path:
    """Add rows to a run's file, replacing earlier rows of the same result: (stage, protocol, branch,
    dataset, metric), so e.g. a held-out result never overwrites the val result of the same checkpoint.

    A run file that is damaged is moved aside to ``<run_id>.csv.damaged-<UTC time>`` (a
    :class:`RecordsWarning` names it and its problems) and its whole rows are written with the new ones:
    the new result is never lost to an old file's damage, nor is the damaged file lost to the new
    result. The rows of a file of older lowssl are rewritten with checksums."""
    runs_dir = Path(runs_dir or default_runs_dir())
    path = runs_dir / f"{records[0].run_id}.csv"
    with _write_errors(path), _locked(runs_dir):  # the read and the write, as one step for every other writer
        if path.exists():
            old = _read_file(path)
            if old.problems:
                kept = path.with_name(f"{path.name}.damaged-{datetime.now(UTC):%Y%m%dT%H%M%S.%fZ}")
                os.replace(path, kept)
                warnings.warn(
                    f"{'; '.join(old.problems)}. Moved that file to {kept} and wrote its {len(old.records)} "
                    f"whole rows with the new ones to {path}",
                    RecordsWarning,
                    stacklevel=2,
                )
            new_keys = {_result_key(r) for r in records}
            records = [r for r in old.records if _result_key(r) not in new_keys] + records
        return write_records(records, runs_dir)


@dataclass
class _FileRead:
    records: list[Record]  # the file's whole rows
    problems: list[str]  # one line each, naming the file (and line) of a row or file that was skipped
    verified: bool  # whether its rows were checked against their checksums (files of older lowssl: no)


def _read_file(path: Path) -> _FileRead:
    try:  # bytes, then text without newline translation: a "\r\n" inside a quoted cell is part of it
        text = path.read_bytes().decode()
    except UnicodeDecodeError as error:
        return _FileRead(
            [], [f"records file {path} is not UTF-8 text ({error.reason} at byte {error.start})"], False
        )
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader)
    except StopIteration:
        return _FileRead([], [f"records file {path} is empty"], False)
    except csv.Error as error:
        return _FileRead([], [f"records file {path}, line 1: {error}"], False)
    # Files of lowssl before the seed column read with the seed not known.
    missing = [c for c in COLUMNS if c not in header and c != "seed"]
    if missing:
        return _FileRead(
            [],
            [
                f"records file {path} lacks the columns {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}: "
                "it is not a lowssl records file"
            ],
            False,
        )
    read = _FileRead([], [], verified=CHECKSUM in header)
    rows: list[tuple[int, list[str]]] = []  # (the line a row starts on, its cells)
    end = reader.line_num  # the line the previous row ended on (a quoted cell may span lines)
    last_row_ends_file = False
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as error:  # an unterminated quote: cut inside a quoted cell such as details
            read.problems.append(
                f"records file {path}, line {end + 1}: {error}, so the row is cut or damaged"
            )
            last_row_ends_file = False
        else:
            if cells:  # a blank line holds no record
                rows.append((end + 1, cells))
            last_row_ends_file = bool(cells)
        end = reader.line_num
    # lowssl ends every row with a line end: a file that does not end with one was cut in its last row.
    cut = last_row_ends_file and not text.endswith(("\n", "\r"))
    for index, (line, cells) in enumerate(rows):
        try:
            read.records.append(_record(header, cells, read.verified, cut and index == len(rows) - 1))
        except ValueError as error:
            read.problems.append(f"records file {path}, line {line} {error}")
    return read


def _record(header: list[str], cells: list[str], verified: bool, unterminated: bool) -> Record:
    """The record one row holds; ValueError saying why a row is not whole."""
    if len(cells) != len(header):
        raise ValueError(f"has {len(cells)} of the {len(header)} fields, so it is cut or damaged")
    row = dict(zip(header, cells, strict=True))
    if verified:
        checksum = row.pop(CHECKSUM)
        if checksum != row_checksum(row):
            raise ValueError(f"does not match its {CHECKSUM}, so it is cut or altered")
        row = {name: spreadsheet_text(cell) for name, cell in row.items()}
    elif unterminated:  # a file of older lowssl cut inside its last field (a seed "12" -> "1")
        raise ValueError("is the file's last line and has no line end, so the file was cut inside it")
    try:
        return Record(**{name: row.get(name, "") for name in COLUMNS})
    except (ValueError, TypeError) as error:
        raise ValueError(f"is not a valid record ({error})") from None


def read_records(runs_dir: str | Path | None = None) -> pd.DataFrame:
    """All whole records under ``runs_dir`` as one DataFrame with :data:`COLUMNS` (empty if none).

    A damaged row or file is skipped with a :class:`RecordsWarning` naming the file and line, and the
    rest is read; files written before row checksums are read with one warning that they are
    unverified."""
    paths = sorted(Path(runs_dir or default_runs_dir()).glob("*.csv"))
    records, unverified = [], []
    for path in paths:
        read = _read_file(path)
        for problem in read.problems:
            warnings.warn(f"{problem}: skipped it", RecordsWarning, stacklevel=2)
        records += read.records
        if read.records and not read.verified:
            unverified.append(path.name)
    if unverified:
        warnings.warn(
            f"{len(unverified)} records file(s) in {paths[0].parent} predate row checksums "
            f"({', '.join(unverified[:5])}{' ...' if len(unverified) > 5 else ''}): read unverified, checked "
            "only for cut rows; the next result appended to a run rewrites its file with checksums",
            RecordsWarning,
            stacklevel=2,
        )
    frame = pd.DataFrame([asdict(record) for record in records], columns=COLUMNS)
    return frame.astype({"pretrain_epochs": int, "value": float, "seed": "Int64"})
