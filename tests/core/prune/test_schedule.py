"""shrinkflow.prune.schedule: the cubic schedule both kinds of pruning follow over their steps."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest

from shrinkflow.prune import schedule


def test_schedule_is_cubic_increasing_and_ends_at_the_target():
    # given a target of 0.8 / when it is reached in 4 steps
    ratios = schedule(0.8, 4)
    # then the ratio grows every step, by less each time, and ends exactly at the target
    assert ratios[-1] == 0.8, "the last step reaches the target exactly"
    assert all(a < b for a, b in pairwise(ratios)), "the ratio grows every step"
    steps_taken = np.diff([0.0, *ratios])
    assert all(a > b for a, b in pairwise(steps_taken)), "cubic: big steps first, small last"
    assert ratios[0] == pytest.approx(0.8 * (1 - 0.75**3)), "r_1 = target * (1 - (1 - 1/n)^3)"


def test_schedule_of_one_step_is_one_shot_pruning():
    # given a target of 0.5 / when it is reached in one step / then that step goes all the way
    assert schedule(0.5, 1) == [0.5], "one step is one-shot pruning"
