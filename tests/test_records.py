import csv
import multiprocessing
import warnings
from dataclasses import asdict

import pandas as pd
import pytest
from conftest import fill_disk, small_tmpfs

from lowssl.records import (
    CHECKSUM,
    COLUMNS,
    LOCK_NAME,
    Record,
    RecordsWarning,
    RecordsWriteError,
    append_records,
    default_runs_dir,
    read_records,
    write_records,
)


def _record(**overrides):
    values = dict(
        run_id="dino-mnv2-ours",
        stage="linear",
        method="dino",
        recipe="ours",
        backbone="mobilenet_v2",
        pretrain_epochs=200,
        dataset="fashion-mnist",
        protocol="fast",
        branch="student",
        metric="linear_top1",
        value=71.25,
        checkpoint_sha256="ab" * 32,
        config_hash="0123456789abcdef",
        git_commit="deadbeef",
        details={"alpha": 0.4, "lars_rule": "paper"},
    )
    values.update(overrides)
    return Record(**values)


def test_records_round_trip_through_pandas(runs_dir):
    rows = [_record(), _record(metric="linear_top5", value=95.0)]
    path = write_records(rows, runs_dir)
    assert path.name == "dino-mnv2-ours.csv"
    frame = read_records(runs_dir)
    assert list(frame.columns) == COLUMNS
    assert frame["value"].tolist() == [71.25, 95.0]
    assert frame["pretrain_epochs"].dtype.kind == "i"
    back = [Record(**row) for row in frame.to_dict("records")]
    assert back == rows


def test_append_replaces_same_metric_and_keeps_others(runs_dir):
    write_records([_record(), _record(metric="linear_top5", value=95.0)], runs_dir)
    append_records(
        [_record(value=72.0), _record(stage="knn", protocol="knn20", metric="knn_top1", value=60.0)], runs_dir
    )
    frame = read_records(runs_dir).set_index(["stage", "metric"])
    assert frame.loc[("linear", "linear_top1"), "value"] == 72.0
    assert frame.loc[("linear", "linear_top5"), "value"] == 95.0
    assert len(frame) == 3


def test_append_keeps_the_same_metric_on_another_dataset(runs_dir):
    write_records([_record()], runs_dir)
    append_records([_record(dataset="fashion-mnist/held-out-50pc", value=65.0)], runs_dir)
    assert sorted(read_records(runs_dir)["value"]) == [65.0, 71.25]


def test_no_temp_files_left_behind(runs_dir):
    write_records([_record()], runs_dir)
    assert sorted(p.name for p in runs_dir.iterdir()) == [LOCK_NAME, "dino-mnv2-ours.csv"]  # the lock stays


def test_empty_runs_dir_gives_empty_frame(tmp_path):
    assert read_records(tmp_path).empty


def test_bad_rows_are_refused(runs_dir):
    with pytest.raises(ValueError, match="stage 'train'"):
        _record(stage="train")
    with pytest.raises(ValueError, match="run_id"):
        _record(run_id="a/b")
    with pytest.raises(ValueError, match="details of run 'dino-mnv2-ours' are not JSON"):
        _record(details='{"alpha": 0.4')  # the leaderboard could not read it back


def _append_many(runs_dir: str, writer: int, count: int) -> None:
    for index in range(count):
        append_records([_record(metric=f"m{writer}_{index}", value=index)], runs_dir)


def test_concurrent_writers_lose_no_row(runs_dir):
    """4 real processes, each appending 40 results to the same run at once: all 160 rows stay."""
    context = multiprocessing.get_context("spawn")  # fresh interpreters, as separate cluster jobs
    writers = [context.Process(target=_append_many, args=(str(runs_dir), w, 40)) for w in range(4)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=120)
    assert [writer.exitcode for writer in writers] == [0] * 4
    frame = read_records(runs_dir)
    assert len(frame) == 160 and frame.metric.nunique() == 160


def test_a_value_that_could_not_be_computed_is_refused():
    for missing in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="could not be computed"):
            _record(value=missing)


