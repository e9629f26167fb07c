"""Vectorised negative sampling.

Negatives are drawn uniformly and every draw that hits one of the user's positives is redrawn, in
whole-tensor rounds (no per-sample Python loop), so a training negative is never a positive of that user.
Runs on whatever device the tensors live on, so CPU and GPU share one code path.
"""

from __future__ import annotations

import torch

# Below this many (user, item) cells a dense bitmap answers membership in one gather; above it
# (ML-20M: 3.7e9 cells) a sorted key array and binary search keep memory at O(#positives).
DENSE_BITMAP_MAX_CELLS = 1 << 28


class PositiveSet:
    """Answers "is item i a positive of user u?" for whole tensors at once."""

    def __init__(self, users: torch.Tensor, items: torch.Tensor, num_users: int, num_items: int):
        keys = users.to(torch.int64) * num_items + items.to(torch.int64)
        self._build(keys, torch.unique(keys), num_users, num_items)

    @classmethod
    def from_unique_keys(cls, keys: torch.Tensor, num_users: int, num_items: int) -> PositiveSet:
        """From ``user * num_items + item`` keys that are already sorted and distinct (no sort here)."""
        self = cls.__new__(cls)
        keys = keys.to(torch.int64)
        self._build(keys, keys, num_users, num_items)
        return self

    def _build(self, keys: torch.Tensor, unique_keys: torch.Tensor, num_users: int, num_items: int) -> None:
        self.num_users = num_users
        self.num_items = num_items
        self.device = keys.device
        # Counted once from the keys: summing the bitmap per user promoted all of it to int64 (1.5 GB
        # for 185M cells), the peak of a whole training run.
        self._per_user = torch.bincount(unique_keys // num_items, minlength=num_users)
        if num_users * num_items <= DENSE_BITMAP_MAX_CELLS:
            self._bitmap: torch.Tensor | None = torch.zeros(
                num_users * num_items, dtype=torch.bool, device=self.device
            )
            self._bitmap[keys] = True
            self._sorted_keys: torch.Tensor | None = None
        else:
            self._bitmap = None
            self._sorted_keys = unique_keys  # sorted, distinct

    def contains(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        keys = users.to(torch.int64) * self.num_items + items.to(torch.int64)
        if self._bitmap is not None:
            return self._bitmap[keys]
        sorted_keys = self._sorted_keys
        assert sorted_keys is not None
        if sorted_keys.numel() == 0:
            return torch.zeros_like(keys, dtype=torch.bool)
        pos = torch.searchsorted(sorted_keys, keys).clamp_(max=sorted_keys.numel() - 1)
        return sorted_keys[pos] == keys

    def positives_per_user(self) -> torch.Tensor:
        """Number of positives of each user (to detect users who have no item left to sample)."""
        return self._per_user


def sample_negatives(
    users: torch.Tensor,
    positives: PositiveSet,
    generator: torch.Generator,
    max_rounds: int = 1000,
) -> torch.Tensor:
    """One uniformly drawn non-positive item for each entry of ``users``.

    Raises ValueError if some user has interacted with every item (no negative exists).
    """
    n_items = positives.num_items
    full = positives.positives_per_user() >= n_items
    if bool(full[users].any()):
        raise ValueError("a user has interacted with every item, so no negative item can be sampled")
    items = torch.randint(n_items, users.shape, generator=generator, device=users.device)
    bad = positives.contains(users, items).nonzero().squeeze(1)
    for _ in range(max_rounds):
        if bad.numel() == 0:
            return items
        redraw = torch.randint(n_items, bad.shape, generator=generator, device=users.device)
        items[bad] = redraw
        bad = bad[positives.contains(users[bad], redraw)]
    raise RuntimeError(f"negative sampling did not finish in {max_rounds} rounds")


def sample_distinct_negatives(
    users: torch.Tensor,
    num_negatives: int,
    positives: PositiveSet,
    generator: torch.Generator,
    max_rounds: int = 1000,
) -> torch.Tensor:
    """``(len(users), num_negatives)`` negatives, distinct within each row (evaluation candidates)."""
    spare = (positives.num_items - positives.positives_per_user()[users]).min() if users.numel() else 0
    if users.numel() and int(spare) < num_negatives:
        raise ValueError(
            f"cannot sample {num_negatives} distinct negatives: some user has only {int(spare)} "
            "items they have not interacted with"
        )
    rows = users.repeat_interleave(num_negatives).view(-1, num_negatives)
    neg = sample_negatives(rows.reshape(-1), positives, generator).view(-1, num_negatives)
    # Only rows redrawn in the last round can hold a duplicate, so only those are sorted again: each row
    # is sorted on its own, so the duplicates found (and the draws that replace them) are the same as
    # when sorting every row every round.
    active = torch.arange(neg.shape[0], device=neg.device)
    for _ in range(max_rounds):
        part = neg[active]
        order = part.argsort(dim=1)
        ordered = part.gather(1, order)
        dup_sorted = torch.zeros_like(part, dtype=torch.bool)
        dup_sorted[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
        has_dup = dup_sorted.any(dim=1)
        if not bool(has_dup.any()):
            return neg
        dup = torch.zeros_like(neg, dtype=torch.bool)
        dup[active] = torch.zeros_like(dup_sorted).scatter_(1, order, dup_sorted)
        neg[dup] = sample_negatives(rows[dup], positives, generator)
        active = active[has_dup]
    raise RuntimeError(f"distinct negative sampling did not finish in {max_rounds} rounds")
