"""lowssl.schedules: the cosine and step rules of every stage's learning rate."""

import math

import numpy as np
import pytest

from lowssl.config import ConfigError
from lowssl.schedules import check_epoch_schedule, cosine_decay, epoch_lr


def test_cosine_equals_the_formula_the_stages_used_before_exactly():
    """Bit for bit: the per-epoch rule of the linear probe and semisup (math.cos) and the per-step
    one of pre-training (DINO's numpy), so moving them here changed no number."""
    for epochs in (1, 2, 7, 90, 100, 800):
        per_epoch = [0.05 + 0.5 * (1.92 - 0.05) * (1 + math.cos(math.pi * e / epochs)) for e in range(epochs)]
        assert [epoch_lr("cosine", 1.92, e, epochs, final=0.05) for e in range(epochs)] == per_epoch
        steps = np.arange(epochs * 13)
        dino = 1e-6 + 0.5 * (0.3 - 1e-6) * (1 + np.cos(np.pi * steps / len(steps)))
        assert np.array_equal(cosine_decay(0.3, 1e-6, steps, len(steps)), dino)
    assert isinstance(cosine_decay(1.0, 0.0, 3, 4), float)


def test_step_rule_multiplies_by_gamma_after_each_milestone():
    lrs = [epoch_lr("step", 30.0, e, 100, milestones=(60, 80), gamma=0.1) for e in (0, 59, 60, 79, 80, 99)]
    assert lrs == pytest.approx([30, 30, 3, 3, 0.3, 0.3])
    with pytest.raises(ValueError, match="allowed values: cosine, step"):
        epoch_lr("linear", 1.0, 0, 10)


def test_a_step_schedule_needs_increasing_milestones():
    check_epoch_schedule("cosine", ())
    with pytest.raises(ConfigError, match="config key 'milestones'.*schedule step needs milestones"):
        check_epoch_schedule("step", ())
    with pytest.raises(ConfigError, match="config key 'milestones'.*must be increasing"):
        check_epoch_schedule("step", (80, 60))
