"""The sagemaker-inference handler seam: ``model_fn`` → ``input_fn`` → ``predict_fn`` → ``output_fn``.

Why keep it: users of SageMaker's framework containers customise serving by dropping ``code/inference.py``
into the model directory with any of these four functions; the same file works here. Functions it does
not define keep our defaults below. Signatures are sagemaker-inference's, each with an optional trailing
``context`` (a ``Context``) that we pass only to functions that accept it:

    model_fn(model_dir)                  -> model
    input_fn(request_body, content_type) -> data       (request_body is bytes)
    predict_fn(data, model)              -> prediction
    output_fn(prediction, accept)        -> bytes | str | (body, content_type) | (body, content_type, headers)

plus our optional ``warmup_fn(model)``, run once before /ping turns 200 (the default warms the default
model up with a real request; a custom ``model_fn`` without ``warmup_fn`` is ready once it returns).

Errors: raise ``ncf_sagemaker.serving.errors.HttpError`` subclasses for a specific status; a ValueError
or KeyError from ``input_fn`` or ``predict_fn`` is the client's fault (400); anything else is a 500 logged
with the request id.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ncf_core.inference import Recommendation, Recommender

from . import protocol
from .errors import BadRequest
from .fastpath import FastScorer, top_k

log = logging.getLogger("ncf_sagemaker.serving.handler")

USER_CODE = Path("code") / "inference.py"
HOOKS = ("model_fn", "input_fn", "predict_fn", "output_fn", "warmup_fn")
FALLBACK_HEADER = "X-Ncf-Fallback"
# Users per Recommender call: bounds the (users x items) score matrix a request can allocate.
RECOMMEND_CHUNK = 128


@dataclass(frozen=True)
class Context:
    """Per-request facts a handler function may want (pass-through of SageMaker's headers)."""

    request_id: str
    custom_attributes: str | None = None
    model_name: str | None = None
    model_dir: Path | None = None


@dataclass(frozen=True, slots=True)
class Prediction:
    """What the default ``predict_fn`` returns: results in request order and how the request arrived."""

    results: list
    kind: protocol.Kind


class ServingModel:
    """The default model: a ``Recommender`` plus its checked numpy fast path (None if it failed its check)."""

    def __init__(self, recommender: Recommender, fast: FastScorer | None):
        self.recommender = recommender
        self.fast = fast
        self.num_items = recommender.num_items

    def cost(self, batch: protocol.Batch) -> int:
        """(user, item) pairs the batch scores: the server runs cheap requests on its event loop."""
        total = 0
        for q in batch.queries:
            if isinstance(q, protocol.RecommendQuery):
                total += len(q.users) * (self.num_items if q.candidates is None else len(q.candidates))
            else:
                total += len(q.items)
        return total

    def _check_k(self, k: int) -> None:
        if k > self.num_items:
            raise BadRequest(f"'k' is {k} but the model knows only {self.num_items} items")

    def top_items(self, query: protocol.TopItemsQuery) -> protocol.TopItemsResult:
        self._check_k(query.k)
        users = query.users
        first = users[0]
        if users.count(first) == len(users):
            if self.fast is not None:
                items = self.fast.top_items(first, query.items, query.k)
                if items is not None:
                    return protocol.TopItemsResult(items, False)
            rec = self.recommender.recommend(first, query.k, query.items, exclude_seen=False)
            return protocol.TopItemsResult(rec.items, rec.fallback)
        scored = self.score(protocol.ScoreQuery(users, query.items))
        order = top_k(np.asarray(scored.scores, dtype=np.float64), query.k)
        return protocol.TopItemsResult([scored.items[i] for i in order.tolist()], any(scored.fallback))

    def recommend(self, query: protocol.RecommendQuery) -> protocol.RecommendResult:
        self._check_k(query.k)
        out: list[Recommendation] = []
        if self.fast is not None:
            fast = self.fast
            cand = None if query.candidates is None else fast.items.many(query.candidates)
            for user in query.users:
                rec = fast.recommend(user, query.k, cand, query.exclude_seen)
                if rec is None:  # unknown user: Recommender owns the popularity fallback
                    rec = self.recommender.recommend(user, query.k, query.candidates, query.exclude_seen)
                out.append(rec)
            return protocol.RecommendResult(out)
        for start in range(0, len(query.users), RECOMMEND_CHUNK):
            chunk = query.users[start : start + RECOMMEND_CHUNK]
            out += self.recommender.recommend_many(chunk, query.k, query.candidates, query.exclude_seen)
        return protocol.RecommendResult(out)

    def score(self, query: protocol.ScoreQuery) -> protocol.ScoreResult:
        """Pair probabilities; pairs of unknown users get the item's normalised popularity, flagged."""
        rec = self.recommender
        items_idx = (self.fast.items.many if self.fast else _lookup(rec.items, "item"))(query.items)
        user_of = self.fast.users.one if self.fast else rec.users.get
        users_idx = [user_of(u) for u in query.users]
        scores = np.zeros(len(users_idx), dtype=np.float64)
        fallback = [u is None for u in users_idx]
        known = [pos for pos, u in enumerate(users_idx) if u is not None]
        if known:
            u = np.asarray([users_idx[p] for p in known], dtype=np.int64)
            i = items_idx[known]
            if self.fast is not None:
                scores[known] = self.fast.scores_pairs(u, i)
            else:
                scores[known] = rec.score(rec.users.raw(u), rec.items.raw(i))
        unknown: dict[Any, list[int]] = {}
        for pos, is_unknown in enumerate(fallback):
            if is_unknown:
                unknown.setdefault(query.users[pos], []).append(pos)
        for user, positions in unknown.items():
            wanted = list(dict.fromkeys(query.items[p] for p in positions))
            popular = rec.recommend(user, len(wanted), wanted, exclude_seen=False)
            by_item = dict(zip(popular.items, popular.scores, strict=True))
            scores[positions] = [by_item[item] for item in rec.items.raw(items_idx[positions])]
        return protocol.ScoreResult(list(query.users), rec.items.raw(items_idx), scores.tolist(), fallback)


def _lookup(id_map: Any, kind: str) -> Callable[[list], np.ndarray]:
    return lambda raws: id_map.lookup(raws, kind)


# --------------------------------------------------------------------------------------------- defaults
def model_fn(model_dir: str | Path) -> ServingModel:
    """Load the artifact (checksums verified) and build the checked numpy fast path."""
    rec = Recommender.load(model_dir)
    fast = FastScorer.build(rec)
    log.info(
        "loaded %s model from %s: %d users, %d items, fast path %s",
        rec.model.config.model,
        model_dir,
        len(rec.users),
        rec.num_items,
        "on" if fast else "off",
    )
    return ServingModel(rec, fast)


def input_fn(request_body: bytes, request_content_type: str | None, context: Context | None = None):
    attributes = protocol.custom_attributes(context.custom_attributes if context else None)
    return protocol.parse(request_body, protocol.request_kind(request_content_type), attributes)


def predict_fn(data: protocol.Batch, model: ServingModel) -> Prediction:
    results: list[protocol.Result] = []
    for query in data.queries:
        if isinstance(query, protocol.TopItemsQuery):
            results.append(model.top_items(query))
        elif isinstance(query, protocol.RecommendQuery):
            results.append(model.recommend(query))
        else:
            results.append(model.score(query))
    return Prediction(results, data.kind)


def output_fn(prediction: Prediction, accept: str | None) -> tuple[bytes, str, tuple]:
    media = protocol.response_type(accept, prediction.kind)
    body = protocol.encode(prediction.results, prediction.kind, media)
    headers: tuple = ()
    if prediction.kind == "json" and isinstance(prediction.results[0], protocol.TopItemsResult):
        # The workshop's bare-array answer has no room for the fallback flag: it travels as a header.
        headers = ((FALLBACK_HEADER, "true" if prediction.results[0].fallback else "false"),)
    return body, media, headers


def warmup_fn(model: ServingModel) -> None:
    """A real request through every default step: the first user against up to 100 items, then top-10."""
    rec = model.recommender
    n = min(100, rec.num_items)
    user = rec.users.raw(np.zeros(1, dtype=np.int64))[0]
    items = rec.items.raw(np.arange(n))
    for doc in ({"user": [user] * n, "item": items}, {"users": [user], "k": 10}):
        body = protocol.encode(
            predict_fn(protocol.Batch([protocol.parse_query(doc)], "json"), model).results,
            "json",
            protocol.JSON,
        )
        if not body:
            raise RuntimeError("warm-up produced an empty response")


# --------------------------------------------------------------------------------------------- the seam
@dataclass
class Handler:
    """The five hooks in use for one model, and which of them come from the user's code."""

    model_fn: Callable[..., Any] = model_fn
    input_fn: Callable[..., Any] = input_fn
    predict_fn: Callable[..., Any] = predict_fn
    output_fn: Callable[..., Any] = output_fn
    warmup_fn: Callable[..., Any] | None = warmup_fn
    overridden: frozenset[str] = frozenset()
    source: Path | None = None
    _wants_context: dict[str, bool] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for name in ("model_fn", "input_fn", "predict_fn", "output_fn"):
            self._wants_context[name] = _accepts_extra(getattr(self, name), _ARITY[name])

    @property
    def is_default_pipeline(self) -> bool:
        """All of input/predict/output are ours, so the server may negotiate and validate up front."""
        return not (self.overridden & {"input_fn", "predict_fn", "output_fn"})

    def call(self, name: str, context: Context, *args: Any) -> Any:
        fn = getattr(self, name)
        return fn(*args, context) if self._wants_context[name] else fn(*args)


_ARITY = {"model_fn": 1, "input_fn": 2, "predict_fn": 2, "output_fn": 2}


def _accepts_extra(fn: Callable[..., Any], arity: int) -> bool:
    """Does ``fn`` take a parameter after its ``arity`` positional ones (the optional context)?"""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return True
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) > arity


def load_handler(model_dir: str | Path, module_name: str = "ncf_user_inference") -> Handler:
    """Our defaults, overridden by whatever ``MODEL_DIR/code/inference.py`` defines.

    The code directory goes on ``sys.path`` so the user's module can import its helpers. A file that does
    not import raises, and the model then reports the reason through /ping.
    """
    path = Path(model_dir) / USER_CODE
    if not path.is_file():
        return Handler()
    code_dir = str(path.parent.resolve())
    if code_dir not in sys.path:
        sys.path.insert(0, code_dir)
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    hooks = {name: getattr(module, name) for name in HOOKS if callable(getattr(module, name, None))}
    if "model_fn" in hooks and "warmup_fn" not in hooks:
        hooks["warmup_fn"] = None  # our warm-up only knows our own model type
    log.info("%s overrides %s", path, ", ".join(sorted(hooks)) or "nothing")
    return Handler(**hooks, overridden=frozenset(k for k, v in hooks.items() if v is not None), source=path)
