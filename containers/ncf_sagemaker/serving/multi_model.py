"""Multi-model endpoint state that every gunicorn worker process shares.

SageMaker sends each MME call (load, list, get, unload, invoke) to whichever process accepts the
connection, so the set of loaded models cannot live in one process's memory. It lives in a small JSON file
under a state directory: mutations take an exclusive ``flock`` and replace the file atomically, reads
need no lock (``os.replace`` never shows a half-written file) and are cached until the change counter (the
lock file's size) moves, so the per-request cost is one ``stat``.

Each process keeps its own loaded copy of every registered model (a model cannot be shared across
processes without pickling on every call). A background thread in each process follows the file: it
loads models other processes registered, so their first invocation here is not slow, and drops the models
that were unloaded, which is what releases their memory.

Memory budget: loading is refused with 507 when the registered models' cost would exceed it, a model's
cost being ``COST_FACTOR`` × its artifact's size on disk × the number of worker processes (measured for
NeuMF on ML-1M: see containers/serve/README.md).
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import fcntl
import gc
import logging
import os
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ncf_core.artifact import is_artifact

from .handler import ServedModel
from .responses import BadRequest, Conflict, InsufficientStorage, NotFound, ServiceUnavailable

log = logging.getLogger("ncf_sagemaker.serving.multi_model")

REGISTRY_FILE = "registry.json"
LOCK_FILE = "registry.lock"
COST_FACTOR = 3
SYNC_INTERVAL_S = 0.5
DEFAULT_PAGE_SIZE = 100
MAX_NAME_LENGTH = 256
MAX_URL_LENGTH = 4096  # Linux's PATH_MAX: a longer path cannot name a directory


@dataclass(frozen=True)
class Entry:
    name: str
    url: str
    load_id: str
    cost_bytes: int

    def describe(self) -> dict[str, str]:
        """The shape SageMaker's List/Get Model APIs expect."""
        return {"modelName": self.name, "modelUrl": self.url}


def artifact_bytes(url: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(url).rglob("*") if p.is_file())


