"""gunicorn settings: the process and concurrency model of the server.

- ``workers`` processes (``SAGEMAKER_MODEL_SERVER_WORKERS``, default one per core up to 4, each with its
  own model copy, so a crashed worker is replaced while the others answer) of gunicorn's asyncio ("asgi")
  worker, with our connection guards (``worker``), running the Starlette app in ``app``. One event loop
  per process and no thread hand-off on the hot path, where a threaded worker (gthread) passes every
  request from its poller thread to a pool and back, a GIL transfer each way (containers/serve/README.md,
  Design and Performance, has the measurements that chose this worker).
- Each process has one model copy and a thread pool (``NCF_SERVER_THREADS``, default 4) for the requests
  that are too big to run on the event loop (see ``app``), so /ping stays fast under any load.
- One PyTorch / BLAS thread per process (``NCF_TORCH_THREADS``): requests already run in parallel across
  processes and the pool, and intra-op threads on top of them oversubscribe the cores.
- The master imports nothing heavy (no ``preload_app``): each worker imports torch and loads its model
  itself, after the fork (CUDA cannot be initialised before one), in a background thread started by the
  ASGI lifespan, so /ping answers 503 while it loads. Preloading torch in the master would share its pages
  copy-on-write, but every RSS sum (what memory limits and dashboards read) would count them once per
  process.
- SIGTERM (``docker stop``, SageMaker): each worker stops accepting, lets in-flight requests finish (up to
  ``GRACEFUL_TIMEOUT_S``, inside the 30 s SageMaker and docker wait before SIGKILL), then exits;
  kept-alive idle connections close within ``KEEPALIVE_S``.
"""

from __future__ import annotations

import logging
from typing import Any

from .settings import Settings

KEEPALIVE_S = 5
GRACEFUL_TIMEOUT_S = 25
WORKER_CLASS = "ncf_sagemaker.serving.worker.GuardedWorker"


def when_ready(server: Any) -> None:
    logging.getLogger("ncf_sagemaker.serving").info(
        "listening on %s", ", ".join(str(s) for s in server.LISTENERS)
    )


def options(settings: Settings) -> dict[str, Any]:
    """gunicorn's settings for ``settings`` (the access log is the app's own, see ``app``)."""
    return {
        "bind": [f"{settings.host}:{settings.port}"],
        "workers": settings.workers,
        "worker_class": WORKER_CLASS,
        "asgi_lifespan": "on",
        "preload_app": False,
        "timeout": settings.timeout_s,
        "graceful_timeout": min(settings.timeout_s, GRACEFUL_TIMEOUT_S),
        "keepalive": KEEPALIVE_S,
        "loglevel": settings.log_level,
        "errorlog": "-",
        "accesslog": None,
        "when_ready": when_ready,
        "proc_name": "ncf-serve",
        "control_socket_disable": True,
    }
