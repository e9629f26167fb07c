"""HTTP errors raised anywhere in serving and turned into a JSON body by the app.

Every client mistake maps to one of these with a message that says what to fix, so bad input never
becomes a 500 and never reaches a code path that could kill a worker.
"""

from __future__ import annotations


class HttpError(Exception):
    """An error with an HTTP status; ``message`` goes to the client as ``{"error": message}``."""

    status: int = 500
    reason: str = "Internal Server Error"

    def __init__(self, message: str, *, headers: tuple[tuple[str, str], ...] = ()):
        super().__init__(message)
        self.message = message
        self.headers = headers


class BadRequest(HttpError):
    status, reason = 400, "Bad Request"


class NotFound(HttpError):
    status, reason = 404, "Not Found"


class MethodNotAllowed(HttpError):
    status, reason = 405, "Method Not Allowed"


class NotAcceptable(HttpError):
    status, reason = 406, "Not Acceptable"


class RequestTimeout(HttpError):
    status, reason = 408, "Request Timeout"


class Conflict(HttpError):
    status, reason = 409, "Conflict"


class PayloadTooLarge(HttpError):
    status, reason = 413, "Payload Too Large"


class UnsupportedMediaType(HttpError):
    status, reason = 415, "Unsupported Media Type"


class ServiceUnavailable(HttpError):
    status, reason = 503, "Service Unavailable"


class InsufficientStorage(HttpError):
    """507: SageMaker's multi-model contract uses it for "no memory left to load this model"."""

    status, reason = 507, "Insufficient Storage"


class GatewayTimeout(HttpError):
    """The prediction outlived SAGEMAKER_MODEL_SERVER_TIMEOUT (its thread finishes in the background)."""

    status, reason = 504, "Gateway Timeout"