def test_seed_round_trips_and_old_files_read_as_unknown(runs_dir):
    write_records([_record(seed=3), _record(metric="linear_top5", value=90.0)], runs_dir)
    assert read_records(runs_dir).seed.tolist() == [3, pd.NA]
    assert [Record(**row).seed for row in read_records(runs_dir).to_dict("records")] == [3, None]
    _write_old_file(runs_dir / "old.csv", [_record(run_id="old", seed=3)], without=["seed"])
    with pytest.warns(RecordsWarning, match=r"1 records file\(s\) .* predate row checksums \(old.csv\)"):
        assert read_records(runs_dir).query("run_id == 'old'").seed.isna().all()


def test_records_default_to_lowssl_home_else_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWSSL_HOME", str(tmp_path / "home"))
    path = append_records([_record()])
    assert path == tmp_path / "home" / "results" / "runs" / "dino-mnv2-ours.csv" and path.is_file()
    assert len(read_records()) == 1
    monkeypatch.delenv("LOWSSL_HOME")
    monkeypatch.chdir(tmp_path)
    assert default_runs_dir().resolve() == tmp_path.resolve() / "results" / "runs"


def _write_old_file(path, records, without=()):
    """A records file as lowssl wrote it before row checksums (pandas, no row_sha256 column)."""
    frame = pd.DataFrame([asdict(r) for r in records], columns=COLUMNS).astype({"seed": "Int64"})
    frame.drop(columns=list(without)).to_csv(path, index=False)


def _read_with_warnings(runs_dir):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        frame = read_records(runs_dir)
    return frame, [str(w.message) for w in caught if issubclass(w.category, RecordsWarning)]


def test_a_cut_or_altered_row_is_refused_never_read_as_a_number(runs_dir):
    """Issue 26, case 6: a row cut inside its value (98.6 -> "9") read as 9.0; now it is skipped, the
    warning naming the file and line, whether the file has checksums or predates them."""
    write_records([_record(run_id="whole", value=80.0)], runs_dir)
    cut = write_records([_record(run_id="cut", value=98.6, seed=12)], runs_dir)
    text = cut.read_text()
    cut.write_text(text[: text.index("98.6") + 1])  # "...,linear_top1,9"
    altered = write_records([_record(run_id="altered", value=98.6)], runs_dir)
    altered.write_text(altered.read_text().replace("98.6", "99.6"))  # whole, but not what was written
    runs_dir.joinpath("old-cut.csv").write_text(text.replace(f",{CHECKSUM}", "").split(",98.6")[0] + ",9")
    old_seed_cut = runs_dir / "old-seed-cut.csv"
    _write_old_file(old_seed_cut, [_record(run_id="old-seed-cut", value=98.6, seed=12)])
    old_seed_cut.write_text(old_seed_cut.read_text().rstrip("\n")[:-1])  # seed "12" -> "1", no line end

    frame, problems = _read_with_warnings(runs_dir)
    assert frame["run_id"].tolist() == ["whole"] and frame["value"].tolist() == [80.0]
    assert (
        f"records file {cut}, line 2 has 11 of the 18 fields, so it is cut or damaged: skipped it" in problems
    )
    assert (
        f"records file {altered}, line 2 does not match its {CHECKSUM}, so it is cut or altered: skipped it"
        in problems
    )
    assert (
        f"records file {runs_dir / 'old-cut.csv'}, line 2 has 11 of the 17 fields, so it is cut or damaged: skipped it"
        in problems
    )
    assert (
        f"records file {old_seed_cut}, line 2 is the file's last line and has no line end, so the file was "
        "cut inside it: skipped it"
    ) in problems


def test_a_damaged_records_folder_is_read_around_naming_each_file_and_line(runs_dir):
    """Issue 26, case 13: a row cut inside its quoted JSON, a foreign CSV, binary junk and an empty file
    gave a pandas ParserError before anything was computed; now each is named and skipped, and every
    whole row of the folder is read, the whole rows of a damaged file included."""
    write_records([_record(run_id="whole", value=80.0)], runs_dir)
    damaged = write_records(
        [_record(run_id="json-cut"), _record(run_id="json-cut", metric="linear_top5")], runs_dir
    )
    text = damaged.read_text()
    damaged.write_text(text[: text.rindex('"{') + 5])  # the second row ends inside its details JSON
    (runs_dir / "foreign.csv").write_text("a,b\n1,2\n")
    (runs_dir / "junk.csv").write_bytes(b"\x80\xff\x00" * 10)
    (runs_dir / "empty.csv").write_text("")

    frame, problems = _read_with_warnings(runs_dir)
    assert sorted(zip(frame["run_id"], frame["metric"], strict=True)) == [
        ("json-cut", "linear_top1"),
        ("whole", "linear_top1"),
    ]
    assert problems == [
        f"records file {runs_dir / 'empty.csv'} is empty: skipped it",
        f"records file {runs_dir / 'foreign.csv'} lacks the columns run_id, stage, method ...: it is not a "
        "lowssl records file: skipped it",
        f"records file {damaged}, line 3: unexpected end of data, so the row is cut or damaged: skipped it",
        f"records file {runs_dir / 'junk.csv'} is not UTF-8 text (invalid start byte at byte 0): skipped it",
    ]


