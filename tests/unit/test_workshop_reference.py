"""The workshop's loop as the benchmarks time it: faithful where it matters for its cost."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import workshop_reference as ref
from ncf_core.synthetic import planted_interactions


def test_its_negatives_are_never_training_pairs_and_four_per_positive():
    users, items, _ = planted_interactions(num_users=30, num_items=24, groups=3, per_user=6)
    pairs = np.stack([users, items], 1).tolist()
    train_mat = {(u, i): 1.0 for u, i in pairs}
    negatives = ref.sample_negatives(pairs, 24, train_mat)
    assert len(negatives) == ref.NUM_NEGATIVES * len(pairs)
    assert not any((u, j) in train_mat for u, j in negatives)
    assert [u for u, _ in negatives] == [u for u, _ in pairs for _ in range(ref.NUM_NEGATIVES)]


@pytest.mark.filterwarnings("ignore:This DataLoader will create 4 worker processes")  # as the workshop does
def test_an_epoch_is_timed_and_extrapolated_to_twenty():
    users, items, _ = planted_interactions(num_users=40, num_items=24, groups=3, per_user=8)
    rng = np.random.default_rng(0)
    candidates = np.concatenate([np.arange(40)[:, None], rng.integers(0, 24, (40, 11))], 1)
    out = ref.time_epoch(users, items, 40, 24, candidates, batches=3, sample_pairs=50, eval_users=4)
    assert out["workshop_batches_timed"] == 3
    assert out["workshop_epoch_s"] > 0 and out["workshop_eval_s"] >= 0  # 4 users: may round to 0.0
    # 20 epochs of the (rounded) epoch time.
    assert abs(out["workshop_time_to_hr_070_s"] - 20 * out["workshop_epoch_s"]) <= 1.0
