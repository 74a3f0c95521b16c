import multiprocessing

import pandas as pd
import pytest

from lowssl.records import (
    COLUMNS,
    LOCK_NAME,
    Record,
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
    (runs_dir).mkdir(parents=True)
    pd.DataFrame({"x": [1]}).to_csv(runs_dir / "foreign.csv", index=False)
    with pytest.raises(ValueError, match="not written by lowssl"):
        read_records(runs_dir)


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
    old = runs_dir / "old.csv"
    pd.read_csv(runs_dir / "dino-mnv2-ours.csv").drop(columns="seed").assign(run_id="old").to_csv(
        old, index=False
    )
    assert read_records(runs_dir).query("run_id == 'old'").seed.isna().all()


def test_records_default_to_lowssl_home_else_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWSSL_HOME", str(tmp_path / "home"))
    path = append_records([_record()])
    assert path == tmp_path / "home" / "results" / "runs" / "dino-mnv2-ours.csv" and path.is_file()
    assert len(read_records()) == 1
    monkeypatch.delenv("LOWSSL_HOME")
    monkeypatch.chdir(tmp_path)
    assert default_runs_dir().resolve() == tmp_path.resolve() / "results" / "runs"
