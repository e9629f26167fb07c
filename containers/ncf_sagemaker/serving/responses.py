"""The one response type (``Reply``) and the HTTP errors serving raises.

Every answer the app sends, success or error, on every route, is a ``Reply``: an ASGI callable, so the
app's endpoints and Starlette's exception handlers (unknown path, wrong method) send it the same way.
Every client mistake raises one of the ``HttpError`` classes with a message that says what to fix; the
app turns it into ``{"error": message, "request_id": ...}`` with the error's status and headers, so bad
input never becomes a 500 and never reaches a code path that could kill a worker.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson
from starlette.types import Receive, Scope, Send

JSON = "application/json"
# Where the app keeps a request's id in its ASGI scope: every reply to that request carries it.
REQUEST_ID = "ncf.request_id"


@dataclass(frozen=True, slots=True)
class Reply:
    """One HTTP response: status, body, content type and extra headers (names as sent, any case)."""

    status: int
    body: bytes
    content_type: str = JSON
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def json(cls, obj: object, status: int = 200, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
        return cls(status, orjson.dumps(obj), JSON, headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send it, with the request's ``X-Request-Id``; a HEAD request (load balancers' health checks)
        gets the headers only."""
        raw = [
            (b"content-type", self.content_type.encode("latin-1")),
            (b"content-length", str(len(self.body)).encode()),
        ]
        if self.headers:
            raw += [(k.lower().encode("latin-1"), str(v).encode("latin-1")) for k, v in self.headers]
        rid = scope.get(REQUEST_ID)
        if rid is not None:
            raw.append((b"x-request-id", rid.encode("latin-1")))
        await send({"type": "http.response.start", "status": self.status, "headers": raw})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else self.body})


class HttpError(Exception):
    """An error with an HTTP status; ``message`` goes to the client as ``{"error": message}``."""

    status: int = 500

    def __init__(self, message: str, *, headers: tuple[tuple[str, str], ...] = ()):
        super().__init__(message)
        self.message = message
        self.headers = headers


class BadRequest(HttpError):
    status = 400


class NotFound(HttpError):
    status = 404


class MethodNotAllowed(HttpError):
    status = 405


class NotAcceptable(HttpError):
    status = 406


class RequestTimeout(HttpError):
    status = 408


class Conflict(HttpError):
    status = 409


class PayloadTooLarge(HttpError):
    status = 413


class UnsupportedMediaType(HttpError):
    status = 415


class ServiceUnavailable(HttpError):
    status = 503


class InsufficientStorage(HttpError):
    """507: SageMaker's multi-model contract uses it for "no memory left to load this model"."""

    status = 507


class GatewayTimeout(HttpError):
    """The prediction outlived SAGEMAKER_MODEL_SERVER_TIMEOUT (its thread finishes in the background)."""

    status = 504
