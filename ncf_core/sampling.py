"""Vectorised negative sampling.

Two exact samplers, both uniform over the items a user has not interacted with, so a training negative is
never a positive of that user; both run on whatever device the tensors live on:

- ``rejection`` (the CPU trainer's): draws uniformly and redraws every draw that hits one of the user's
  positives, in whole-tensor rounds (no per-sample Python loop). Each round reads how many draws are left
  (``nonzero``, a boolean mask), which on a GPU makes the host wait for the device every round.
- ``complement`` (the CUDA trainer's): draws the rank ``r`` of the negative among the user's non-positives
  and maps it to its item with one binary search in the sorted positive keys; fixed shapes, no rounds, so
  nothing waits for the device. Its draws differ from rejection's (another stream of random numbers), so
  a CPU run keeps rejection and its results stay as they were.
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
        # Read once here: the sampler then checks for users with every item only when there are some,
        # instead of reading a flag back from the device every step.
        self.any_full = bool((self._per_user >= num_items).any())
        self._unique_keys = unique_keys  # sorted, distinct (the complement sampler's index is built from it)
        self._complement: tuple[torch.Tensor, torch.Tensor] | None = None
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

    def complement_index(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(``shifted``, ``starts``), built on first use: ``starts[u]`` is where user u's keys begin in the
        sorted keys, and ``shifted`` holds, for a user's j-th positive p_j (ascending), ``u * num_items +
        p_j - j``: ``p_j - j`` counts the non-positives below p_j, so it is non-decreasing within a user and
        the whole array stays sorted."""
        if self._complement is None:
            keys = self._unique_keys
            starts = torch.cumsum(self._per_user, 0) - self._per_user
            rank_in_user = torch.arange(keys.numel(), device=keys.device) - starts[keys // self.num_items]
            self._complement = (keys - rank_in_user, starts)
        return self._complement

    def sample_complement(self, users: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One uniformly drawn non-positive item for each entry of ``users``, with fixed-shape tensor maths
        only (no rounds, nothing read back to the host). The user's r-th non-positive item x (r drawn
        uniformly below the user's count of non-positives) is ``r`` plus the number of its positives below
        x, which is the number of positives whose ``p_j - j <= r``: one ``searchsorted``. Users with every
        item must be refused by the caller (their count is 0)."""
        shifted, starts = self.complement_index()
        users = users.to(torch.int64)
        spare = (self.num_items - self._per_user[users]).clamp_(min=1)
        # 62 random bits modulo at most 2^31 items: the modulo's bias is below 2^-31.
        r = torch.randint(1 << 62, users.shape, generator=generator, device=users.device) % spare
        below = torch.searchsorted(shifted, users * self.num_items + r, right=True) - starts[users]
        return r + below


def sample_negatives(
    users: torch.Tensor,
    positives: PositiveSet,
    generator: torch.Generator,
    max_rounds: int = 1000,
    method: str = "rejection",
) -> torch.Tensor:
    """One uniformly drawn non-positive item for each entry of ``users``, by ``method`` (``rejection`` or
    ``complement``: the module's docstring).

    Raises ValueError if some user has interacted with every item (no negative exists).
    """
    n_items = positives.num_items
    if positives.any_full:
        full = positives.positives_per_user() >= n_items
        if bool(full[users].any()):
            raise ValueError("a user has interacted with every item, so no negative item can be sampled")
    if method == "complement":
        return positives.sample_complement(users, generator)
    if method != "rejection":
        raise ValueError(f"unknown negative sampling method {method!r}")
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
