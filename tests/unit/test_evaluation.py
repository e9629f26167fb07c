from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ncf_core.data import EvalSplit
from ncf_core.evaluation import evaluate, evaluate_scores, hit_and_ndcg, ranks_from_scores
from ncf_core.models import NCF, ModelConfig


def test_hand_worked_hr_and_ndcg():
    # User A: positive beats all 4 → rank 0. User B: 2 negatives higher → rank 2. User C: rank 4.
    pos = np.array([0.9, 0.5, 0.1])
    neg = np.array([[0.1, 0.2, 0.3, 0.4], [0.6, 0.7, 0.1, 0.2], [0.2, 0.3, 0.4, 0.5]])
    m = evaluate_scores(pos, neg, k=3)
    assert m.hr == pytest.approx(2 / 3)
    assert m.ndcg == pytest.approx((1 / math.log2(2) + 1 / math.log2(4)) / 3)
    assert evaluate_scores(pos, neg, k=1).hr == pytest.approx(1 / 3)


def test_ties_count_against_the_positive():
    ranks = ranks_from_scores(torch.tensor([0.5]), torch.tensor([[0.5, 0.1, 0.5]]))
    assert ranks.tolist() == [2]


def test_constant_scores_give_zero_hit_rate():
    pos = np.zeros(100)
    neg = np.zeros((100, 99))
    assert evaluate_scores(pos, neg, k=10).hr == 0.0


def test_nan_scores_never_hit():
    ranks = ranks_from_scores(
        torch.tensor([float("nan"), 1.0]), torch.tensor([[0.0, 0.0], [float("nan"), 0.5]])
    )
    assert ranks.tolist() == [2, 0]


def test_metrics_empty_is_zero():
    assert hit_and_ndcg(torch.zeros(0, dtype=torch.long), 10) == (0.0, 0.0)


class Oracle(NCF):
    """Scores item i as -i: item 0 is the best for everyone."""

    def head(self, user, item):
        return -item[0][..., 0].float()

    def item_side(self, items=None):
        idx = torch.arange(self.config.num_items) if items is None else items
        return idx.float().unsqueeze(-1), None


def test_duplicate_negative_equal_to_positive_is_ignored_or_counted():
    model = Oracle(ModelConfig("gmf", 2, 20, factor=1))
    # The positive (item 1) appears among its own negatives; item 0 is the only better one.
    split = EvalSplit(np.array([0, 1]), np.array([1, 1]), np.array([[0, 1, 5, 6], [7, 8, 9, 10]]))
    dropped = evaluate(model, split, k=2)
    counted = evaluate(model, split, k=2, drop_duplicate_negatives=False)
    assert dropped.hr == 1.0  # user 0 ranks 2nd (after item 0), user 1 first
    assert counted.hr == 0.5  # the copy ties with the positive and pushes it to 3rd
    assert dropped.ndcg == pytest.approx((1 / math.log2(3) + 1) / 2)
