import pandas as pd
import pytest

from lowssl.records import COLUMNS, Record, append_records, read_records, write_records


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
    append_records([_record(value=72.0), _record(stage="knn", protocol="knn20", metric="knn_top1", value=60.0)],
                   runs_dir)  # fmt: skip
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
    assert [p.name for p in runs_dir.iterdir()] == ["dino-mnv2-ours.csv"]


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
