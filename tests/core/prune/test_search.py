"""shrinkflow.prune.search: the highest ratio whose accuracy drop stays within the limit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from shrinkflow.config import UnstructuredPruneConfig
from shrinkflow.data import Split
from shrinkflow.models import Architecture
from shrinkflow.prune import prune_unstructured, search_ratio, weight_sparsity
from shrinkflow.train import fit
from tests.core.prune.conftest import make_model


class _Fake(nn.Module):
    """Predicts class 0 (the truth) for inputs below `correct`, class 1 above: accuracy correct/100."""

    def __init__(self, correct: int) -> None:
        super().__init__()
        self.correct = correct

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wrong = (x[:, 0] >= self.correct).long()
        return nn.functional.one_hot(wrong, 2).float()


EVALUATION = Split(np.arange(100, dtype=np.float32)[:, None], np.zeros(100, dtype=np.int64))
DROP_PP = {0.3: 0, 0.5: 1, 0.7: 3, 0.8: 10, 0.9: 30}  # accuracy falls with the ratio


def test_search_ratio_keeps_the_highest_ratio_within_the_drop_and_records_the_tries():
    # given pruned models that lose 0, 1, 3, 10 and 30 pp at ratios 0.3 ... 0.9, given unordered
    tried: list[float] = []

    def prune_at(ratio: float) -> nn.Module:
        tried.append(ratio)
        return _Fake(100 - DROP_PP[ratio])

    # when the search allows a drop of 2 pp
    result = search_ratio(_Fake(100), prune_at, EVALUATION, max_drop_pp=2.0, ratios=[0.9, 0.3, 0.7, 0.5, 0.8])
    # then 0.5 is chosen, the search stopped at 0.7, and every try is recorded
    assert result.ratio == 0.5, f"0.5 loses 1 pp (<= 2), 0.7 loses 3: expected 0.5, got {result.ratio}"
    assert isinstance(result.model, _Fake) and result.model.correct == 99, "the accepted model is returned"
    assert result.teacher_accuracy == 1.0
    assert tried == [0.3, 0.5, 0.7], "ratios are tried ascending and the search stops at the first failure"
    assert result.records() == [
        {"ratio": 0.3, "accuracy": 1.0, "drop_pp": 0.0, "accepted": True},
        {"ratio": 0.5, "accuracy": 0.99, "drop_pp": pytest.approx(1.0), "accepted": True},
        {"ratio": 0.7, "accuracy": 0.97, "drop_pp": pytest.approx(3.0), "accepted": False},
    ], "every try should be recorded with its accuracy, drop and verdict"


def test_search_ratio_exhaustive_tries_every_ratio_and_accepts_a_drop_equal_to_the_limit():
    # given a limit of 3 pp and the search told not to stop at the first failure
    # when it runs
    result = search_ratio(_Fake(100), lambda r: _Fake(100 - DROP_PP[r]), EVALUATION, max_drop_pp=3.0,
                          ratios=(0.3, 0.5, 0.7, 0.8, 0.9), stop_at_first_failure=False)
    # then every ratio was tried and a drop of exactly 3 pp passes
    assert [t.ratio for t in result.tries] == [0.3, 0.5, 0.7, 0.8, 0.9], "all ratios tried"
    assert [t.accepted for t in result.tries] == [True, True, True, False, False]
    assert result.ratio == 0.7, "a drop of exactly 3 pp is within a 3 pp limit"


def test_search_ratio_returns_none_when_no_ratio_is_acceptable():
    # given pruned models that all lose 50 pp / when the search allows 1 pp
    result = search_ratio(_Fake(100), lambda r: _Fake(50), EVALUATION, max_drop_pp=1.0, ratios=(0.3, 0.5))
    # then it finds nothing and stops after the first try
    assert result.ratio is None and result.model is None, "nothing acceptable: no ratio, no model"
    assert len(result.tries) == 1 and not result.tries[0].accepted


def test_search_ratio_needs_at_least_one_ratio():
    # given an empty prune.search_ratios / when / then the search fails naming the key
    with pytest.raises(ValueError, match=r"prune\.search_ratios: no ratio to try"):
        search_ratio(_Fake(100), lambda r: _Fake(100), EVALUATION, max_drop_pp=1.0, ratios=())


def test_search_ratio_works_with_real_unstructured_pruning(separable, cpu_train_cfg):
    # given a trained MLP teacher on a separable problem
    train_split, val_split = separable
    teacher = make_model(Architecture("mlp", (4,), 2, (16,)))
    fit(teacher, train_split, val_split, cpu_train_cfg, progress=False)
    cfg = UnstructuredPruneConfig()
    # when the search prunes it unstructured at 0.3 and 0.5 within 1 pp
    result = search_ratio(teacher, lambda r: prune_unstructured(teacher, cfg, r)[0], val_split,
                          max_drop_pp=1.0, ratios=(0.3, 0.5))
    # then a ratio is accepted and the returned model has that sparsity
    assert result.ratio is not None and all(t.accepted for t in result.tries[:-1])
    assert weight_sparsity(result.model) == pytest.approx(result.ratio, abs=0.01)