def test_an_append_to_a_damaged_run_keeps_the_file_aside_and_the_new_result(runs_dir):
    """Issue 26, case 13: the new result is written, the damaged file is kept as evidence beside it (not
    read as records), and its whole rows stay in the run's file."""
    path = write_records([_record(value=71.25), _record(metric="linear_top5", value=95.0)], runs_dir)
    damaged = path.read_text()[:-30]  # the top-5 row cut inside its checksum
    path.write_text(damaged)
    with pytest.warns(RecordsWarning) as caught:
        append_records([_record(stage="knn", protocol="knn20", metric="knn_top1", value=60.0)], runs_dir)
    kept = [p for p in runs_dir.iterdir() if p.name.startswith(f"{path.name}.damaged-")]
    assert len(kept) == 1 and kept[0].read_text() == damaged
    assert str(caught[0].message) == (
        f"records file {path}, line 3 does not match its {CHECKSUM}, so it is cut or altered. Moved that "
        f"file to {kept[0]} and wrote its 1 whole rows with the new ones to {path}"
    )
    frame, problems = _read_with_warnings(runs_dir)
    assert problems == [] and dict(zip(frame["metric"], frame["value"], strict=True)) == {
        "linear_top1": 71.25,
        "knn_top1": 60.0,
    }


def test_text_from_a_checkpoint_is_written_spreadsheet_safe_and_read_back_exactly(runs_dir):
    """Issue 26, case 15: formula text goes into the file with OWASP's leading quote, numbers (-1.5)
    as they are, and read_records gives every original string back."""
    hostile = dict(
        method="=cmd|' /C calc'!A0",
        recipe='=HYPERLINK("http://evil.example","x")',
        backbone="@SUM(1+1)",
        branch="'quoted",
        protocol="+fast\r\nmore|text",
        dataset="\tfashion-mnist",
        checkpoint_sha256="-1.5",  # text that is a number is no formula: kept
    )
    path = write_records([_record(value=-1.5, **hostile)], runs_dir)
    with open(path, newline="") as file:
        header, row = list(csv.reader(file))
    cells = dict(zip(header, row, strict=True))
    assert cells["method"] == "'=cmd|' /C calc'!A0" and cells["recipe"].startswith("'=HYPERLINK")
    assert cells["backbone"] == "'@SUM(1+1)" and cells["branch"] == "''quoted"
    assert cells["protocol"] == "'+fast\r\nmore|text" and cells["dataset"] == "'\tfashion-mnist"
    assert cells["value"] == "-1.5" and cells["checkpoint_sha256"] == "-1.5"
    assert not any(
        cell.startswith(("=", "+", "-", "@", "\t", "\r"))
        for name, cell in cells.items()
        if name not in ("value", "checkpoint_sha256")
    )
    back = read_records(runs_dir).iloc[0]
    assert {key: back[key] for key in hostile} == hostile and back["value"] == -1.5


def test_records_on_a_full_disk_raise_one_line_records_write_error(tmp_path):
    """Issue 26, case 10 (records): ENOSPC was a raw traceback; now a one-line RecordsWriteError names
    the disk problem and the path, the run's previous file stays whole and no temp file is left."""
    with small_tmpfs(tmp_path / "disk") as disk:
        runs = disk / "runs"
        path = write_records([_record()], runs)
        before = path.read_bytes()
        fill_disk(disk)
        with pytest.raises(RecordsWriteError) as raised:
            append_records([_record(metric="linear_top5", value=95.0)], runs)
        message = str(raised.value)
        assert "\n" not in message and raised.value.errno == 28
        assert message.startswith(f"could not write the results records {path}: No space left on device")
        assert path.read_bytes() == before
        assert sorted(p.name for p in runs.iterdir()) == [LOCK_NAME, path.name]
