"""The workshop's training loop, re-implemented so that every benchmark run times it on the same machine.

"Times faster than the workshop" is then a ratio measured in one run, never a remembered figure. What is
faithful to the workshop (``1_Train/src`` of gonsoomoon-ml/Neural-Collaborative-Filtering-On-SageMaker,
itself guoyang9/NCF):

- negatives: for each training pair, 4 items drawn one ``np.random.randint`` at a time, redrawn while the
  pair is in the training matrix (a dict keyed by ``(user, item)``, which is what the workshop's
  ``scipy.sparse.dok_matrix`` membership test was), then the epoch's 5 lists zipped and shuffled with
  ``random.shuffle``;
- a map-style ``Dataset`` returning one ``(user, item, label)`` per index, a ``DataLoader`` at batch 256 with
  ``shuffle=True`` and ``num_workers=4``;
- NeuMF-32 with 3 MLP layers (dropout layers at 0), dense embeddings, ``BCEWithLogitsLoss``, Adam at 1e-3;
- after each epoch, HR@10/NDCG@10 one user at a time: a ``DataLoader`` of 100 candidates per batch, a
  forward, ``topk`` and a Python hit test.

The epoch is extrapolated: negative sampling and shuffling are timed on a slice of the pairs, the loop on
``batches`` batches after the workers' start, the evaluation on ``eval_users`` users, each scaled to the
whole epoch. The workshop trains 20 epochs
(its default; its source reports HR@10 0.701 for NeuMF without pre-training after them, picked on the test
set), so its time to HR@10 ≈ 0.70 is 20 epochs.
"""

from __future__ import annotations

import random
import time
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils import data as torch_data

NUM_NEGATIVES = 4
BATCH_SIZE = 256
LEARNING_RATE = 1e-3
FACTOR = 32
LAYERS = 3
WORKERS = 4
EPOCHS_TO_HR_070 = 20


