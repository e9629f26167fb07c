"""One served model: its handler, the loaded model object, its health, and the invoke pipeline.

Health is explicit (loading → ready | failed) because /ping must not say 200 before a warm-up prediction
went through, and must say why when loading failed, instead of answering healthy with a dead model.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ncf_core.errors import NcfError, UnknownIdError

from . import protocol
from .errors import BadRequest, HttpError, ServiceUnavailable
from .handler import Context, Handler, encode, load_handler
from .handler import cost as default_cost
from .handler import predict_fn as default_predict

log = logging.getLogger("ncf_sagemaker.serving.model")

LOADING, READY, FAILED = "loading", "ready", "failed"


@dataclass(frozen=True, slots=True)
class Reply:
    body: bytes
    content_type: str
    headers: tuple = ()


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
        self._ready = threading.Event()

    # ------------------------------------------------------------------ loading
    def load(self) -> bool:
        """Load, warm up, and record the outcome; never raises (the reason goes to /ping and the log)."""
        start = time.perf_counter()
        try:
            handler = load_handler(self.model_dir, self._module_name)
            model = handler.model_fn(str(self.model_dir))
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
        self.state = READY
        log.info("model %s ready in %.2f s", self.name or self.model_dir, self.load_seconds)
        self._ready.set()
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

    # ------------------------------------------------------------------ invoking
    def prepare(
        self, body: bytes, content_type: str | None, accept: str | None, context: Context
    ) -> Prepared:
        """Step 1 of an invocation: negotiate and validate (default pipeline) or just hold the request.

        Cheap for the default pipeline, so the server can run it on its event loop and use the returned
        ``cost`` to decide where step 2 runs. Raises HttpError (415, 406, 400, 503) for the client.
        """
        self.check_ready()
        handler = self.handler
        assert handler is not None
        if not handler.is_default_pipeline:
            return Prepared(None, body, content_type, accept, None)
        kind = protocol.request_kind(content_type)  # 415 and 406 before any parsing or model work
        media = protocol.response_type(accept, kind)  # the one negotiation: ``run`` encodes for it
        batch = protocol.parse(body, kind, protocol.custom_attributes(context.custom_attributes))
        return Prepared(batch, body, content_type, media, default_cost(batch, self.model))

    def run(self, prepared: Prepared, context: Context) -> Reply:
        """Step 2: predict and serialise (and, for user code, parse first)."""
        handler = self.handler
        assert handler is not None
        if prepared.batch is not None:  # the default pipeline: ``accept`` is the negotiated type
            prediction = _client_errors(default_predict, prepared.batch, self.model)
            return Reply(*encode(prediction, prepared.accept))
        data = _client_errors(handler.call, "input_fn", context, prepared.body, prepared.content_type)
        prediction = _client_errors(handler.call, "predict_fn", context, data, self.model)
        return _reply(handler.call("output_fn", context, prediction, prepared.accept), prepared.accept)

    def invoke(self, body: bytes, content_type: str | None, accept: str | None, context: Context) -> Reply:
        """The whole pipeline in the calling thread (waits for a model that is still loading)."""
        if self.state == LOADING:
            self.wait(self.load_wait_s)
        return self.run(self.prepare(body, content_type, accept, context), context)

    def check_ready(self) -> None:
        if self.state != READY:
            raise ServiceUnavailable(self.health()[1])


@dataclass(frozen=True, slots=True)
class Prepared:
    """A validated request (``batch``: default pipeline) or a raw one for user code (``batch`` None).

    ``cost``: how many (user, item) pairs the request scores, None when unknown (user code).
    """

    batch: protocol.Batch | None
    body: bytes
    content_type: str | None
    accept: str | None
    cost: int | None


def _client_errors(fn: Any, *args: Any) -> Any:
    """Run an input/predict step, turning the errors that mean "bad request" into a 400."""
    try:
        return fn(*args)
    except HttpError:
        raise
    except UnknownIdError as exc:
        raise BadRequest(str(exc)) from None
    except (ValueError, KeyError) as exc:
        raise BadRequest(str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)) from None


def _reply(out: Any, accept: str | None) -> Reply:
    """Normalise an ``output_fn`` result: body, (body, type) or (body, type, headers)."""
    headers: tuple = ()
    content_type = accept if accept and "*" not in accept else protocol.JSON
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
    return Reply(bytes(out), content_type, tuple(headers))
