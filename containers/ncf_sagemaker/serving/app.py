"""The application: SageMaker's hosting contract over one model or a multi-model registry.

It is an ASGI app run by gunicorn's asyncio worker (see ``gunicorn_config`` for why). The hot routes
(/ping, /invocations, /models/{name}/invoke) are plain coroutines: Flask's request/response machinery costs
more per request than the model does on the seed payload. Where an invocation runs is decided per request:

- on the event loop when it is small (the default pipeline, a body up to ``INLINE_BODY_BYTES`` and at most
  ``NCF_INLINE_PAIRS`` scored pairs: the seed payload, one user's top-K over all items) — no thread
  hand-off;
- in the worker's thread pool (``NCF_SERVER_THREADS``) otherwise, and always for user code, so a batch of
  thousands of users or a slow ``predict_fn`` never delays /ping or the other connections.

Everything else (/execution-parameters, the MME management API, JSON 404/405s) is a Flask app, called
through a small WSGI bridge in the thread pool (loading a model takes a while; it must not block the loop).

Errors are JSON ``{"error": ..., "request_id": ...}`` with ``X-Request-Id``; client errors are logged at
WARNING and server errors with their traceback, with that id. The access log (``NCF_ACCESS_LOG``) is
written here too, and leaves out successful /ping calls.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
from flask import Flask, request
from werkzeug.exceptions import HTTPException

from .. import platform
from .errors import (
    BadRequest,
    GatewayTimeout,
    HttpError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
)
from .handler import Context
from .model import LOADING, ServedModel
from .registry import ModelRegistry
from .settings import Settings

log = logging.getLogger("ncf_sagemaker.serving.app")
access_log = logging.getLogger("ncf_sagemaker.serving.access")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

INLINE_BODY_BYTES = 64 * 1024
# A body over the limit is read (and dropped) up to this much further, so the client, which is still
# sending, gets its 413 instead of a connection reset; beyond that the connection is closed.
DRAIN_LIMIT = 64 * 2**20

_CUSTOM_ATTRIBUTES = platform.CUSTOM_ATTRIBUTES_HEADER.lower().encode()
_JSON = b"application/json"
_MODELS_PREFIX = "/models/"
_INVOKE_SUFFIX = "/invoke"


class ServingApp:
    """ASGI callable. ``model`` serves /invocations; ``registry`` (multi-model mode) serves /models."""

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
        self._ids = itertools.count(1)
        self._prefix = f"{os.getpid():x}"
        self.flask = _management_app(self)

    # ------------------------------------------------------------------ process lifecycle
    def start(self) -> None:
        """In each worker process (ASGI lifespan startup): threads, then the model or the registry."""
        import torch

        torch.set_num_threads(self.settings.torch_threads)
        self._prefix = f"{os.getpid():x}"
        self.pool = ThreadPoolExecutor(self.settings.threads, thread_name_prefix="ncf-serve")
        if self.model is not None:
            self.model.start_loading()
        if self.registry is not None:
            self.registry.start_follower()

    def stop(self) -> None:
        if self.registry is not None:
            self.registry.stop()
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)

    async def _in_pool(self, fn: Callable[..., Any], *args: Any) -> Any:
        assert self.pool is not None, "start() runs before the first request"
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def _timed(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``_in_pool`` bounded by SAGEMAKER_MODEL_SERVER_TIMEOUT (504 after it)."""
        timeout = self.settings.timeout_s
        try:
            return await asyncio.wait_for(self._in_pool(fn, *args), timeout)
        except TimeoutError:
            raise GatewayTimeout(
                f"the prediction took longer than {platform.MODEL_SERVER_TIMEOUT_ENV}={timeout} s"
            ) from None

    # ------------------------------------------------------------------ ASGI entry
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            path = scope["path"]
            if path == "/invocations":
                await self._invoke(scope, receive, send, None)
            elif path == "/ping":
                await self._ping(scope, send)
            elif path.startswith(_MODELS_PREFIX) and path.endswith(_INVOKE_SUFFIX):
                name = path[len(_MODELS_PREFIX) : -len(_INVOKE_SUFFIX)]
                if name and "/" not in name:
                    await self._invoke(scope, receive, send, name)
                else:
                    await self._management(scope, receive, send)
            else:
                await self._management(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    self.start()
                except Exception as exc:
                    log.exception("worker start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def request_id(self, given: str | None = None) -> str:
        if given and len(given) <= 128:
            return given
        return f"{self._prefix}-{next(self._ids):x}"

    # ------------------------------------------------------------------ /ping
    async def _ping(self, scope: Scope, send: Send) -> None:
        start = time.perf_counter()
        rid = self.request_id()
        if scope["method"] not in ("GET", "HEAD"):
            await self._error(scope, send, MethodNotAllowed("/ping answers GET"), rid, start)
            return
        status, message = (200, "ready") if self.model is None else self.model.health()
        body = orjson.dumps({"status": "healthy" if status == 200 else "unhealthy", "message": message})
        await _respond(send, status, body, _JSON, rid)
        if status != 200:
            self._access(scope, status, len(body), rid, start)

    # ------------------------------------------------------------------ invocations
    async def _invoke(self, scope: Scope, receive: Receive, send: Send, name: str | None) -> None:
        start = time.perf_counter()
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
        rid = self.request_id(given_id)
        try:
            if scope["method"] != "POST":
                raise MethodNotAllowed("invocations take POST")
            body = await self._read_body(receive, length)
            model = await self._target(name)
            if model.state == LOADING:  # another worker may have said 200 to /ping: wait, don't fail
                await self._in_pool(model.wait, model.load_wait_s)
            context = Context(rid, attributes, name, model.model_dir)
            handler = model.handler
            if handler is not None and handler.is_default_pipeline and len(body) <= INLINE_BODY_BYTES:
                prepared = model.prepare(body, content_type, accept, context)
            else:
                prepared = await self._timed(model.prepare, body, content_type, accept, context)
            if prepared.cost is not None and prepared.cost <= self.inline_pairs:
                reply = model.run(prepared, context)
            else:
                reply = await self._timed(model.run, prepared, context)
        except HttpError as exc:
            await self._error(scope, send, exc, rid, start)
            return
        except Exception:
            log.exception("request %s: %s %s failed", rid, scope["method"], scope["path"])
            await self._error(scope, send, HttpError("internal error; see the server log"), rid, start)
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
            self._access(scope, 200, len(reply.body), rid, start)

    async def _target(self, name: str | None) -> ServedModel:
        if self.registry is not None:
            if name is None:
                raise NotFound("this is a multi-model endpoint: invoke POST /models/{model_name}/invoke")
            model = self.registry.local(name)
            return model if model is not None else await self._in_pool(self.registry.get, name)
        if name is not None:
            raise NotFound(f"multi-model API is off (set {platform.MULTI_MODEL_ENV}=true): use /invocations")
        assert self.model is not None
        return self.model

    async def _read_body(self, receive: Receive, length: bytes | None) -> bytes:
        limit = self.max_body
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                raise BadRequest(f"Content-Length {length!r} is not a number") from None
            if declared > limit:
                await _drain(receive)
                raise PayloadTooLarge(self._too_large(declared))
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
                        await _drain(receive)
                    raise PayloadTooLarge(self._too_large(None))
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _too_large(self, length: int | None) -> str:
        size = "the body" if length is None else f"the body ({length} bytes)"
        return (
            f"{size} is over the {self.max_body // 2**20} MB limit "
            f"({platform.MAX_PAYLOAD_IN_MB_ENV}); split the request"
        )

    # ------------------------------------------------------------------ management (Flask)
    async def _management(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        rid = self.request_id()
        try:
            body = await self._read_body(receive, _header(scope, b"content-length"))
        except HttpError as exc:
            await self._error(scope, send, exc, rid, start)
            return
        status, headers, payload = await self._in_pool(_call_wsgi, self.flask, _environ(scope, body))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})
        if self.log_all or status >= 400:
            self._access(scope, status, len(payload), _header_text(headers, b"x-request-id") or rid, start)

    # ------------------------------------------------------------------ errors and logs
    async def _error(self, scope: Scope, send: Send, exc: HttpError, rid: str, start: float) -> None:
        if exc.status < 500:
            method, path = scope["method"], scope["path"]
            log.warning("request %s: %s %s -> %d: %s", rid, method, path, exc.status, exc.message)
        body = orjson.dumps({"error": exc.message, "request_id": rid})
        extra = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in exc.headers]
        await _respond(send, exc.status, body, _JSON, rid, extra)
        self._access(scope, exc.status, len(body), rid, start)

    def _access(self, scope: Scope, status: int, size: int, rid: str, start: float) -> None:
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
            (time.perf_counter() - start) * 1000,
            rid,
        )


