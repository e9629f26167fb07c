"""Test data: the planted synthetic set of ``ncf_core.synthetic`` (right answer known), also as NCF files."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ncf_core.synthetic import planted_interactions, write_ratings_csv

__all__ = ["SMALL_DATA", "planted_interactions", "write_ncf_files", "write_ratings_csv"]

# Tests train on tiny data: pin the settings the defaults tune for ML-1M (5 negatives, decay, L2),
# so that retuning the defaults cannot make these tests flaky.
SMALL_DATA = {"num_neg": 4, "lr_decay": 1.0, "weight_decay": 0.0, "mlp_weight_decay": 0.0}


def write_ncf_files(prefix: Path, seed: int = 0, negatives: int = 20, **kwargs) -> Path:
    """NCF-format files (train.rating, test.rating, test.negative) from the planted data."""
    users, items, _ = planted_interactions(seed=seed, **kwargs)
    rng = np.random.default_rng(seed + 1)
    num_items = int(items.max()) + 1
    train_lines, test_lines, neg_lines = [], [], []
    for u in np.unique(users):
        mine = items[users == u]
        test_item = int(mine[-1])
        train_lines += [f"{u}\t{int(i)}\t5\t100" for i in mine[:-1]]
        test_lines.append(f"{u}\t{test_item}\t5\t200")
        pool = np.setdiff1d(np.arange(num_items), mine)
        negs = rng.choice(pool, size=negatives, replace=False)
        neg_lines.append(f"({u},{test_item})\t" + "\t".join(str(int(n)) for n in negs))
    prefix.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{prefix}.train.rating").write_text("\n".join(train_lines) + "\n")
    Path(f"{prefix}.test.rating").write_text("\n".join(test_lines) + "\n")
    Path(f"{prefix}.test.negative").write_text("\n".join(neg_lines) + "\n")
    return prefix
