"""An evaluation's results on disk: the stored result of the same evaluation, read back instead of
recomputed (from the records, when it was computed on the same images and labels), and a new result
kept: its JSON (with per-epoch curves) and trained classifier in the run folder, its rows in the records."""

from __future__ import annotations

import json
from pathlib import Path

from lowssl.evaluate.kinds import EvaluationKind, Outcome
from lowssl.evaluate.subject import Subject
from lowssl.io import atomic_torch_save, atomic_write_text
from lowssl.records import Record, RecordsWriteError, append_records, read_records


def stored_result(
    records_dir: Path,
    kind: EvaluationKind,
    subject: Subject,
    protocol: str,
    dataset: str,
    chash: str,
    fingerprint: dict,
):
    """The stored rows of this exact evaluation on the same images and labels, or None, and a line
    saying why not where rows were found but computed from other data (``fingerprint``: the datasets'
    fingerprints, lowssl.data; a class folder swapped or an image edited since changes it)."""
    frame = read_records(records_dir)
    # The backbone too: random-init subjects of different architectures share one "checkpoint" id.
    rows = frame[
        (frame.stage == kind.record_stage)
        & (frame.checkpoint_sha256 == subject.checkpoint)
        & (frame.backbone == subject.arch)
        & (frame.protocol == protocol)
        & (frame.branch == subject.branch)
        & (frame.dataset == dataset)
        & (frame.config_hash == chash)
    ]
    if not set(kind.metrics) <= set(rows.metric):
        return None, ""
    recorded = [_recorded_fingerprint(details) for details in rows.details]
    if any(value != fingerprint for value in recorded):
        return None, (
            f"the stored result in {records_dir / subject.run_id}.csv was computed on other images or "
            f"labels (dataset fingerprint {_fingerprint_text(recorded[0])}, now {_fingerprint_text(fingerprint)}): "
            "recomputing"
        )
    return rows, ""


def _recorded_fingerprint(details: str) -> dict | None:
    """A record's ``dataset_fingerprint``; None where it has none or its details are not JSON."""
    try:
        fingerprint = json.loads(details or "{}").get("dataset_fingerprint")
    except (ValueError, AttributeError):
        return None
    return fingerprint if isinstance(fingerprint, dict) else None


def _fingerprint_text(fingerprint: dict | None) -> str:
    return (
        ", ".join(f"{split} {value}" for split, value in sorted(fingerprint.items()))
        if fingerprint
        else "not recorded"
    )


def keep_result(
    folder: Path,
    stem: str,
    outcome: Outcome,
    details: dict,
    chash: str,
    rows: list[Record],
    records_dir: Path,
) -> tuple[str, list[OSError]]:
    """Write the result JSON (and head) into the run folder, then append the records; returns where the
    result is kept, for the printed line, and the errors of the writes that failed (one line each). The
    folder comes first, so a full or read-only records disk still leaves the result beside the run."""
    errors = []
    try:
        result_file = _write_outputs(folder, stem, outcome, details, chash)
    except OSError as error:  # DiskFullError names the disk, its free space and the file
        result_file, errors = None, [error]
    try:
        records_file = append_records(rows, records_dir)
    except RecordsWriteError as error:
        records_file = None
        errors.append(error)
    if not errors:
        return f"records: {records_file}", []
    kept = [
        f"records: {records_file}" if records_file else "records NOT written",
        f"result: {result_file}" if result_file else "result file NOT written",
    ]
    if not (records_file or result_file):
        kept.append("this printed line is all that is kept")
    return "; ".join(kept), errors


def _write_outputs(folder: Path, stem: str, outcome: Outcome, details: dict, chash: str) -> Path:
    """The result as JSON (with per-epoch curves) and the trained classifier, next to each other;
    returns the JSON's path."""
    stem = stem.replace("/", "_").replace(":", "_")
    folder.mkdir(parents=True, exist_ok=True)
    payload = {"metrics": outcome.values, "config_hash": chash, "details": details, "curves": outcome.curves}
    result_file = atomic_write_text(folder / f"{stem}.json", json.dumps(payload, indent=2))
    if outcome.head_state is not None:
        atomic_torch_save(outcome.head_state, folder / f"{stem}-head.pth")
    return result_file
