"""The application: SageMaker's hosting contract over one model or a multi-model registry.

A Starlette app run by gunicorn's asyncio ("asgi") worker (see ``gunicorn_config``). Starlette routes:
one routing table (``ServingApp.__init__``), one route per path with the methods it answers, and the
router's own 404 and 405 (with its ``Allow``). Each route's endpoint is an ``_Endpoint``: a coroutine per
method that returns a ``responses.Reply``, the one response type, which the endpoint sends; whatever it
raises becomes a Reply in ``error_reply``, the one place errors are answered and logged. Endpoints take
the raw ASGI scope rather than Starlette's Request: on the seed payload the per-request costs weigh as much
as the model does (containers/serve/README.md, Performance).

An invocation is the model's pipeline (``handler.ServedModel``: ``decode`` = input_fn, ``answer`` =
predict_fn + output_fn). The app asks the model only what each step costs, and runs a step

- on the event loop when it is cheap (a body up to ``INLINE_BODY_BYTES`` to parse, at most
  ``NCF_INLINE_PAIRS`` pairs to score: the seed payload) — no thread hand-off;
- in the worker's thread pool (``NCF_SERVER_THREADS``) otherwise, and always when the cost is unknown
  (user code), so a batch of thousands of users or a slow ``predict_fn`` never delays /ping or the other
  connections.

Of the management routes, loading and unloading a model (they load, or wait for the registry's lock) run
in that pool too; listing and describing models read the registry's cached state (one ``stat``) on the
loop.

Every error is answered by ``ServingApp.error_reply``: JSON ``{"error": ..., "request_id": ...}`` with
``X-Request-Id`` and the error's own headers, its status from ``responses.HttpError``; Starlette's own 404
(unknown path) and 405 (wrong method) reach it through the exception handler. Errors are logged with the
request id: ``HttpError``s at WARNING, anything else with its traceback. The access log
(``NCF_ACCESS_LOG``) is written in ``_Endpoint`` too, and leaves out successful /ping calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.datastructures import QueryParams
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from ncf_core import runtime

from .. import contract
from .handler import LOADING, READY, Context, Scoring, ServedModel, use_scoring
from .multi_model import ModelRegistry
from .responses import REQUEST_ID as _RID
from .responses import (
    BadRequest,
    GatewayTimeout,
    HttpError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    Reply,
    RequestTimeout,
)
from .settings import BODY_TIMEOUT_ENV, Settings

log = logging.getLogger("ncf_sagemaker.serving.app")
access_log = logging.getLogger("ncf_sagemaker.serving.access")

INLINE_BODY_BYTES = 64 * 1024
# A body over the limit is read (and dropped) up to this much further, so the client, which is still
# sending, gets its 413 instead of a connection reset; beyond that the connection is closed.
DRAIN_LIMIT = 64 * 2**20
INTERNAL_ERROR = "internal error; see the server log"
# How long a 413 waits for the rest of an over-limit body before closing (a client that announced a huge
# Content-Length and sends nothing must not hold the connection), and how long abandoned work may keep
# running before its thread pool is retired (``_timed``).
DRAIN_TIMEOUT_S = 1.0
ABANDON_GRACE_S = 0.5
IDLE_GC_S = 30.0
READY_MARKER = "model-ready"

_CUSTOM_ATTRIBUTES = contract.CUSTOM_ATTRIBUTES_HEADER.lower().encode()
# What this app keeps in a request's ASGI scope: when the request arrived (and its id: ``_RID``).
_START = "ncf.start"
_HEADERS = "ncf.headers"

Handle = Callable[[Scope, Receive], Awaitable[Reply]]


class _Endpoint:
    """One route's ASGI endpoint: the coroutine for the request's method returns a ``Reply``, or raises
    and ``error_reply`` answers; then the reply is sent and the access log written, in one place.

    (Starlette's ``Route`` treats an object that is not a plain function as a raw ASGI app.)
    """

    __slots__ = ("app", "methods")

    def __init__(self, app: ServingApp, methods: dict[str, Handle]):
        self.app = app
        self.methods = methods

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = self.app
        app._request_id(scope)
        method = scope["method"]
        handle = self.methods["GET" if method == "HEAD" else method]  # the router checked the method
        try:
            reply = await handle(scope, receive)
        except Exception as exc:
            # Answered here, not by a Starlette exception handler: Starlette re-raises to the server after
            # the one for Exception, and the server then closes the connection; a failing predict_fn is one
            # failed request.
            reply = app.error_reply(scope, exc)
        await reply(scope, receive, send)
        app.access(scope, reply)


class ServingApp(Starlette):
    """The ASGI app. ``model`` serves /invocations; ``registry`` (multi-model mode) serves /models."""

    def __init__(
        self, settings: Settings, model: ServedModel | None = None, registry: ModelRegistry | None = None
    ):
        if (model is None) == (registry is None):
            raise ValueError("serve either one model or a multi-model registry")
        self.settings = settings
        self.model = model
        self.registry = registry
        self.max_body = settings.max_payload_bytes
        self.inline_pairs = settings.inline_pairs
        self.log_all = settings.access_log == "all"
        self.log_errors = settings.access_log != "off"
        self.pool: ThreadPoolExecutor | None = None
        # Set by the worker when it replaces a dead one: the lifespan waits for the model (``worker``).
        self.load_before_serving = False
        self.in_flight = 0  # invocations being answered (the idle collector waits for none)
        self._gc_timer: asyncio.TimerHandle | None = None
        self._ids = itertools.count(1)
        self._prefix = f"{os.getpid():x}"

        def route(path: str, **methods: Handle) -> Route:
            return Route(path, _Endpoint(self, methods), methods=list(methods))

        super().__init__(
            # The routing table: the hot routes first (the router tries the routes in order).
            routes=[
                route("/invocations", POST=self._invoke),
                route("/ping", GET=self._ping),
                route("/models/{name}/invoke", POST=self._invoke),
                route("/execution-parameters", GET=self._execution_parameters),
                route("/models", GET=self._list_models, POST=self._load_model),
                route("/models/{name}", GET=self._describe_model, DELETE=self._unload_model),
            ],
            exception_handlers={HTTPException: self._on_router_error},
            lifespan=self._lifespan,
        )
        # Exact paths only: /ping/ is an unknown path (404), not a redirect to /ping.
        self.router.redirect_slashes = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope[_START] = time.perf_counter()
        await super().__call__(scope, receive, send)

    # ------------------------------------------------------------------ process lifecycle
    def _peer_ready(self) -> bool:
        run_dir = self.settings.run_dir
        return run_dir is not None and (run_dir / READY_MARKER).exists()

    def _mark_ready(self, model: ServedModel) -> None:
        run_dir = self.settings.run_dir
        if run_dir is not None and model.state == READY:
            with contextlib.suppress(OSError):
                (run_dir / READY_MARKER).touch()

    def start(self) -> None:
        """In each worker process (ASGI lifespan startup): threads, then the model or the registry."""
        import torch

        torch.set_num_threads(self.settings.torch_threads)
        runtime.flush_denormals()  # in each worker, before its torch threads start
        use_scoring(Scoring(self.settings.device, self.settings.precision))
        self._prefix = f"{os.getpid():x}"
        self.pool = ThreadPoolExecutor(self.settings.threads, thread_name_prefix="ncf-serve")
        if self.model is not None:
            self.model.on_ready = self._mark_ready
            self.model.start_loading()
        if self.registry is not None:
            self.registry.start_follower()

    def stop(self) -> None:
        if self.registry is not None:
            self.registry.stop()
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        try:
            self.start()
        except Exception:
            log.exception("worker start-up failed")
            raise  # Starlette reports lifespan.startup.failed; gunicorn does not boot the worker
        self._gc_timer = asyncio.get_running_loop().call_later(IDLE_GC_S, self._idle_gc)
        if self.load_before_serving and self.model is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.model.wait, None)
            log.info("replacement worker: model %s before accepting connections", self.model.state)
        try:
            yield
        finally:
            if self._gc_timer is not None:
                self._gc_timer.cancel()
            self.stop()

    def _idle_gc(self) -> None:
        """The full collection automatic GC no longer runs (``handler.gc_after_load``), when idle."""
        if self.in_flight == 0:
            gc.collect()
        delay = IDLE_GC_S if self.in_flight == 0 else 1.0
        self._gc_timer = asyncio.get_running_loop().call_later(delay, self._idle_gc)

    async def _in_pool(self, fn: Callable[..., Any], *args: Any) -> Any:
        assert self.pool is not None, "start() runs before the first request"
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def _timed(self, scope: Scope, context: Context, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn`` in the pool, within what is left of the request's SAGEMAKER_MODEL_SERVER_TIMEOUT.

        On timeout (504) or client disconnect the request's context is cancelled: our own steps stop
        at their next slice. User code cannot be stopped, so if it is still running after
        ``ABANDON_GRACE_S`` the pool is retired (its threads end when their work does) and a fresh one takes
        the next requests: a timed-out request never holds capacity the requests after it need.
        """
        assert self.pool is not None, "start() runs before the first request"
        timeout = self.settings.timeout_s
        left = timeout - (time.perf_counter() - scope[_START])
        future = self.pool.submit(fn, *args)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), max(left, 0.0))
        except TimeoutError:
            context.cancel()
            self._watch_abandoned(future)
            raise GatewayTimeout(
                f"the prediction took longer than {contract.MODEL_SERVER_TIMEOUT_ENV}={timeout} s"
            ) from None
        except asyncio.CancelledError:  # the client went away: nobody reads this answer
            context.cancel()
            self._watch_abandoned(future)
            raise

    def _watch_abandoned(self, future: Future) -> None:
        if future.done():
            return
        pool = self.pool

        def retire_if_still_running() -> None:
            if future.done() or self.pool is not pool or pool is None:
                return
            log.warning(
                "a timed-out prediction is still running after %.1f s (user code cannot be cancelled): "
                "new requests go to a fresh thread pool",
                ABANDON_GRACE_S,
            )
            self.pool = ThreadPoolExecutor(self.settings.threads, thread_name_prefix="ncf-serve")
            pool.shutdown(wait=False)

        asyncio.get_running_loop().call_later(ABANDON_GRACE_S, retire_if_still_running)

    # ------------------------------------------------------------------ request ids
    def request_id(self, given: str | None = None) -> str:
        """The client's ``X-Request-Id`` when it sent a usable one, else ``<pid>-<counter>`` (hex)."""
        if given and len(given) <= 128:
            return given
        return f"{self._prefix}-{next(self._ids):x}"

    def _request_id(self, scope: Scope) -> str:
        """This request's id, decided once and kept in the scope, where every reply and log line reads it."""
        rid = scope.get(_RID)
        if rid is None:
            given = _headers(scope).get(b"x-request-id")
            rid = scope[_RID] = self.request_id(None if given is None else given.decode("latin-1"))
        return rid

    # ------------------------------------------------------------------ /ping
    async def _ping(self, scope: Scope, receive: Receive) -> Reply:
        status, message = (200, "ready") if self.model is None else self.model.health()
        if status != 200 and self.model is not None and self.model.state == LOADING and self._peer_ready():
            # Another worker serves already and this one's invocations wait for its model: the endpoint
            # is healthy. Saying 503 here would make a load balancer's view flap while workers start.
            status, message = 200, "ready (this worker is still loading; its invocations wait for it)"
        return Reply.json({"status": "healthy" if status == 200 else "unhealthy", "message": message}, status)

    # ------------------------------------------------------------------ invocations
    async def _invoke(self, scope: Scope, receive: Receive) -> Reply:
        """POST /invocations, and POST /models/{name}/invoke (``name`` from the route)."""
        self.in_flight += 1
        try:
            return await self._answer_invocation(scope, receive)
        finally:
            self.in_flight -= 1

    async def _answer_invocation(self, scope: Scope, receive: Receive) -> Reply:
        headers = _headers(scope)
        rid = self._request_id(scope)
        name = scope["path_params"].get("name")
        body = await self._read_body(receive, headers.get(b"content-length"), headers.get(b"expect"))
        model = await self._target(name)
        if model.state == LOADING:  # another worker may have said 200 to /ping: wait, don't fail
            await self._in_pool(model.wait, model.load_wait_s)
        attributes, accept = _text(headers.get(_CUSTOM_ATTRIBUTES)), _text(headers.get(b"accept"))
        context = Context(rid, attributes, name, model.model_dir, accept)
        content_type = _text(headers.get(b"content-type"))
        size = model.input_cost(body)
        if size is not None and size <= INLINE_BODY_BYTES:
            decoded = model.decode(body, content_type, context)
        else:
            decoded = await self._timed(scope, context, model.decode, body, content_type, context)
        if decoded.cost is not None and decoded.cost <= self.inline_pairs:
            reply = model.answer(decoded, context)
        else:
            reply = await self._timed(scope, context, model.answer, decoded, context)
        return reply

    async def _target(self, name: str | None) -> ServedModel:
        if self.registry is not None:
            if name is None:
                raise NotFound("this is a multi-model endpoint: invoke POST /models/{model_name}/invoke")
            model = self.registry.local(name)
            return model if model is not None else await self._in_pool(self.registry.get, name)
        if name is not None:
            raise NotFound(f"multi-model API is off (set {contract.MULTI_MODEL_ENV}=true): use /invocations")
        assert self.model is not None
        return self.model

    async def _read_body(self, receive: Receive, length: bytes | None, expect: bytes | None = None) -> bytes:
        """The whole body, up to SAGEMAKER_MAX_PAYLOAD_IN_MB (413 above it), within NCF_BODY_TIMEOUT_S.

        An over-limit Content-Length is answered at once: without reading when the client waits for
        "100 Continue" (it has sent nothing), else after dropping what arrives within DRAIN_TIMEOUT_S.
        """
        limit = self.max_body
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                raise BadRequest(f"Content-Length {length!r} is not a number") from None
            if declared > limit:
                if expect is None or expect.lower() != b"100-continue":
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(_drain(receive), DRAIN_TIMEOUT_S)
                raise PayloadTooLarge(self._too_large(declared), headers=(("Connection", "close"),))
        try:
            return await asyncio.wait_for(self._receive_body(receive, limit), self.settings.body_timeout_s)
        except TimeoutError:
            raise RequestTimeout(
                f"the body did not arrive within {self.settings.body_timeout_s} s ({BODY_TIMEOUT_ENV})",
                headers=(("Connection", "close"),),
            ) from None

    async def _receive_body(self, receive: Receive, limit: int) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise BadRequest("the client disconnected before sending the whole body")
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    if message.get("more_body", False):
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(_drain(receive), DRAIN_TIMEOUT_S)
                    raise PayloadTooLarge(self._too_large(None), headers=(("Connection", "close"),))
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _too_large(self, length: int | None) -> str:
        size = "the body" if length is None else f"the body ({length} bytes)"
        return (
            f"{size} is over the {self.max_body // 2**20} MB limit "
            f"({contract.MAX_PAYLOAD_IN_MB_ENV}); split the request"
        )

    # ------------------------------------------------------------------ batch transform and MME management
    async def _execution_parameters(self, scope: Scope, receive: Receive) -> Reply:
        s = self.settings
        doc = {
            "MaxConcurrentTransforms": s.max_concurrent_transforms,
            "BatchStrategy": "MULTI_RECORD",
            "MaxPayloadInMB": s.max_payload_bytes // 2**20,
        }
        return Reply.json(doc)

    async def _load_model(self, scope: Scope, receive: Receive) -> Reply:
        body = await self._read_body(receive, _headers(scope).get(b"content-length"))
        registry = self._registry()
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"body is not valid JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise BadRequest('body must be {"model_name": ..., "url": ...}')
        entry = await self._in_pool(registry.load, doc.get("model_name"), doc.get("url"))
        return Reply.json({"status": f"model {entry.name} loaded", **entry.describe()})

    async def _list_models(self, scope: Scope, receive: Receive) -> Reply:
        registry = self._registry()
        params = QueryParams(scope["query_string"])
        raw = params.get("page_size", params.get("limit"))
        try:
            limit = None if raw is None else int(raw)
        except ValueError:
            raise BadRequest(f"page size {raw!r} is not an integer") from None
        return Reply.json(registry.page(params.get("next_page_token"), limit))

    async def _describe_model(self, scope: Scope, receive: Receive) -> Reply:
        return Reply.json(self._registry().describe(scope["path_params"]["name"]))

    async def _unload_model(self, scope: Scope, receive: Receive) -> Reply:
        name = scope["path_params"]["name"]
        await self._in_pool(self._registry().unload, name)
        return Reply.json({"status": f"model {name} unloaded"})

    def _registry(self) -> ModelRegistry:
        if self.registry is None:
            raise NotFound(f"the multi-model API needs {contract.MULTI_MODEL_ENV}=true")
        return self.registry

    # ------------------------------------------------------------------ errors and logs
    def error_reply(self, scope: Scope, exc: Exception) -> Reply:
        """The one error answer (and its log line): an ``HttpError`` as it is, anything else a 500."""
        rid = self._request_id(scope)
        method, path = scope["method"], scope["path"]
        if isinstance(exc, HttpError):
            log.warning("request %s: %s %s -> %d: %s", rid, method, path, exc.status, exc.message)
        else:
            log.error("request %s: %s %s failed", rid, method, path, exc_info=exc)
            exc = HttpError(INTERNAL_ERROR)
        return Reply.json({"error": exc.message, "request_id": rid}, exc.status, exc.headers)

    async def _on_router_error(self, request: Request, exc: Exception) -> Reply:
        """The router's own errors: no route for the path (404), or not for this method (405)."""
        assert isinstance(exc, HTTPException)
        scope = request.scope
        method, path = scope["method"], scope["path"]
        error: HttpError
        if exc.status_code == 404:
            error = NotFound(f"there is no route {path} on this server")
        elif exc.status_code == 405:
            allow = ", ".join(sorted((exc.headers or {}).get("Allow", "").split(", ")))
            error = MethodNotAllowed(f"{path} answers {allow}, not {method}", headers=(("Allow", allow),))
        else:
            error = HttpError(exc.detail)
            error.status = exc.status_code
        await _drain(request.receive)  # no endpoint read the body: drop it, so the client reads the answer
        reply = self.error_reply(scope, error)
        self.access(scope, reply)
        return reply

    def access(self, scope: Scope, reply: Reply) -> None:
        """The access log: errors (and an unhealthy /ping) unless off; successes when "all", but never a
        healthy /ping (load balancers ask every few seconds)."""
        status = reply.status
        if status == 200:
            if not self.log_all or scope["path"] == "/ping":
                return
        elif not self.log_errors:
            return
        client = scope.get("client") or ("-", 0)
        query = scope.get("query_string") or b""
        target = scope["path"] + ("?" + query.decode("latin-1") if query else "")
        access_log.info(
            '%s "%s %s" %d %d %.1fms rid=%s',
            client[0],
            scope["method"],
            target,
            status,
            len(reply.body),
            (time.perf_counter() - scope.get(_START, time.perf_counter())) * 1000,
            scope.get(_RID, "-"),
        )


async def _drain(receive: Receive) -> None:
    """Read and drop the rest of a body (up to DRAIN_LIMIT) so the client gets the error response."""
    left = DRAIN_LIMIT
    while left > 0:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        left -= len(message.get("body", b""))
        if not message.get("more_body", False):
            return


def _headers(scope: Scope) -> dict[bytes, bytes]:
    """The request's headers by (lower-case) name: one C-level pass over the ASGI list, kept in the scope
    (the request id and the invocation both read them)."""
    headers = scope.get(_HEADERS)
    if headers is None:
        headers = scope[_HEADERS] = dict(scope["headers"])
    return headers


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")
