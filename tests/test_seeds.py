"""Seeds are part of a run's identity: the same seed gives the same records, another seed another run
whose rows sit beside the first's (the pretrain record's run id holds the seed and the config hash)."""

import pandas as pd
import pytest
from test_pretrain_engine import tiny_config

from lowssl.pretrain.train import train
from lowssl.records import read_records

pytestmark = pytest.mark.usefixtures("one_thread")


def test_same_seed_same_records_other_seed_another_run(tmp_path):
    runs = tmp_path / "records"
    for folder, seed in (("a", 0), ("b", 0), ("c", 1)):
        train(
            tiny_config(
                tmp_path / folder, epochs=1, seed=seed, records_dir=runs, **{"monitor.online_linear": "true"}
            )
        )
    records = read_records(runs).sort_values(["seed", "run_id", "metric"])
    assert set(records.metric) == {
        "knn_top1_heldout",
        "online_linear_top1",
    }  # the online probe is recorded too
    assert records.run_id.nunique() == 3 and records.run_id.str.contains("-seed0-").sum() == 4
    assert records.seed.tolist() == [0, 0, 0, 0, 1, 1]
    seed0 = records[records.seed == 0].groupby("metric").value
    assert (seed0.nunique() == 1).all()  # a and b: the same numbers, in two runs' rows
    seed1 = records[records.seed == 1].set_index("metric").value
    assert not seed1.equals(records[records.run_id == records.run_id.iloc[0]].set_index("metric").value)
    assert all('"pretrain_budget": "all synthetic images x 1 epochs, batch 8"' in d for d in records.details)
    assert pd.api.types.is_integer_dtype(records.seed)
