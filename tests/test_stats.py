"""Intervals over seeds agree with scipy's own t interval; one seed has none; gains are paired."""

import numpy as np
import pytest
from scipy import stats

from lowssl.results.stats import AggregationError, paired_difference, summarise


@pytest.mark.parametrize("values", [[71.2, 72.4], [70.0, 71.5, 69.8], [1.0, 2.0, 4.0, 8.0, 16.0]])
def test_interval_matches_scipy(values):
    summary = summarise(values)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    assert summary.n == len(values) and summary.mean == pytest.approx(np.mean(values))
    assert summary.interval == pytest.approx((low, high), rel=1e-12)


def test_one_seed_prints_n1_and_no_interval():
    summary = summarise([73.81])
    assert summary.interval is None and not summary.excludes_zero()
    assert summary.format() == "73.81 (n=1)" and "±" not in summary.format()
    assert summarise([1.0, 3.0]).format(1) == "2.0 ± 12.7 (n=2)"


def test_paired_difference_is_per_seed():
    ours, baseline = {0: 75.0, 1: 71.0, 2: 73.0}, {0: 74.0, 1: 70.0, 2: 72.5}
    gain = paired_difference(ours, baseline)
    assert gain.mean == pytest.approx(0.8333333) and gain.excludes_zero()
    # unpaired, the same numbers would be far from significant: seed-to-seed spread cancels
    assert not summarise(list(ours.values())).interval[0] > max(baseline.values())


def test_unpaired_seeds_and_empty_input_are_refused():
    with pytest.raises(AggregationError, match=r"same seeds.*ours has \[0, 1\], baseline \[0\]"):
        paired_difference({0: 1.0, 1: 2.0}, {0: 1.0})
    with pytest.raises(AggregationError, match="no values"):
        summarise([])
    with pytest.raises(AggregationError, match="non-finite"):
        summarise([1.0, float("nan")])