async def _respond(
    send: Send, status: int, body: bytes, content_type: bytes, rid: str, extra: list | None = None
) -> None:
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        (b"x-request-id", rid.encode("latin-1")),
        *(extra or ()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


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


def _header_text(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return None


# --------------------------------------------------------------------------------------------- WSGI bridge
def _environ(scope: Scope, body: bytes) -> dict[str, Any]:
    """A PEP 3333 environ for an ASGI HTTP scope whose body has been read."""
    server = scope.get("server") or ("localhost", 80)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": "",
        "PATH_INFO": scope["path"],
        "QUERY_STRING": (scope.get("query_string") or b"").decode("latin-1"),
        "SERVER_NAME": str(server[0]),
        "SERVER_PORT": str(server[1]),
        "SERVER_PROTOCOL": f"HTTP/{scope.get('http_version', '1.1')}",
        "REMOTE_ADDR": (scope.get("client") or ("",))[0],
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    for key, value in scope["headers"]:
        name = key.decode("latin-1").upper().replace("-", "_")
        text = value.decode("latin-1")
        if name == "CONTENT_TYPE":
            environ["CONTENT_TYPE"] = text
        elif name != "CONTENT_LENGTH":
            http_name = "HTTP_" + name
            environ[http_name] = f"{environ[http_name]},{text}" if http_name in environ else text
    return environ


def _call_wsgi(app: Flask, environ: dict[str, Any]) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    captured: list[Any] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        captured[:] = [status, headers]

    chunks = app(environ, start_response)
    try:
        payload = b"".join(chunks)
    finally:
        if hasattr(chunks, "close"):
            chunks.close()
    status, headers = captured
    return (
        int(status.split(" ", 1)[0]),
        [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
        payload,
    )


# --------------------------------------------------------------------------------------------- Flask part
def _management_app(app: ServingApp) -> Flask:
    """/execution-parameters and the multi-model management API, with JSON errors for everything."""
    flask = Flask("ncf_sagemaker.serving")

    def reply(obj: Any, status: int = 200):
        return flask.response_class(orjson.dumps(obj), status=status, mimetype="application/json")

    def registry() -> ModelRegistry:
        if app.registry is None:
            raise NotFound(f"the multi-model API needs {platform.MULTI_MODEL_ENV}=true")
        return app.registry

    @flask.get("/execution-parameters")
    def execution_parameters():
        s = app.settings
        return reply(
            {
                "MaxConcurrentTransforms": s.max_concurrent_transforms,
                "BatchStrategy": "MULTI_RECORD",
                "MaxPayloadInMB": s.max_payload_bytes // 2**20,
            }
        )

    @flask.post("/models")
    def load_model():
        reg = registry()
        try:
            doc = orjson.loads(request.get_data(cache=False))
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"body is not valid JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise BadRequest('body must be {"model_name": ..., "url": ...}')
        entry = reg.load(doc.get("model_name"), doc.get("url"))
        return reply({"status": f"model {entry.name} loaded", **entry.describe()})

    @flask.get("/models")
    def list_models():
        token = request.args.get("next_page_token")
        raw = request.args.get("page_size", request.args.get("limit"))
        try:
            limit = None if raw is None else int(raw)
        except ValueError:
            raise BadRequest(f"page size {raw!r} is not an integer") from None
        return reply(registry().page(token, limit))

    @flask.get("/models/<name>")
    def get_model(name: str):
        return reply(registry().describe(name))

    @flask.delete("/models/<name>")
    def unload_model(name: str):
        registry().unload(name)
        return reply({"status": f"model {name} unloaded"})

    @flask.errorhandler(HttpError)
    def http_error(exc: HttpError):
        rid = app.request_id(request.headers.get("X-Request-Id"))
        if exc.status < 500:
            method, path = request.method, request.path
            log.warning("request %s: %s %s -> %d: %s", rid, method, path, exc.status, exc.message)
        return _flask_error(flask, exc.status, exc.message, rid)

    @flask.errorhandler(HTTPException)
    def werkzeug_error(exc: HTTPException):
        rid = app.request_id(request.headers.get("X-Request-Id"))
        return _flask_error(flask, exc.code or 500, exc.description or exc.name, rid)

    @flask.errorhandler(Exception)
    def unexpected(exc: Exception):
        rid = app.request_id(request.headers.get("X-Request-Id"))
        log.exception("request %s: %s %s failed", rid, request.method, request.path)
        return _flask_error(flask, 500, "internal error; see the server log", rid)

    return flask


def _flask_error(flask: Flask, status: int, message: str, rid: str):
    response = flask.response_class(
        orjson.dumps({"error": message, "request_id": rid}), status=status, mimetype="application/json"
    )
    response.headers["X-Request-Id"] = rid
    return response
