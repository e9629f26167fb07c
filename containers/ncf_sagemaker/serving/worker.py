"""gunicorn's asyncio ("asgi") worker with the connection guards it lacks.

gunicorn's ASGI worker times out idle keep-alive connections, but not a new connection that never sends
its first request (it would be held for ever), and it has no cap on open connections (``worker_connections``
is not used by it), so a few thousand silent connections exhaust a worker's file descriptors and /ping
stops answering. Each connection here gets:

- a **header timeout** (``NCF_HEADER_TIMEOUT_S``): its first request's headers must arrive within it, or the
  connection is closed (later requests are covered by gunicorn's keep-alive timeout);
- a **connection cap** (``NCF_MAX_CONNECTIONS`` per worker): past it, a new connection is answered at once
  with a 503 and closed, instead of waiting in the kernel's queue until the client gives up.

The body timeout is the app's (``ServingApp._read_body``). gunicorn builds each connection's protocol
from the ``ASGIProtocol`` name in its worker module; ``GuardedWorker`` points that name at
``GuardedProtocol`` in its own process before serving.

A worker that replaces a dead one loads its model *before* it accepts connections
(``ServingApp.load_before_serving``): the endpoint is already healthy through the other workers, and a
/ping that reached the newcomer would otherwise answer 503 "loading" and make it look unhealthy. The first
workers of a server accept at once, so /ping says 503 with the reason while they load.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from gunicorn.asgi.protocol import ASGIProtocol
from gunicorn.workers import gasgi

from .settings import MAX_CONNECTIONS_ENV, Settings

# How long a refused connection may keep sending before it is closed (its 503 is already out).
REFUSED_LINGER_S = 1.0
_OVERLOAD_BODY = orjson.dumps(
    {"error": f"this worker has its maximum of open connections ({MAX_CONNECTIONS_ENV}); retry shortly"}
)
OVERLOADED = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"content-type: application/json\r\n"
    b"content-length: " + str(len(_OVERLOAD_BODY)).encode() + b"\r\n"
    b"retry-after: 1\r\n"
    b"connection: close\r\n\r\n" + _OVERLOAD_BODY
)


class GuardedProtocol(ASGIProtocol):
    """One connection: gunicorn's HTTP/1.1 handling plus the header timeout and the connection cap."""

    _refused = False
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:
        settings: Settings = self.app.settings
        worker = self.worker
        if worker.nr_conns >= settings.max_connections:
            worker.nr_conns += 1  # connection_lost counts every connection out
            self.transport = transport
            self._refused = True
            worker.note_refused(settings.max_connections)
            transport.write(OVERLOADED)
            if transport.can_write_eof():
                transport.write_eof()  # the client reads the 503 and end of stream, not a reset
            self._header_timer = worker.loop.call_later(REFUSED_LINGER_S, transport.close)
            return
        super().connection_made(transport)
        self._header_timer = worker.loop.call_later(settings.header_timeout_s, self._header_timeout)

    def data_received(self, data: bytes) -> None:
        if not self._refused:
            super().data_received(data)

    def _on_headers_complete(self) -> Any:
        self._cancel_header_timer()
        return super()._on_headers_complete()

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self._current_request is None and not self._closed:
            self._keepalive_timeout()  # gunicorn's own "close an idle connection"

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)


class GuardedWorker(gasgi.ASGIWorker):
    """The asgi worker whose connections are ``GuardedProtocol``s."""

    _last_refusal_log = 0.0
    # Workers this master has created (the arbiter builds each worker object before forking it).
    _created = 0

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        GuardedWorker._created += 1
        self.replacement = GuardedWorker._created > self.cfg.workers

    def load_wsgi(self) -> None:
        super().load_wsgi()
        if self.replacement and hasattr(self.asgi, "load_before_serving"):
            self.asgi.load_before_serving = True

    def init_process(self) -> None:
        gasgi.ASGIProtocol = GuardedProtocol  # this process's worker module builds connections from it
        super().init_process()

    def note_refused(self, limit: int) -> None:
        """Log refusals at most once a second (a flood must not become a flood of log lines)."""
        now = time.monotonic()
        if now - self._last_refusal_log >= 1.0:
            self._last_refusal_log = now
            self.log.warning("refusing connections: %d open, the limit (%s)", limit, MAX_CONNECTIONS_ENV)
