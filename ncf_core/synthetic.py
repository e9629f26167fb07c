"""A small synthetic interaction set with a planted structure whose right answer is known.

Users and items fall into ``groups``; each user interacts only with items of their own group, and every
item is about equally popular. A model that learns the groups ranks a held-out item among its ~1/groups
same-group negatives (HR@10 well above 0.5); random ranking or popularity gives HR@10 ≈ 0.1. Used by the
tests and by the quick-start when MovieLens cannot be had (it is labelled synthetic wherever it is used).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def planted_interactions(
    num_users: int = 240, num_items: int = 120, groups: int = 6, per_user: int = 12, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(users, items, timestamps) with every user holding ``per_user`` distinct items of their group."""
    rng = np.random.default_rng(seed)
    user_group = np.arange(num_users) % groups
    item_group = np.arange(num_items) % groups
    users, items = [], []
    for u in range(num_users):
        pool = np.nonzero(item_group == user_group[u])[0]
        chosen = rng.choice(pool, size=min(per_user, len(pool)), replace=False)
        users.extend([u] * len(chosen))
        items.extend(chosen.tolist())
    ts = rng.integers(1_000_000, 2_000_000, size=len(users))
    return np.asarray(users), np.asarray(items), ts


def write_ratings_csv(path: Path, string_ids: bool = False, **kwargs) -> Path:
    """A ``user_id,item_id,rating,timestamp`` CSV of the planted data (ids offset so they are not indices)."""
    users, items, ts = planted_interactions(**kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        fh.write("user_id,item_id,rating,timestamp\n")
        for u, i, t in zip(users, items, ts, strict=True):
            uid = f"u{u}" if string_ids else str(u + 1)
            iid = f"i{i}" if string_ids else str(i + 10)
            fh.write(f"{uid},{iid},5,{t}\n")
    return path