def release_memory() -> None:
    """Collect (the frozen models too: one was just dropped), then hand freed heap pages back to the OS
    (glibc keeps them otherwise)."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class ModelRegistry:
    """Shared registry (the file) plus this process's loaded copies."""

    def __init__(self, state_dir: str | Path, budget_bytes: int, workers: int = 1):
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.state_dir / REGISTRY_FILE
        self.lock_path = self.state_dir / LOCK_FILE
        self.budget_bytes = budget_bytes
        self.workers = max(1, workers)
        self._cache: tuple[int, dict[str, Entry]] | None = None
        self._local: dict[str, tuple[str, ServedModel]] = {}
        self._local_lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}
        self._stop = threading.Event()

    # ------------------------------------------------------------------ the shared file
    @contextlib.contextmanager
    def _locked(self) -> Iterator[Any]:
        with open(self.lock_path, "ab") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield fh
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def generation(self) -> int:
        """How many changes the registry has seen: the lock file grows by one byte per change.

        A size that only grows is a cheaper and safer change marker than the registry file's own
        inode/mtime (inodes are reused and mtimes are coarse: two quick changes could look like none).
        """
        try:
            return os.stat(self.lock_path).st_size
        except FileNotFoundError:
            return 0

    def entries(self) -> dict[str, Entry]:
        """Every registered model, as of the last change (one ``stat`` when nothing changed)."""
        generation = self.generation()
        cache = self._cache
        if cache is not None and cache[0] == generation:
            return cache[1]
        try:
            raw = orjson.loads(self.path.read_bytes())
        except FileNotFoundError:
            raw = {}
        entries = {name: Entry(name=name, **fields) for name, fields in raw.items()}
        self._cache = (generation, entries)
        return entries

    def _write(self, lock: Any, entries: dict[str, Entry]) -> None:
        """Replace the registry file, then count the change (readers that see it read the new file)."""
        data = {
            e.name: {"url": e.url, "load_id": e.load_id, "cost_bytes": e.cost_bytes} for e in entries.values()
        }
        fd, tmp = tempfile.mkstemp(dir=self.state_dir, prefix=REGISTRY_FILE, suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            fh.write(orjson.dumps(data, option=orjson.OPT_SORT_KEYS))
        os.replace(tmp, self.path)
        lock.write(b".")
        lock.flush()

    # ------------------------------------------------------------------ the MME API
    def load(self, name: Any, url: Any) -> Entry:
        """Load Model API: 200, 409 if the name is taken, 404 if no artifact at url, 507 over budget."""
        name, url = _check_name(name), _check_url(url)
        try:
            found = Path(url).is_dir() and is_artifact(url)
            cost = COST_FACTOR * artifact_bytes(url) * self.workers if found else 0
        except OSError as exc:  # a path component over 255 bytes, a directory we may not read...
            raise NotFound(f"no ncf_core model artifact at {url[:200]!r}: {exc.strerror}") from None
        if not found:
            raise NotFound(f"no ncf_core model artifact at {url!r} (expected ncf_config.json there)")
        with self._locked() as lock:
            entries = dict(self.entries())
            if name in entries:
                raise Conflict(f"model {name!r} is already loaded (from {entries[name].url})")
            used = sum(e.cost_bytes for e in entries.values())
            if used + cost > self.budget_bytes:
                raise InsufficientStorage(
                    f"loading {name!r} needs ~{cost / 2**20:.1f} MB but only "
                    f"{max(0, self.budget_bytes - used) / 2**20:.1f} MB of the "
                    f"{self.budget_bytes / 2**20:.0f} MB model budget is free; unload a model first"
                )
            entry = Entry(name, url, uuid.uuid4().hex, cost)
            served = self._load_local(entry)
            if served.state != "ready":
                raise BadRequest(served.error or f"model {name!r} failed to load")
            entries[name] = entry
            self._write(lock, entries)
        log.info("registered model %s from %s (%.1f MB of budget)", name, url, cost / 2**20)
        return entry

    def unload(self, name: str) -> None:
        """Unload Model API: 200, or 404 if no such model is loaded."""
        with self._locked() as lock:
            entries = dict(self.entries())
            if name not in entries:
                raise NotFound(f"model {name!r} is not loaded")
            del entries[name]
            self._write(lock, entries)
        self.sync()
        log.info("unloaded model %s", name)

    def describe(self, name: str) -> dict[str, str]:
        entry = self.entries().get(name)
        if entry is None:
            raise NotFound(f"model {name!r} is not loaded")
        return entry.describe()

    def page(self, token: str | None, limit: int | None) -> dict[str, Any]:
        """List Model API: models sorted by name, ``limit`` at a time, resumed after ``token``."""
        size = DEFAULT_PAGE_SIZE if limit is None else limit
        if size < 1:
            raise BadRequest(f"page size must be ≥ 1, got {size}")
        after = _decode_token(token) if token else None
        names = sorted(n for n in self.entries() if after is None or n > after)
        entries = self.entries()
        chosen = names[:size]
        body: dict[str, Any] = {"models": [entries[n].describe() for n in chosen if n in entries]}
        if len(names) > size:
            body["nextPageToken"] = base64.urlsafe_b64encode(chosen[-1].encode()).decode()
        return body

    def local(self, name: str) -> ServedModel | None:
        """This process's current copy, without loading anything (None: call ``get``, which may load)."""
        entry = self.entries().get(name)
        local = self._local.get(name)
        if entry is None or local is None or local[0] != entry.load_id or local[1].state != "ready":
            return None
        return local[1]

    def get(self, name: str) -> ServedModel:
        """This process's ready copy of a registered model (loaded here on first use)."""
        entry = self.entries().get(name)
        if entry is None:
            raise NotFound(f"model {name!r} is not loaded; load it with POST /models")
        local = self._local.get(name)
        served = local[1] if local is not None and local[0] == entry.load_id else self._load_local(entry)
        if served.state != "ready":
            raise ServiceUnavailable(served.health()[1])
        return served

    # ------------------------------------------------------------------ this process's copies
    def _load_local(self, entry: Entry) -> ServedModel:
        with self._local_lock:
            lock = self._loading.setdefault(entry.name, threading.Lock())
        with lock:  # one load per name at a time in this process
            local = self._local.get(entry.name)
            if local is not None and local[0] == entry.load_id:
                return local[1]
            served = ServedModel(entry.url, entry.name, module_name=f"ncf_user_inference_{entry.load_id}")
            served.load()
            if served.state == "ready":
                with self._local_lock:
                    self._local[entry.name] = (entry.load_id, served)
            return served

    def sync(self, preload: bool = False) -> None:
        """Drop copies of unloaded or replaced models; with ``preload``, load the ones missing here."""
        entries = self.entries()
        with self._local_lock:
            stale = [
                n for n, (lid, _) in self._local.items() if n not in entries or entries[n].load_id != lid
            ]
            for name in stale:
                del self._local[name]
        if stale:
            release_memory()
            log.info("dropped local copies of %s", ", ".join(stale))
        if preload:
            for entry in entries.values():
                if self._stop.is_set():
                    return
                local = self._local.get(entry.name)
                if local is None or local[0] != entry.load_id:
                    self._load_local(entry)

    def start_follower(self, interval: float = SYNC_INTERVAL_S) -> threading.Thread:
        """Follow the file in the background (one thread per process)."""

        def run() -> None:
            seen = -1
            while not self._stop.wait(interval):
                current = self.generation()
                if current != seen:
                    seen = current
                    try:
                        self.sync(preload=True)
                    except Exception:
                        log.exception("following the model registry failed")

        thread = threading.Thread(target=run, name="mme-follower", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not name.strip():
        raise BadRequest("'model_name' must be a non-empty string")
    if len(name) > MAX_NAME_LENGTH or "/" in name:
        raise BadRequest(f"'model_name' must be at most {MAX_NAME_LENGTH} characters without '/'")
    if not name.isprintable():
        raise BadRequest("'model_name' must not hold control characters (newlines, tabs, NUL...)")
    return name


def _check_url(url: Any) -> str:
    if not isinstance(url, str) or not url.strip():
        raise BadRequest("'url' must be a non-empty string: the model's directory")
    if len(url) > MAX_URL_LENGTH:
        raise BadRequest(
            f"'url' must be at most {MAX_URL_LENGTH} characters (a directory path), got {len(url)}"
        )
    if "\x00" in url:
        raise BadRequest("'url' must not hold a NUL character")
    return url


def _decode_token(token: str) -> str:
    try:
        name = base64.b64decode(token.encode(), altchars=b"-_", validate=True).decode()
    except (ValueError, UnicodeError):
        name = ""
    if not name:
        raise BadRequest(f"next_page_token {token!r} is not a token this server issued")
    return name
