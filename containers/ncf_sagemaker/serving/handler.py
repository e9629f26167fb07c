"""One served model: the sagemaker-inference handler contract, the loaded model, its health, and the one
invocation pipeline (``ServedModel``) between the HTTP app and ``ncf_core.inference.Recommender``.

The pipeline *is* the contract users know from SageMaker's framework containers:

    model_fn(model_dir)                  -> model
    input_fn(request_body, content_type) -> data       (request_body is bytes)
    predict_fn(data, model)              -> prediction   (the default model is a Recommender)
    output_fn(prediction, accept)        -> bytes | str | (body, content_type) | (body, content_type, headers)

Each function may take a trailing ``context`` (a ``Context``: request id, custom attributes, Accept,
cancellation), passed only to functions that accept it. Users customise serving by dropping
``code/inference.py`` into the model directory with any of these functions (and our optional
``warmup_fn(model)``, run once before /ping turns 200); what it does not define keeps the defaults below,
which are the fast path itself: ``input_fn`` negotiates (415, 406) and parses (``protocol``),
``predict_fn`` makes one ``Recommender`` call per query, ``output_fn`` encodes the domain results.

The app runs the pipeline in two calls, ``decode`` (input_fn) and ``answer`` (predict_fn, output_fn),
and asks only for costs to decide where each runs (``input_cost``, ``Decoded.cost``): a cheap request
stays on the event loop, anything else, and every step of user code, goes to the worker's thread pool.

Errors: raise ``ncf_sagemaker.serving.responses.HttpError`` subclasses for a specific status; a
ValueError or KeyError from ``input_fn`` or ``predict_fn`` is the client's fault (400); anything else is a
500 logged with the request id.

Health is explicit (loading → ready | failed) because /ping must not say 200 before a warm-up prediction
went through, and must say why when loading failed, instead of answering healthy with a dead model.
"""

from __future__ import annotations

import gc
import importlib.util
import inspect
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ncf_core.errors import NcfError
from ncf_core.inference import Recommender
from ncf_core.runtime import pick_device

from . import protocol
from .responses import JSON, BadRequest, HttpError, Reply, ServiceUnavailable

log = logging.getLogger("ncf_sagemaker.serving.handler")

USER_CODE = Path("code") / "inference.py"
HOOKS = ("model_fn", "input_fn", "predict_fn", "output_fn", "warmup_fn")


class Cancelled(Exception):
    """The request was abandoned (it timed out, or its client left): its work stops at the next slice."""


@dataclass(slots=True)
class Context:
    """Per-request facts a handler function may want (pass-through of SageMaker's headers).

    ``cancel()`` is called by the server when the request times out or its client disconnects; long work
    calls ``check()`` between slices, so a request nobody waits for stops holding a thread and a core. (A
    flag, not a ``threading.Event``: one is made per request, and the GIL orders the one write and reads.)
    """

    request_id: str
    custom_attributes: str | None = None
    model_name: str | None = None
    model_dir: Path | None = None
    accept: str | None = None
    cancelled: bool = field(default=False, compare=False, repr=False)

    def cancel(self) -> None:
        self.cancelled = True

    def check(self) -> None:
        """Raise ``Cancelled`` when the server gave up on this request."""
        if self.cancelled:
            raise Cancelled(self.request_id)


# --------------------------------------------------------------------------------------------- defaults
@dataclass(frozen=True)
class Scoring:
    """The default ``model_fn``'s device and precision (``NCF_DEVICE``, ``NCF_PRECISION``), as the app
    sets them in each worker (``use_scoring``) before any model loads."""

    device: str = "auto"
    precision: str = "auto"


_scoring = Scoring()


def use_scoring(scoring: Scoring) -> None:
    global _scoring
    _scoring = scoring


def model_fn(model_dir: str | Path) -> Recommender:
    """Load the artifact (checksums verified) with its checked scorer: on the GPU when one is visible
    (all-items top-K ranked there), else the numpy one, in the precision ``NCF_PRECISION`` asks for."""
    scoring = _scoring
    rec = Recommender.load(model_dir, pick_device(scoring.device), precision=scoring.precision)
    log.info(
        "loaded %s model from %s: %d users, %d items, %s scorer in %s on %s",
        rec.model.config.model,
        model_dir,
        len(rec.users),
        rec.num_items,
        rec.backend,
        rec.precision,
        rec.device,
    )
    return rec


def input_fn(
    request_body: bytes, request_content_type: str | None, context: Context | None = None
) -> protocol.Batch:
    """Content-Type (415) and, with a context, Accept (406) before any parsing; then the queries."""
    kind = protocol.request_kind(request_content_type)
    if context is None:
        return protocol.parse(request_body, kind)
    protocol.response_type(context.accept, kind)
    attributes = protocol.custom_attributes(context.custom_attributes)
    return protocol.parse(request_body, kind, attributes, context.check)


