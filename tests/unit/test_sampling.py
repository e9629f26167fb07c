from __future__ import annotations

import pytest
import torch

from ncf_core import sampling
from ncf_core.sampling import PositiveSet, sample_distinct_negatives, sample_negatives


def dense_positives(num_users: int = 50, num_items: int = 30, density: float = 0.6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(num_users, num_items, generator=g) < density
    mask[:, 0] = False  # every user keeps at least one negative
    users, items = mask.nonzero(as_tuple=True)
    return mask, users, items


@pytest.mark.parametrize("dense", [True, False])
def test_no_training_positive_is_ever_sampled(monkeypatch, dense: bool):
    if not dense:  # force the sorted-keys path used for large catalogues
        monkeypatch.setattr(sampling, "DENSE_BITMAP_MAX_CELLS", 0)
    mask, users, items = dense_positives()
    positives = PositiveSet(users, items, 50, 30)
    query = users.repeat(20)
    neg = sample_negatives(query, positives, torch.Generator().manual_seed(1))
    assert neg.shape == query.shape
    assert not mask[query, neg].any()
    # Uniform over each user's non-positives: all of them show up for a dense user.
    u0 = query == 0
    assert set(neg[u0].tolist()) == set((~mask[0]).nonzero().squeeze(1).tolist())


def test_sampling_is_seeded():
    _, users, items = dense_positives()
    positives = PositiveSet(users, items, 50, 30)
    a = sample_negatives(users, positives, torch.Generator().manual_seed(7))
    b = sample_negatives(users, positives, torch.Generator().manual_seed(7))
    c = sample_negatives(users, positives, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_distinct_negatives_per_row():
    mask, users, items = dense_positives(density=0.3)
    positives = PositiveSet(users, items, 50, 30)
    free = int((~mask).sum(1).min())
    rows = sample_distinct_negatives(torch.arange(50), free, positives, torch.Generator().manual_seed(0))
    for u, row in enumerate(rows):
        assert len(set(row.tolist())) == free
        assert not mask[u, row].any()


def test_user_with_every_item_cannot_be_sampled():
    positives = PositiveSet(torch.zeros(3, dtype=torch.long), torch.arange(3), 1, 3)
    with pytest.raises(ValueError, match="every item"):
        sample_negatives(torch.zeros(2, dtype=torch.long), positives, torch.Generator())


@pytest.mark.parametrize("dense", [True, False])
def test_positives_per_user_counts_distinct_items_on_both_paths(monkeypatch, dense):
    monkeypatch.setattr(sampling, "DENSE_BITMAP_MAX_CELLS", 10**9 if dense else 0)
    users = torch.tensor([0, 0, 0, 2, 2, 3])
    items = torch.tensor([1, 1, 4, 0, 3, 2])  # user 0 lists item 1 twice
    positives = sampling.PositiveSet(users, items, num_users=5, num_items=6)
    assert (positives._bitmap is not None) == dense
    assert positives.positives_per_user().tolist() == [2, 0, 2, 1, 0]


@pytest.mark.parametrize("dense", [True, False])
def test_from_unique_keys_answers_as_the_constructor(monkeypatch, dense):
    monkeypatch.setattr(sampling, "DENSE_BITMAP_MAX_CELLS", 10**9 if dense else 0)
    _, users, items = dense_positives(num_users=20, num_items=15, density=0.3)
    built = PositiveSet(users, items, 20, 15)
    given = PositiveSet.from_unique_keys(torch.unique(users * 15 + items), 20, 15)
    assert (given._bitmap is not None) == dense
    assert torch.equal(given.positives_per_user(), built.positives_per_user())
    qu, qi = torch.meshgrid(torch.arange(20), torch.arange(15), indexing="ij")
    assert torch.equal(given.contains(qu.flatten(), qi.flatten()), built.contains(qu.flatten(), qi.flatten()))
    rows = torch.arange(20).repeat_interleave(3)
    a = sample_distinct_negatives(rows, 3, built, torch.Generator().manual_seed(1))
    b = sample_distinct_negatives(rows, 3, given, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def _distinct_negatives_sorting_every_row(users, num_negatives, positives, generator):
    """sample_distinct_negatives as it was: every row sorted again in every round."""
    rows = users.repeat_interleave(num_negatives).view(-1, num_negatives)
    neg = sample_negatives(rows.reshape(-1), positives, generator).view(-1, num_negatives)
    while True:
        order = neg.argsort(dim=1)
        ordered = neg.gather(1, order)
        dup_sorted = torch.zeros_like(neg, dtype=torch.bool)
        dup_sorted[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
        if not bool(dup_sorted.any()):
            return neg
        dup = torch.zeros_like(dup_sorted).scatter_(1, order, dup_sorted)
        neg[dup] = sample_negatives(rows[dup], positives, generator)


@pytest.mark.parametrize("seed", range(5))
def test_distinct_negatives_draw_as_when_every_row_was_sorted_every_round(seed: int):
    # 12 of 40 items per user: duplicates in most rows, and several rounds to clear them.
    _, users, items = dense_positives(num_users=300, num_items=40, density=0.5, seed=seed)
    positives = PositiveSet(users, items, 300, 40)
    spare = 40 - int(positives.positives_per_user().max())
    rows = torch.arange(300)
    a = sample_distinct_negatives(rows, min(12, spare), positives, torch.Generator().manual_seed(seed))
    b = _distinct_negatives_sorting_every_row(
        rows, min(12, spare), positives, torch.Generator().manual_seed(seed)
    )
    assert torch.equal(a, b)


@pytest.mark.parametrize("dense", [True, False])
def test_complement_sampling_is_exact_and_uniform(monkeypatch, dense: bool):
    """The CUDA trainer's sampler: never a positive, every non-positive of a user about equally often."""
    if not dense:
        monkeypatch.setattr(sampling, "DENSE_BITMAP_MAX_CELLS", 0)
    mask, users, items = dense_positives()
    positives = PositiveSet(users, items, 50, 30)
    query = torch.arange(50).repeat(3000)
    neg = sample_negatives(query, positives, torch.Generator().manual_seed(1), method="complement")
    assert neg.shape == query.shape and neg.dtype == torch.int64
    assert not mask[query, neg].any()
    counts = torch.zeros(50, 30, dtype=torch.int64).index_put_(
        (query, neg), torch.ones_like(neg), accumulate=True
    )
    for u in range(50):
        free = (~mask[u]).nonzero().squeeze(1)
        expected = 3000 / len(free)
        got = counts[u, free].double()
        assert (got - expected).abs().max() < 6 * expected**0.5, (u, got, expected)  # 6 sigma


def test_complement_sampling_refuses_a_user_with_every_item():
    users = torch.tensor([0, 0, 0, 1])
    items = torch.tensor([0, 1, 2, 0])
    positives = PositiveSet(users, items, 2, 3)
    gen = torch.Generator().manual_seed(0)
    assert set(sample_negatives(torch.tensor([1] * 50), positives, gen, method="complement").tolist()) == {
        1,
        2,
    }
    with pytest.raises(ValueError, match="interacted with every item"):
        sample_negatives(torch.tensor([1, 0]), positives, gen, method="complement")


def test_the_full_user_check_reads_nothing_back_when_no_user_is_full():
    _, users, items = dense_positives()
    positives = PositiveSet(users, items, 50, 30)
    assert positives.any_full is False
    assert PositiveSet(torch.tensor([0, 0]), torch.tensor([0, 1]), 1, 2).any_full is True
