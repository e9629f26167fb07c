"""Inference on a loaded artifact with raw ids in and out: pair scores and top-K recommendations.

Both network halves are computed once at load (every user's and item's GMF embedding and first-layer
projection), so a request only gathers rows and runs the small upper layers. Unknown users get the most
popular items (flagged ``fallback``); unknown items are an error the caller can turn into a 400.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import artifact as artifact_io
from .errors import UnknownIdError

log = logging.getLogger("ncf_core.inference")


@dataclass(frozen=True)
class Recommendation:
    user: object
    items: list
    scores: list[float]
    fallback: bool  # True: user unknown to the model, items are the most popular ones

    def as_dict(self) -> dict:
        return {"user": self.user, "items": self.items, "scores": self.scores, "fallback": self.fallback}


class IdMap:
    """Raw id ↔ index. Integer maps also accept numeric strings, string maps also accept integers."""

    def __init__(self, ids: Sequence):
        self.ids = list(ids)
        self.numeric = all(isinstance(x, int) and not isinstance(x, bool) for x in self.ids)
        self._index = {x: i for i, x in enumerate(self.ids)}
        self._raw = np.asarray(self.ids, dtype=np.int64 if self.numeric else object)

    def __len__(self) -> int:
        return len(self.ids)

    def get(self, raw: object) -> int | None:
        if isinstance(raw, bool):
            return None
        if self.numeric:
            if isinstance(raw, str):
                try:
                    raw = int(raw.strip())
                except ValueError:
                    return None
            elif isinstance(raw, float) and raw.is_integer():
                raw = int(raw)
        elif isinstance(raw, int):
            raw = str(raw)
        try:
            return self._index.get(raw)
        except TypeError:  # unhashable (list, dict)
            return None

    def lookup(self, raws: Iterable, kind: str) -> np.ndarray:
        out = []
        for raw in raws:
            idx = self.get(raw)
            if idx is None:
                raise UnknownIdError(f"unknown {kind} id {raw!r}")
            out.append(idx)
        return np.asarray(out, dtype=np.int64)

    def raw(self, indices: np.ndarray) -> list:
        return self._raw[indices].tolist()


class Recommender:
    """A loaded model ready to answer requests (thread-safe: inference only reads)."""

    def __init__(self, art: artifact_io.Artifact, device: str | torch.device = "cpu"):
        self.artifact = art
        self.device = torch.device(device)
        self.model = art.model.to(self.device).eval()
        self.users = IdMap(art.user_ids)
        self.items = IdMap(art.item_ids)
        with torch.inference_mode():
            self._user_side = self.model.user_side()
            self._item_side = self.model.item_side()
        self._indptr = art.history_indptr
        self._history = art.history_indices
        self._popular = np.argsort(-art.item_popularity, kind="stable")
        pop = art.item_popularity.astype(np.float64)
        self._popularity_score = (pop / pop.max()) if pop.max() > 0 else pop

    @classmethod
    def load(cls, model_dir: str | Path, device: str | torch.device = "cpu") -> Recommender:
        return cls(artifact_io.load(model_dir, device="cpu"), device)

    @property
    def num_items(self) -> int:
        return len(self.items)

    # ------------------------------------------------------------------ scoring
    @torch.inference_mode()
    def _scores(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Probabilities for index pairs (broadcasting numpy shapes)."""
        u = torch.from_numpy(np.ascontiguousarray(users)).to(self.device)
        i = torch.from_numpy(np.ascontiguousarray(items)).to(self.device)
        us = tuple(None if t is None else t[u] for t in self._user_side)
        its = tuple(None if t is None else t[i] for t in self._item_side)
        return torch.sigmoid(self.model.head(us, its)).float().cpu().numpy()

    def score(self, users: Sequence, items: Sequence) -> list[float]:
        """P(interaction) for each (user, item) pair; unknown ids raise UnknownIdError."""
        if len(users) != len(items):
            raise ValueError(f"users ({len(users)}) and items ({len(items)}) differ in length")
        if not users:
            return []
        u = self.users.lookup(users, "user")
        i = self.items.lookup(items, "item")
        return self._scores(u, i).tolist()

    def seen(self, user_index: int) -> np.ndarray:
        return self._history[self._indptr[user_index] : self._indptr[user_index + 1]]

    def recommend(
        self,
        user: object,
        k: int = 10,
        candidates: Sequence | None = None,
        exclude_seen: bool = True,
    ) -> Recommendation:
        """Top-``k`` items for one raw user id, over all items or ``candidates`` (raw item ids)."""
        return self.recommend_many([user], k, candidates, exclude_seen)[0]

    def recommend_many(
        self,
        users: Sequence,
        k: int = 10,
        candidates: Sequence | None = None,
        exclude_seen: bool = True,
    ) -> list[Recommendation]:
        if k < 1:
            raise ValueError(f"k must be ≥ 1, got {k}")
        cand = None if candidates is None else self._candidate_indices(candidates)
        known = [(pos, self.users.get(u)) for pos, u in enumerate(users)]
        out: list[Recommendation | None] = [None] * len(users)
        idx = [(pos, ui) for pos, ui in known if ui is not None]
        if idx:
            positions, uidx = zip(*idx, strict=True)
            uarr = np.asarray(uidx, np.int64)
            items = np.arange(self.num_items) if cand is None else cand
            scores = self._scores(uarr[:, None], items[None, :])
            if exclude_seen:
                for row, ui in enumerate(uarr):
                    seen = self.seen(int(ui))
                    if cand is None:
                        scores[row, seen] = -np.inf
                    else:
                        scores[row, np.isin(items, seen)] = -np.inf
            for row, pos in enumerate(positions):
                top = _top_k(scores[row], k)
                out[pos] = Recommendation(
                    users[pos], self.items.raw(items[top]), scores[row, top].tolist(), False
                )
        for pos, ui in known:
            if ui is None:
                out[pos] = self._popular_for(users[pos], k, cand)
        return out  # type: ignore[return-value]

    def _candidate_indices(self, candidates: Sequence) -> np.ndarray:
        if len(candidates) == 0:
            raise ValueError("candidate list is empty")
        return self.items.lookup(candidates, "item")

    def _popular_for(self, user: object, k: int, cand: np.ndarray | None) -> Recommendation:
        if cand is None:
            top = self._popular[:k]
        else:
            order = np.argsort(-self._popularity_score[cand], kind="stable")[:k]
            top = cand[order]
        return Recommendation(user, self.items.raw(top), self._popularity_score[top].tolist(), True)


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best finite scores, best first (seen items, scored -inf, are never returned)."""
    finite = np.isfinite(scores)
    n = int(finite.sum())
    k = min(k, n)
    if k == 0:
        return np.zeros(0, np.int64)
    part = np.argpartition(-scores, k - 1)[:k] if k < scores.shape[0] else np.arange(scores.shape[0])
    part = part[np.isfinite(scores[part])]
    return part[np.argsort(-scores[part], kind="stable")]
