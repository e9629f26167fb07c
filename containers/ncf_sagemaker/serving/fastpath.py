"""A numpy copy of the network's scoring head, for the request shapes that dominate traffic.

Why: on the seed payload (100 pairs) ``Recommender.score`` spends most of its time in per-call overhead,
not arithmetic: a Python loop over the raw ids and a dozen small torch ops of ~5-10 µs each. Here the
item ids go through one dense numpy table and the head runs as a few numpy calls on tables computed once
at load, which halves the model's share of a request (measured figures in the README).

The maths is the network's own (``NCF.user_side``/``item_side`` give the precomputed halves; the upper MLP
layers and the output layer are read from the model), and ``FastScorer.build`` checks the copy against
``Recommender.score`` before it is used: if the two ever disagree (a new model variant, a changed head),
serving logs why and keeps using ``Recommender`` for everything.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from ncf_core.errors import UnknownIdError
from ncf_core.inference import IdMap, Recommendation, Recommender

log = logging.getLogger("ncf_sagemaker.serving.fastpath")

SELF_CHECK_TOLERANCE = 1e-5
# A dense raw-id table is used while it stays within this many entries per known id (MovieLens ids are
# dense); sparse id spaces fall back to the id map's dictionary.
_DENSE_SLACK = 8
_DENSE_MIN = 1 << 16


class _Lookup:
    """Raw ids → indices, vectorised when the raw ids are dense-enough non-negative integers."""

    def __init__(self, id_map: IdMap, kind: str):
        self.map = id_map
        self.kind = kind
        self.table: np.ndarray | None = None
        if id_map.numeric and len(id_map):
            raw = np.asarray(id_map.ids, dtype=np.int64)
            top = int(raw.max())
            if raw.min() >= 0 and top < max(_DENSE_MIN, _DENSE_SLACK * len(id_map)):
                self.table = np.full(top + 1, -1, dtype=np.int64)
                self.table[raw] = np.arange(len(raw), dtype=np.int64)

    def one(self, raw: object) -> int | None:
        table = self.table
        if table is not None and type(raw) is int:
            return int(table[raw]) if 0 <= raw < len(table) and table[raw] >= 0 else None
        return self.map.get(raw)

    def many(self, raws: Sequence) -> np.ndarray:
        """Indices of ``raws``; raises UnknownIdError naming the first id the model does not know."""
        table = self.table
        if table is not None:
            arr = np.asarray(raws)
            if arr.dtype.kind == "i" and arr.ndim == 1:  # only Python ints (no bool, str or float)
                if arr.size and arr.min() >= 0 and arr.max() < len(table):
                    idx = table[arr]
                    if idx.min() >= 0:
                        return idx
                for raw in raws:  # rare: find which id is unknown, for the error message
                    if self.one(raw) is None:
                        raise UnknownIdError(f"unknown {self.kind} id {raw!r}")
        return self.map.lookup(raws, self.kind)


class FastScorer:
    """Probabilities for (user index, item indices) from numpy tables; read-only, so thread-safe."""

    def __init__(self, rec: Recommender):
        self.rec = rec
        model = rec.model
        config = model.config
        self.users = _Lookup(rec.users, "user")
        self.items = _Lookup(rec.items, "item")
        self.num_items = rec.num_items
        with torch.no_grad():
            user_gmf, user_proj = model.user_side()
            item_gmf, item_proj = model.item_side()
            weight = model.predict_layer.weight.detach().float().cpu().numpy()[0]
            self.bias = np.float32(model.predict_layer.bias.detach().float().cpu().numpy()[0])
            self.layers = (
                [
                    (
                        np.ascontiguousarray(layer.weight.detach().float().cpu().numpy().T),
                        layer.bias.detach().float().cpu().numpy().copy(),
                    )
                    for layer in model.mlp_layers[1:]
                ]
                if config.uses_mlp
                else []
            )
        self.user_gmf = _array(user_gmf)
        self.item_gmf = _array(item_gmf)
        self.user_proj = _array(user_proj)
        self.item_proj = _array(item_proj)
        gmf_width = config.factor if config.uses_gmf else 0
        self.w_gmf = weight[:gmf_width].copy() if config.uses_gmf else None
        self.w_mlp = weight[gmf_width:].copy() if config.uses_mlp else None

    @classmethod
    def build(cls, rec: Recommender) -> FastScorer | None:
        """A checked fast scorer, or None (with the reason logged) when it cannot be trusted."""
        try:
            scorer = cls(rec)
            worst = scorer.self_check(rec)
        except Exception as exc:  # any surprise in the model's layout means: do not use the copy
            log.warning("fast path disabled: %s: %s", type(exc).__name__, exc)
            return None
        if not worst <= SELF_CHECK_TOLERANCE:
            log.warning("fast path disabled: it differs from Recommender.score by %.3g", worst)
            return None
        return scorer

    def self_check(self, rec: Recommender, samples: int = 64) -> float:
        """Largest absolute difference from ``Recommender.score`` on pairs spread over both id maps."""
        users = np.linspace(0, len(rec.users) - 1, samples).astype(np.int64)
        items = np.linspace(0, rec.num_items - 1, samples).astype(np.int64)[::-1].copy()
        expected = np.asarray(rec.score(rec.users.raw(users), rec.items.raw(items)), dtype=np.float64)
        got = self.scores_pairs(users, items).astype(np.float64)
        single = self.scores(int(users[0]), items).astype(np.float64)
        reference = np.asarray(
            rec.score(rec.users.raw(np.full(samples, users[0])), rec.items.raw(items)), dtype=np.float64
        )
        return float(max(np.abs(got - expected).max(), np.abs(single - reference).max()))

    # ------------------------------------------------------------------ scoring
    def logits(self, user: int, items: np.ndarray | None = None) -> np.ndarray:
        """One user against ``items`` (indices; None = every item): float32 logits."""
        logit = None
        if self.w_gmf is not None:
            item_gmf = self.item_gmf if items is None else self.item_gmf[items]
            logit = item_gmf @ (self.user_gmf[user] * self.w_gmf)
        if self.w_mlp is not None:
            if items is None:
                h = self.item_proj + self.user_proj[user]
            else:
                h = self.item_proj[items]
                h += self.user_proj[user]
            mlp = self._mlp(h)
            logit = mlp if logit is None else logit + mlp
        logit += self.bias
        return logit

    def scores(self, user: int, items: np.ndarray | None = None) -> np.ndarray:
        """Probabilities of ``logits``."""
        return sigmoid(self.logits(user, items))

    def scores_pairs(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Probabilities for element-wise pairs of user and item indices."""
        logit = None
        if self.w_gmf is not None:
            logit = (self.user_gmf[users] * self.item_gmf[items]) @ self.w_gmf
        if self.w_mlp is not None:
            h = self.user_proj[users]
            h += self.item_proj[items]
            mlp = self._mlp(h)
            logit = mlp if logit is None else logit + mlp
        logit += self.bias
        return sigmoid(logit)

    def _mlp(self, h: np.ndarray) -> np.ndarray:
        np.maximum(h, 0, out=h)
        for weight, bias in self.layers:
            h = h @ weight
            h += bias
            np.maximum(h, 0, out=h)
        return h @ self.w_mlp

    # ------------------------------------------------------------------ answers
    def top_items(self, user: object, items: list, k: int) -> list | None:
        """The workshop's answer for one known user: the ``k`` best of ``items`` (raw ids), best first.

        None when the user is unknown (the caller then asks ``Recommender`` for the popularity fallback).
        Ranks on logits: the sigmoid is monotonic and nobody reads these scores.
        """
        u = self.users.one(user)
        if u is None:
            return None
        idx = self.items.many(items)
        return self.items.map.raw(idx[top_k(self.logits(u, idx), k)])

    def recommend(
        self, user: object, k: int, candidates: np.ndarray | None, exclude_seen: bool
    ) -> Recommendation | None:
        """``Recommender.recommend`` for one known user (None if unknown: the fallback is Recommender's).

        Same contract: seen items are never returned when excluded, so fewer than ``k`` may come back.
        """
        u = self.users.one(user)
        if u is None:
            return None
        logits = self.logits(u, candidates)
        if exclude_seen:
            seen = self.rec.seen(u)
            if candidates is None:
                logits[seen] = -np.inf
            else:
                logits[np.isin(candidates, seen)] = -np.inf
        order = top_k(logits, k)
        order = order[np.isfinite(logits[order])]
        chosen = order if candidates is None else candidates[order]
        return Recommendation(user, self.items.map.raw(chosen), sigmoid(logits[order]).tolist(), False)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` highest scores, best first (ties keep input order)."""
    n = scores.shape[0]
    if k >= n:
        return np.argsort(-scores, kind="stable")
    part = np.argpartition(-scores, k - 1)[:k]
    return part[np.argsort(-scores[part], kind="stable")]


def sigmoid(x: np.ndarray) -> np.ndarray:
    """float32 logistic via tanh, which cannot overflow (1 / (1 + exp(-x)) warns below x = -88)."""
    out = np.tanh(x * np.float32(0.5), dtype=np.float32)
    out += np.float32(1.0)
    out *= np.float32(0.5)
    return out


def _array(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else np.ascontiguousarray(t.detach().float().cpu().numpy())