def predict_fn(
    data: protocol.Batch, model: Recommender, context: Context | None = None
) -> protocol.Prediction:
    """Each query is one ``Recommender`` call (cancellable between queries and user chunks). The model
    judges the values (``k``, candidates, unknown items); its ValueError names the query's record."""
    check = context.check if context else None
    results: list = []
    for query in data.queries:
        if check is not None:
            check()
        try:
            if isinstance(query, protocol.TopItemsQuery):
                results.append(model.top_items(query.users, query.items, query.k))
            elif isinstance(query, protocol.RecommendQuery):
                results.append(
                    model.recommend_many(
                        query.users, query.k, query.candidates, query.exclude_seen, checkpoint=check
                    )
                )
            else:
                results.append(model.score_pairs(query.users, query.items))
        except (ValueError, KeyError) as exc:  # UnknownIdError is a KeyError
            raise BadRequest(f"{query.where}: {_message(exc)}") from None
    return protocol.Prediction(data, results)


def output_fn(prediction: Any, accept: str | None) -> tuple[bytes, str, tuple]:
    """Our predictions in the negotiated type; anything else (a user's ``predict_fn``) as JSON."""
    if isinstance(prediction, protocol.Prediction):
        media = protocol.response_type(accept, prediction.batch.kind)
        return protocol.encode(prediction, media), media, protocol.headers(prediction)
    media = protocol.response_type(accept, "json")
    try:
        body = orjson.dumps(prediction, option=orjson.OPT_SERIALIZE_NUMPY)
    except TypeError as exc:
        raise TypeError(
            f"the default output_fn encodes JSON and cannot encode what predict_fn returned "
            f"({type(prediction).__name__}: {exc}); define output_fn in {USER_CODE}"
        ) from None
    return body, media, ()


def cost(data: protocol.Batch, model: Recommender) -> int:
    """(user, item) pairs the default ``predict_fn`` scores for ``data``."""
    total = 0
    for q in data.queries:
        if isinstance(q, protocol.RecommendQuery):
            total += len(q.users) * (model.num_items if q.candidates is None else len(q.candidates))
        else:
            total += len(q.items)
    return total


def warmup_fn(model: Recommender) -> None:
    """A real request through every default step: the first user against up to 100 items, then top-10,
    then pair scores, which must be finite probabilities (a model with NaN inside never turns healthy)."""
    n = min(100, model.num_items)
    user = model.users.ids[0]
    items = model.items.ids[:n]
    for doc in ({"user": [user] * n, "item": items}, {"users": [user], "k": min(10, model.num_items)}):
        body, _, _ = output_fn(predict_fn(input_fn(orjson.dumps(doc), JSON), model), JSON)
        if not body:
            raise RuntimeError("warm-up produced an empty response")
    scores = model.score([user] * n, items)
    bad = [s for s in scores if not 0.0 <= s <= 1.0]  # NaN fails both comparisons
    if bad:
        raise RuntimeError(f"warm-up scores are not probabilities (e.g. {bad[0]!r}): not serving this model")


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

    def call(self, name: str, context: Context, *args: Any) -> Any:
        fn = getattr(self, name)
        return fn(*args, context) if self._wants_context[name] else fn(*args)

    def input_cost(self, body: bytes) -> int | None:
        """Bytes our ``input_fn`` parses; None (unknown) for user code."""
        return None if "input_fn" in self.overridden else len(body)

    def predict_cost(self, data: Any, model: Any) -> int | None:
        """Pairs our ``predict_fn`` scores; None (unknown) for user code or data it did not parse."""
        if "predict_fn" in self.overridden or not isinstance(data, protocol.Batch):
            return None
        return cost(data, model)


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


# ------------------------------------------------------------------------------------------ one served model
LOADING, READY, FAILED = "loading", "ready", "failed"
# Python's full garbage collection scans every tracked object with the GIL held: during a request that
# builds millions of result objects it paused the event loop (and /ping) for up to a second. Serving
# creates almost no reference cycles, so the loaded model is frozen out of collection, automatic full
# collections are off, and the app runs one when it is idle (``ServingApp``, ``IDLE_GC_S``).
_GC_THRESHOLDS = (700, 10, 1_000_000_000)