class WorkshopNeuMF(nn.Module):
    """The workshop's NeuMF: concatenated MLP embeddings through Dropout → Linear → ReLU blocks."""

    def __init__(self, num_users: int, num_items: int, factor: int = FACTOR, layers: int = LAYERS):
        super().__init__()
        mlp_dim = factor * 2 ** (layers - 1)
        self.user_gmf = nn.Embedding(num_users, factor)
        self.item_gmf = nn.Embedding(num_items, factor)
        self.user_mlp = nn.Embedding(num_users, mlp_dim)
        self.item_mlp = nn.Embedding(num_items, mlp_dim)
        blocks: list[nn.Module] = []
        for k in range(layers):
            width = factor * 2 ** (layers - k)
            blocks += [nn.Dropout(0.0), nn.Linear(width, width // 2), nn.ReLU()]
        self.mlp = nn.Sequential(*blocks)
        self.predict = nn.Linear(factor * 2, 1)

    def forward(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        gmf = self.user_gmf(user) * self.item_gmf(item)
        mlp = self.mlp(torch.cat((self.user_mlp(user), self.item_mlp(item)), -1))
        return self.predict(torch.cat((gmf, mlp), -1)).view(-1)


class PairDataset(torch_data.Dataset):
    """One ``(user, item, label)`` per index, from Python lists, as the workshop's ``NCFData``."""

    def __init__(self, pairs: list[list[int]], labels: list[int]):
        self.pairs = pairs
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, idx: int) -> tuple[int, int, int]:
        user, item = self.pairs[idx]
        return user, item, self.labels[idx]


def sample_negatives(pairs: list[list[int]], num_items: int, train_mat: dict) -> list[list[int]]:
    """The workshop's ``ng_sample``: Python rejection sampling, one draw per call."""
    negatives = []
    for user, _ in pairs:
        for _ in range(NUM_NEGATIVES):
            j = np.random.randint(num_items)
            while (user, j) in train_mat:
                j = np.random.randint(num_items)
            negatives.append([user, j])
    return negatives


def shuffled(pairs: list[list[int]], labels: list[int]) -> tuple[list[list[int]], list[int]]:
    zipped = list(zip(pairs, labels, strict=True))
    random.shuffle(zipped)
    out_pairs, out_labels = zip(*zipped, strict=True)
    return list(out_pairs), list(out_labels)


def evaluate_one_user_at_a_time(model: nn.Module, candidates: list[list[int]], k: int = 10) -> float:
    """The workshop's ``evaluate.metrics`` over rows of ``[user, held-out item, 99 negatives...]``;
    returns HR@k (its NDCG is the same loop)."""
    rows = [[row[0], item] for row in candidates for item in row[1:]]
    loader = torch_data.DataLoader(
        PairDataset(rows, [0] * len(rows)), batch_size=len(candidates[0]) - 1, shuffle=False
    )
    hits = []
    model.eval()
    with torch.no_grad():
        for user, item, _ in loader:
            _, top = torch.topk(model(user, item), k)
            recommended = torch.take(item, top).numpy().tolist()
            hits.append(int(item[0].item()) in recommended)
    model.train()
    return float(np.mean(hits))


def time_epoch(
    users: np.ndarray,
    items: np.ndarray,
    num_users: int,
    num_items: int,
    test_candidates: np.ndarray,
    batches: int = 2000,
    sample_pairs: int = 100_000,
    eval_users: int = 500,
    seed: int = 0,
) -> dict[str, Any]:
    """Seconds one epoch of the workshop's loop takes here, extrapolated from a timed part of it.

    ``test_candidates``: one row per test user, ``[user, held-out item, negatives...]``."""
    np.random.seed(seed)
    random.seed(seed)
    torch.manual_seed(seed)
    pairs = np.stack([users, items], 1).tolist()
    train_mat = {(u, i): 1.0 for u, i in pairs}
    part = pairs[: min(sample_pairs, len(pairs))]
    scale = len(pairs) / len(part)

    t = time.perf_counter()
    negatives = sample_negatives(part, num_items, train_mat)
    sampling_s = (time.perf_counter() - t) * scale
    part_pairs = part + negatives
    part_labels = [1] * len(part) + [0] * len(negatives)
    t = time.perf_counter()
    shuffled(part_pairs, part_labels)
    shuffle_s = (time.perf_counter() - t) * scale

    # The loop over a full-size epoch of samples (negatives repeated from the slice: the loop cost
    # depends on the count, not on which items).
    epoch_len = len(pairs) * (1 + NUM_NEGATIVES)
    all_pairs = pairs + negatives * int(np.ceil(len(pairs) / len(part)))
    all_pairs = all_pairs[:epoch_len]
    labels = [1] * len(pairs) + [0] * (epoch_len - len(pairs))
    loader = torch_data.DataLoader(
        PairDataset(all_pairs, labels), batch_size=BATCH_SIZE, shuffle=True, num_workers=WORKERS
    )
    model = WorkshopNeuMF(num_users, num_items)
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    loss_fn = nn.BCEWithLogitsLoss()
    model.train()
    warmup = min(50, batches // 10)
    timed = 0
    start = time.perf_counter()
    for step, (user, item, label) in enumerate(loader):
        if step == warmup:
            start = time.perf_counter()
        model.zero_grad()
        loss = loss_fn(model(user, item), label.float())
        loss.backward()
        optimizer.step()
        if step >= warmup:
            timed += 1
        if timed >= batches:
            break
    loop_s_per_batch = (time.perf_counter() - start) / max(timed, 1)
    del loader
    loop_s = loop_s_per_batch * len(range(0, epoch_len, BATCH_SIZE))

    part_test = test_candidates[:eval_users].tolist()
    t = time.perf_counter()
    evaluate_one_user_at_a_time(model, part_test)
    eval_s = (time.perf_counter() - t) * len(test_candidates) / len(part_test)
    epoch_s = sampling_s + shuffle_s + loop_s + eval_s
    return {
        "workshop_epoch_s": round(epoch_s, 1),
        "workshop_sampling_s": round(sampling_s + shuffle_s, 1),
        "workshop_batch_ms": round(loop_s_per_batch * 1000, 2),
        "workshop_batches_timed": timed,
        "workshop_eval_s": round(eval_s, 1),
        "workshop_epochs_to_hr_070": EPOCHS_TO_HR_070,
        "workshop_time_to_hr_070_s": round(epoch_s * EPOCHS_TO_HR_070, 1),
    }
