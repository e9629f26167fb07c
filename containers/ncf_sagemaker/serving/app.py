"""The application: SageMaker's hosting contract over one model or a multi-model registry.

A Starlette app with one routing table (``ServingApp.__init__``), run by gunicorn's asyncio ("asgi")
worker (see ``gunicorn_config``). The hot routes (/ping, /invocations, /models/{name}/invoke) are raw ASGI
endpoints in that table: they read the scope's headers and send their reply themselves, without
Starlette's Request and Response objects, because on the seed payload the per-request costs weigh as
much as the model does (containers/serve/README.md, Performance). The other routes are ordinary Starlette
endpoints. Where an invocation runs is decided per request:

- on the event loop when it is small (the default pipeline, a body up to ``INLINE_BODY_BYTES`` and at most
  ``NCF_INLINE_PAIRS`` scored pairs: the seed payload) — no thread hand-off;
- in the worker's thread pool (``NCF_SERVER_THREADS``) otherwise, and always for user code, so a batch of
  thousands of users or a slow ``predict_fn`` never delays /ping or the other connections.

Of the management routes, loading and unloading a model (they load, or wait for the registry's lock) run
in that pool too; listing and describing models read the registry's cached state (one ``stat``) on the
loop.

Every error response is built by ``ServingApp.error_response``: JSON ``{"error": ..., "request_id": ...}``
with ``X-Request-Id`` and the error's own headers, its status from ``errors.HttpError``; Starlette's own
404 (unknown path) and 405 (wrong method) reach it through the exception handlers. Errors are logged with
the request id: ``HttpError``s at WARNING, anything else with its traceback. The access log
(``NCF_ACCESS_LOG``) is written here too, and leaves out successful /ping calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import Receive, Scope, Send

from ncf_core import runtime

from .. import contract
from .handler import LOADING, READY, Context, ServedModel
from .http_errors import BadRequest, GatewayTimeout, HttpError, NotFound, PayloadTooLarge, RequestTimeout
from .multi_model import ModelRegistry
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
_JSON = b"application/json"
# What this app keeps in a request's ASGI scope: when the request arrived, and its id.
_START = "ncf.start"
_RID = "ncf.request_id"


class _Asgi:
    """A raw ASGI endpoint for a ``Route`` (Starlette wraps a plain function as request → response)."""

    __slots__ = ("endpoint",)

    def __init__(self, endpoint: Callable[[Scope, Receive, Send], Any]):
        self.endpoint = endpoint

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Any:
        return self.endpoint(scope, receive, send)


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
        super().__init__(
            # The routing table: the hot routes first (the router tries the routes in order).
            routes=[
                Route("/invocations", _Asgi(self._invoke), methods=["POST"]),
                Route("/ping", _Asgi(self._ping), methods=["GET"]),
                Route("/models/{name}/invoke", _Asgi(self._invoke), methods=["POST"]),
                Route("/execution-parameters", self._execution_parameters, methods=["GET"]),
                Route("/models", self._load_model, methods=["POST"]),
                Route("/models", self._list_models, methods=["GET"]),
                Route("/models/{name}", self._describe_model, methods=["GET"]),
                Route("/models/{name}", self._unload_model, methods=["DELETE"]),
            ],
            exception_handlers={
                HTTPException: self._on_starlette_error,
                HttpError: self._on_http_error,
                Exception: self._on_unexpected_error,
            },
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

        On timeout (504) or client disconnect the request's ``context.cancel`` is set: our own steps stop
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
            context.cancel.set()
            self._watch_abandoned(future)
            raise GatewayTimeout(
                f"the prediction took longer than {contract.MODEL_SERVER_TIMEOUT_ENV}={timeout} s"
            ) from None
        except asyncio.CancelledError:  # the client went away: nobody reads this answer
            context.cancel.set()
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
        """This request's id, decided once and kept in the scope (the error handlers read it there)."""
        rid = scope.get(_RID)
        if rid is None:
            given = _header(scope, b"x-request-id")
            rid = scope[_RID] = self.request_id(None if given is None else given.decode("latin-1"))
        return rid

    # ------------------------------------------------------------------ /ping
    async def _ping(self, scope: Scope, receive: Receive, send: Send) -> None:
        rid = self._request_id(scope)
        status, message = (200, "ready") if self.model is None else self.model.health()
        if status != 200 and self.model is not None and self.model.state == LOADING and self._peer_ready():
            # Another worker serves already and this one's invocations wait for its model: the endpoint
            # is healthy. Saying 503 here would make a load balancer's view flap while workers start.
            status, message = 200, "ready (this worker is still loading; its invocations wait for it)"
        body = orjson.dumps({"status": "healthy" if status == 200 else "unhealthy", "message": message})
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", _JSON),
                    (b"content-length", str(len(body)).encode()),
                    (b"x-request-id", rid.encode("latin-1")),
                ],
            }
        )
        # HEAD (load balancers' health checks): the headers only; a body would be dropped with a warning.
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})
        if status != 200:
            self._access(scope, status, len(body))

    # ------------------------------------------------------------------ invocations
    async def _invoke(self, scope: Scope, receive: Receive, send: Send) -> None:
        """POST /invocations, and POST /models/{name}/invoke (``name`` from the route)."""
        self.in_flight += 1
        try:
            await self._answer_invocation(scope, receive, send)
        finally:
            self.in_flight -= 1

    async def _answer_invocation(self, scope: Scope, receive: Receive, send: Send) -> None:
        content_type = accept = attributes = given_id = length = None
        for key, value in scope["headers"]:
            if key == b"content-type":
                content_type = value.decode("latin-1")
            elif key == b"accept":
                accept = value.decode("latin-1")
            elif key == b"content-length":
                length = value
            elif key == _CUSTOM_ATTRIBUTES:
                attributes = value.decode("latin-1")
            elif key == b"x-request-id":
                given_id = value.decode("latin-1")
        rid = scope[_RID] = self.request_id(given_id)
        name = scope["path_params"].get("name")
        try:
            body = await self._read_body(receive, length, _header(scope, b"expect"))
            model = await self._target(name)
            if model.state == LOADING:  # another worker may have said 200 to /ping: wait, don't fail
                await self._in_pool(model.wait, model.load_wait_s)
            context = Context(rid, attributes, name, model.model_dir)
            handler = model.handler
            if handler is not None and handler.is_default_pipeline and len(body) <= INLINE_BODY_BYTES:
                prepared = model.prepare(body, content_type, accept, context)
            else:
                prepared = await self._timed(
                    scope, context, model.prepare, body, content_type, accept, context
                )
            if prepared.cost is not None and prepared.cost <= self.inline_pairs:
                reply = model.run(prepared, context)
            else:
                reply = await self._timed(scope, context, model.run, prepared, context)
        except Exception as exc:
            # Answered here, not by the handler for Exception: Starlette re-raises to the server after that
            # one, and the server then closes the connection; a failing predict_fn is one failed request.
            await self.error_response(scope, exc)(scope, receive, send)
            return
        headers = [
            (b"content-type", reply.content_type.encode("latin-1")),
            (b"content-length", str(len(reply.body)).encode()),
            (b"x-request-id", rid.encode("latin-1")),
        ]
        headers += [(k.lower().encode("latin-1"), str(v).encode("latin-1")) for k, v in reply.headers]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": reply.body})
        if self.log_all:
            self._access(scope, 200, len(reply.body))

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
    async def _execution_parameters(self, request: Request) -> Response:
        s = self.settings
        return self._json(
            request,
            {
                "MaxConcurrentTransforms": s.max_concurrent_transforms,
                "BatchStrategy": "MULTI_RECORD",
                "MaxPayloadInMB": s.max_payload_bytes // 2**20,
            },
        )

    async def _load_model(self, request: Request) -> Response:
        body = await self._read_body(request.receive, _header(request.scope, b"content-length"))
        registry = self._registry()
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"body is not valid JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise BadRequest('body must be {"model_name": ..., "url": ...}')
        entry = await self._in_pool(registry.load, doc.get("model_name"), doc.get("url"))
        return self._json(request, {"status": f"model {entry.name} loaded", **entry.describe()})

    async def _list_models(self, request: Request) -> Response:
        registry = self._registry()
        params = request.query_params
        raw = params.get("page_size", params.get("limit"))
        try:
            limit = None if raw is None else int(raw)
        except ValueError:
            raise BadRequest(f"page size {raw!r} is not an integer") from None
        return self._json(request, registry.page(params.get("next_page_token"), limit))

    async def _describe_model(self, request: Request) -> Response:
        return self._json(request, self._registry().describe(request.path_params["name"]))

    async def _unload_model(self, request: Request) -> Response:
        name = request.path_params["name"]
        await self._in_pool(self._registry().unload, name)
        return self._json(request, {"status": f"model {name} unloaded"})

    def _registry(self) -> ModelRegistry:
        if self.registry is None:
            raise NotFound(f"the multi-model API needs {contract.MULTI_MODEL_ENV}=true")
        return self.registry

    def _json(self, request: Request, obj: Any) -> Response:
        """A management route's 200: JSON with the request id (and its access-log line)."""
        scope = request.scope
        body = orjson.dumps(obj)
        if self.log_all:
            self._access(scope, 200, len(body))
        return Response(body, 200, {"X-Request-Id": self._request_id(scope)}, "application/json")

    # ------------------------------------------------------------------ errors and logs
    def error_response(self, scope: Scope, exc: Exception) -> Response:
        """The one error response (and its log lines): an ``HttpError`` as it is, anything else a 500."""
        rid = self._request_id(scope)
        method, path = scope["method"], scope["path"]
        if isinstance(exc, HttpError):
            log.warning("request %s: %s %s -> %d: %s", rid, method, path, exc.status, exc.message)
        else:
            log.error("request %s: %s %s failed", rid, method, path, exc_info=exc)
            exc = HttpError(INTERNAL_ERROR)
        body = orjson.dumps({"error": exc.message, "request_id": rid})
        self._access(scope, exc.status, len(body))
        return Response(body, exc.status, {**dict(exc.headers), "X-Request-Id": rid}, "application/json")

    async def _on_http_error(self, request: Request, exc: Exception) -> Response:
        return self.error_response(request.scope, exc)

    async def _on_starlette_error(self, request: Request, exc: Exception) -> Response:
        """The router's own errors: no route for the path (404), or not for this method (405)."""
        assert isinstance(exc, HTTPException)
        scope = request.scope
        method, path = scope["method"], scope["path"]
        headers = dict(exc.headers or {})
        if exc.status_code == 404:
            message = f"there is no route {path} on this server"
        elif exc.status_code == 405:
            allowed = self._allowed_methods(scope)
            headers["Allow"] = ", ".join(allowed)
            message = f"{path} answers {', '.join(allowed)}, not {method}"
        else:
            message = exc.detail
        await _drain(request.receive)  # no endpoint read the body: drop it, so the client reads the answer
        error = HttpError(message, headers=tuple(headers.items()))
        error.status = exc.status_code
        return self.error_response(scope, error)

    async def _on_unexpected_error(self, request: Request, exc: Exception) -> Response:
        """Anything else that escaped an endpoint (Starlette then re-raises it, and the server closes)."""
        return self.error_response(request.scope, exc)

    def _allowed_methods(self, scope: Scope) -> list[str]:
        """Every method some route answers at this path (the routes of one path may be several)."""
        allowed: set[str] = set()
        for route in self.routes:
            if isinstance(route, Route) and route.methods and route.matches(scope)[0] is not Match.NONE:
                allowed |= route.methods
        return sorted(allowed)

    def _access(self, scope: Scope, status: int, size: int) -> None:
        if not self.log_errors:
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
            size,
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


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None