def gc_after_load() -> None:
    """Freeze what is alive now (the model) and stop automatic full collections."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*_GC_THRESHOLDS)


@dataclass(frozen=True, slots=True)
class Decoded:
    """What ``input_fn`` made of a request, and how many pairs predicting it scores (None: unknown)."""

    data: Any
    cost: int | None


class ServedModel:
    """Loads on ``load()`` (call it from a background thread to keep answering /ping with 503 meanwhile)."""

    def __init__(
        self,
        model_dir: str | Path,
        name: str | None = None,
        module_name: str = "ncf_user_inference",
        load_wait_s: float = 0.0,
    ):
        self.model_dir = Path(model_dir)
        self.name = name
        self._module_name = module_name
        self.load_wait_s = load_wait_s
        self.state = LOADING
        self.error: str | None = None
        self.handler: Handler | None = None
        self.model: Any = None
        self.load_seconds: float | None = None
        self.on_ready: Callable[[ServedModel], None] | None = None  # called once the model serves
        self._ready = threading.Event()

    # ------------------------------------------------------------------ loading
    def load(self) -> bool:
        """Load, warm up, and record the outcome; never raises (the reason goes to /ping and the log)."""
        start = time.perf_counter()
        try:
            handler = load_handler(self.model_dir, self._module_name)
            model = handler.model_fn(str(self.model_dir))
            if model is None:
                where = handler.source if "model_fn" in handler.overridden else "model_fn"
                raise TypeError(f"{where}: model_fn returned None; it must return the loaded model")
            if handler.warmup_fn is not None:
                handler.warmup_fn(model)
        except Exception as exc:
            self.error = f"loading the model from {self.model_dir} failed: {type(exc).__name__}: {exc}"
            self.state = FAILED
            log.error("%s", self.error, exc_info=not isinstance(exc, NcfError))
            self._ready.set()
            return False
        self.handler, self.model = handler, model
        self.load_seconds = time.perf_counter() - start
        gc_after_load()
        self.state = READY
        log.info("model %s ready in %.2f s", self.name or self.model_dir, self.load_seconds)
        self._ready.set()
        if self.on_ready is not None:
            self.on_ready(self)
        return True

    def start_loading(self) -> threading.Thread:
        thread = threading.Thread(target=self.load, name="model-loader", daemon=True)
        thread.start()
        return thread

    def wait(self, timeout: float | None = None) -> bool:
        return self._ready.wait(timeout)

    def health(self) -> tuple[int, str]:
        """(status, message) for /ping."""
        if self.state == READY:
            return 200, "ready"
        if self.state == FAILED:
            return 503, self.error or "loading failed"
        return 503, f"loading the model from {self.model_dir}"

    def check_ready(self) -> None:
        if self.state != READY:
            raise ServiceUnavailable(self.health()[1])

    # ------------------------------------------------------------------ the pipeline
    def input_cost(self, body: bytes) -> int | None:
        """What decoding ``body`` costs (bytes parsed), None when unknown: the app schedules on it."""
        self.check_ready()
        assert self.handler is not None
        return self.handler.input_cost(body)

    def decode(self, body: bytes, content_type: str | None, context: Context) -> Decoded:
        """``input_fn``, and the cost of predicting what it returned. Raises HttpError for the client."""
        self.check_ready()
        handler = self.handler
        assert handler is not None
        data = _client_errors(handler.call, "input_fn", context, body, content_type)
        return Decoded(data, handler.predict_cost(data, self.model))

    def answer(self, decoded: Decoded, context: Context) -> Reply:
        """``predict_fn`` then ``output_fn`` for the request's Accept (``context.accept``)."""
        handler = self.handler
        assert handler is not None
        prediction = _client_errors(handler.call, "predict_fn", context, decoded.data, self.model)
        return _reply(handler.call("output_fn", context, prediction, context.accept), context.accept)


def _client_errors(fn: Any, *args: Any) -> Any:
    """Run an input/predict step, turning the errors that mean "bad request" into a 400."""
    try:
        return fn(*args)
    except HttpError:
        raise
    except (ValueError, KeyError) as exc:
        raise BadRequest(_message(exc)) from None


def _message(exc: Exception) -> str:
    """A KeyError's str() is its repr: the client gets the message itself."""
    return str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)


def _reply(out: Any, accept: str | None) -> Reply:
    """Normalise an ``output_fn`` result: body, (body, type) or (body, type, headers)."""
    headers: tuple = ()
    content_type = accept if accept and "*" not in accept else JSON
    if isinstance(out, tuple):
        if len(out) == 3:
            out, content_type, headers = out
        elif len(out) == 2:
            out, content_type = out
        else:
            raise TypeError(f"output_fn returned a tuple of {len(out)} items")
    if isinstance(out, str):
        out = out.encode()
    if not isinstance(out, (bytes, bytearray, memoryview)):
        raise TypeError(f"output_fn must return bytes or str, got {type(out).__name__}")
    return Reply(200, bytes(out), content_type, tuple(headers))
