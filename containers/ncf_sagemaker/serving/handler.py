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

from ncf_core.inference import Recommender

from . import protocol
from .errors import BadRequest

log = logging.getLogger("ncf_sagemaker.serving.handler")

USER_CODE = Path("code") / "inference.py"
HOOKS = ("model_fn", "input_fn", "predict_fn", "output_fn", "warmup_fn")
FALLBACK_HEADER = "X-Ncf-Fallback"


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


# --------------------------------------------------------------------------------------------- defaults
def model_fn(model_dir: str | Path) -> Recommender:
    """Load the artifact (checksums verified) with its checked numpy scorer."""
    rec = Recommender.load(model_dir)
    log.info(
        "loaded %s model from %s: %d users, %d items, %s scorer",
        rec.model.config.model,
        model_dir,
        len(rec.users),
        rec.num_items,
        rec.backend,
    )
    return rec


def input_fn(request_body: bytes, request_content_type: str | None, context: Context | None = None):
    attributes = protocol.custom_attributes(context.custom_attributes if context else None)
    return protocol.parse(request_body, protocol.request_kind(request_content_type), attributes)


def predict_fn(data: protocol.Batch, model: Recommender) -> Prediction:
    """Each protocol query is one ``Recommender`` call."""
    results: list[protocol.Result] = []
    for query in data.queries:
        k = getattr(query, "k", None)
        if k is not None and k > model.num_items:
            raise BadRequest(f"'k' is {k} but the model knows only {model.num_items} items")
        if isinstance(query, protocol.TopItemsQuery):
            results.append(protocol.TopItemsResult(*model.top_items(query.users, query.items, query.k)))
        elif isinstance(query, protocol.RecommendQuery):
            recs = model.recommend_many(query.users, query.k, query.candidates, query.exclude_seen)
            results.append(protocol.RecommendResult(recs))
        else:
            scored = model.score_pairs(query.users, query.items)
            results.append(protocol.ScoreResult(query.users, scored.items, scored.scores, scored.fallback))
    return Prediction(results, data.kind)


def cost(batch: protocol.Batch, model: Recommender) -> int:
    """(user, item) pairs the batch scores: the server runs cheap requests on its event loop."""
    total = 0
    for q in batch.queries:
        if isinstance(q, protocol.RecommendQuery):
            total += len(q.users) * (model.num_items if q.candidates is None else len(q.candidates))
        else:
            total += len(q.items)
    return total


def encode(prediction: Prediction, media: str) -> tuple[bytes, str, tuple]:
    """The response for an already negotiated media type."""
    body = protocol.encode(prediction.results, prediction.kind, media)
    headers: tuple = ()
    if prediction.kind == "json" and isinstance(prediction.results[0], protocol.TopItemsResult):
        # The workshop's bare-array answer has no room for the fallback flag: it travels as a header.
        headers = ((FALLBACK_HEADER, "true" if prediction.results[0].fallback else "false"),)
    return body, media, headers


def output_fn(prediction: Prediction, accept: str | None) -> tuple[bytes, str, tuple]:
    return encode(prediction, protocol.response_type(accept, prediction.kind))


def warmup_fn(model: Recommender) -> None:
    """A real request through every default step: the first user against up to 100 items, then top-10."""
    n = min(100, model.num_items)
    user = model.users.ids[0]
    items = model.items.ids[:n]
    for doc in ({"user": [user] * n, "item": items}, {"users": [user], "k": min(10, model.num_items)}):
        prediction = predict_fn(protocol.Batch([protocol.parse_query(doc)], "json"), model)
        body, _, _ = encode(prediction, protocol.JSON)
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
