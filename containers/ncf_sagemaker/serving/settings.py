"""Every serving knob, read once from the environment into a frozen dataclass.

SageMaker's own names (``SAGEMAKER_*``) live in ``ncf_sagemaker.contract``; the ``NCF_*`` names here are
ours. ``serve`` resolves them once in the gunicorn master; the workers inherit that object through the fork,
so every process of a server sees exactly the same values.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ncf_core.config import check_device, check_scoring_precision
from ncf_core.errors import ConfigError

from .. import contract

THREADS_ENV = "NCF_SERVER_THREADS"
TORCH_THREADS_ENV = "NCF_TORCH_THREADS"
ACCESS_LOG_ENV = "NCF_ACCESS_LOG"
LOG_LEVEL_ENV = "NCF_LOG_LEVEL"
MME_BUDGET_ENV = "NCF_MME_MEMORY_BUDGET_MB"
MME_STATE_DIR_ENV = "NCF_MME_STATE_DIR"
MAX_CONCURRENT_TRANSFORMS_ENV = "NCF_MAX_CONCURRENT_TRANSFORMS"
BIND_HOST_ENV = "NCF_BIND_HOST"
INLINE_PAIRS_ENV = "NCF_INLINE_PAIRS"
HEADER_TIMEOUT_ENV = "NCF_HEADER_TIMEOUT_S"
BODY_TIMEOUT_ENV = "NCF_BODY_TIMEOUT_S"
MAX_CONNECTIONS_ENV = "NCF_MAX_CONNECTIONS"
# The default model_fn's scorer: its device (``auto``: CUDA when a GPU is visible, resolved in each worker,
# never in the master, which must not touch CUDA before it forks) and its precision
# (``ncf_core.inference.pick_precision``: ``auto`` is fp32).
DEVICE_ENV = "NCF_DEVICE"
PRECISION_ENV = "NCF_PRECISION"
# A directory the master and its workers share (``serve`` makes one): a worker whose model is ready leaves
# a marker there, so a worker still loading can tell that the endpoint is already healthy.
RUN_DIR_ENV = "NCF_RUN_DIR"
# Above this many scored pairs (~0.3 ms of numpy work on ML-1M NeuMF-32) a request goes to the thread
# pool: numpy releases the GIL in its matmuls, so a one-worker server then scores on every core, and
# /ping never waits behind it. The seed payload (100 pairs) stays on the event loop.
DEFAULT_INLINE_PAIRS = 1_000

DEFAULT_TIMEOUT_S = 60
DEFAULT_THREADS = 4
# A connection must send its first request's headers within this, and a body must arrive within the
# other: a client that opens connections and sends nothing (or trickles) cannot hold them for ever.
DEFAULT_HEADER_TIMEOUT_S = 10
DEFAULT_BODY_TIMEOUT_S = 30
# Open connections per worker before new ones get a fast 503; the file-descriptor limit is raised above
# it at start (``server``). Well above the 1,000 idle connections a health check must survive.
DEFAULT_MAX_CONNECTIONS = 4096
# Workers by default: one per core up to this many. Two or more keep the endpoint healthy while a
# crashed worker is replaced; each costs one model copy (containers/serve/README.md, Memory).
MAX_DEFAULT_WORKERS = 4
ACCESS_LOG_MODES = ("all", "errors", "off")


class SettingsError(ValueError):
    """An environment variable has a value serving cannot use; the message names it."""


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 1) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise SettingsError(f"{name}={value} must be ≥ {minimum}")
    return value


def _bool(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise SettingsError(f"{name}={raw!r} is not a boolean (true/false)")


def _checked(env: Mapping[str, str], name: str, check: Callable[[str], str]) -> str:
    """``check`` (ncf_core's one check of the value) on ``name``, default ``auto``; its refusal names it."""
    raw = env.get(name, "").strip().lower() or "auto"
    try:
        return check(raw)
    except ConfigError as exc:
        raise SettingsError(f"{name}={raw!r}: {exc}") from None


def available_cpus() -> int:
    """CPUs this process may run on (affinity, which docker --cpuset-cpus sets), else the count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_workers(cpus: int | None = None) -> int:
    return max(1, min(available_cpus() if cpus is None else cpus, MAX_DEFAULT_WORKERS))


def total_memory_mb() -> int:
    """Physical memory, capped by a cgroup v2 limit when the container has one."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit.isdigit():
            total = min(total, int(limit) // 2**20)
    except OSError:
        pass
    return int(total)


@dataclass(frozen=True)
class Settings:
    host: str
    port: int
    workers: int
    threads: int
    torch_threads: int
    timeout_s: int
    max_payload_bytes: int
    multi_model: bool
    model_dir: Path
    mme_memory_budget_mb: int
    mme_state_dir: Path | None
    access_log: str
    log_level: str
    max_concurrent_transforms: int
    inline_pairs: int
    header_timeout_s: int = DEFAULT_HEADER_TIMEOUT_S
    body_timeout_s: int = DEFAULT_BODY_TIMEOUT_S
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    run_dir: Path | None = None
    device: str = "auto"
    precision: str = "auto"

    @classmethod
    def from_env(cls) -> Settings:
        """Read ``os.environ`` (paths through ``platform``, so ``SAGEMAKER_BASE_DIR`` applies)."""
        env = os.environ
        workers = _int(env, contract.MODEL_SERVER_WORKERS_ENV, default_workers())
        access_log = env.get(ACCESS_LOG_ENV, "all").strip().lower() or "all"
        if access_log not in ACCESS_LOG_MODES:
            raise SettingsError(
                f"{ACCESS_LOG_ENV}={access_log!r} must be one of {', '.join(ACCESS_LOG_MODES)}"
            )
        threads = _int(env, THREADS_ENV, DEFAULT_THREADS)
        state_dir = env.get(MME_STATE_DIR_ENV, "").strip()
        return cls(
            host=env.get(BIND_HOST_ENV, "0.0.0.0").strip() or "0.0.0.0",
            port=_int(env, contract.BIND_TO_PORT_ENV, contract.DEFAULT_PORT),
            workers=workers,
            threads=threads,
            torch_threads=_int(env, TORCH_THREADS_ENV, 1),
            timeout_s=_int(env, contract.MODEL_SERVER_TIMEOUT_ENV, DEFAULT_TIMEOUT_S),
            max_payload_bytes=_int(env, contract.MAX_PAYLOAD_IN_MB_ENV, contract.DEFAULT_MAX_PAYLOAD_IN_MB)
            * 2**20,
            multi_model=_bool(env, contract.MULTI_MODEL_ENV),
            model_dir=contract.model_dir(),
            mme_memory_budget_mb=_int(env, MME_BUDGET_ENV, total_memory_mb() // 2),
            mme_state_dir=Path(state_dir) if state_dir else None,
            access_log=access_log,
            log_level=(env.get(LOG_LEVEL_ENV, "info").strip() or "info").lower(),
            max_concurrent_transforms=_int(env, MAX_CONCURRENT_TRANSFORMS_ENV, workers * threads),
            inline_pairs=_int(env, INLINE_PAIRS_ENV, DEFAULT_INLINE_PAIRS, minimum=0),
            header_timeout_s=_int(env, HEADER_TIMEOUT_ENV, DEFAULT_HEADER_TIMEOUT_S),
            body_timeout_s=_int(env, BODY_TIMEOUT_ENV, DEFAULT_BODY_TIMEOUT_S),
            max_connections=_int(env, MAX_CONNECTIONS_ENV, DEFAULT_MAX_CONNECTIONS),
            run_dir=Path(env[RUN_DIR_ENV]) if env.get(RUN_DIR_ENV, "").strip() else None,
            device=_checked(env, DEVICE_ENV, check_device),
            precision=_checked(env, PRECISION_ENV, check_scoring_precision),
        )
