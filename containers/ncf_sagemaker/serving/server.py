"""``serve``: the program SageMaker runs as ``docker run IMAGE serve``, and that you can run anywhere.

    serve                                  # SageMaker: model in /opt/ml/model, port $SAGEMAKER_BIND_TO_PORT
    serve --model-dir /tmp/ml1m-neumf --port 8080
    SAGEMAKER_MULTI_MODEL=true serve       # multi-model endpoint: models arrive through POST /models

Flags only set the matching environment variables, so the gunicorn workers (and logs) see one truth.
Thread-pool variables are fixed here, before numpy or torch is imported anywhere in the process.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import resource
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication

from .. import contract
from . import settings as settings_module
from .gunicorn_config import options

# BLAS/OpenMP pools are sized when the libraries load; one thread each (see gunicorn_config).
_THREAD_POOL_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="serve", description=__doc__.splitlines()[0])
    p.add_argument(
        "--model-dir", type=Path, help=f"model directory (default: ${contract.BASE_DIR_ENV}/model)"
    )
    p.add_argument("--port", type=int, help=f"sets {contract.BIND_TO_PORT_ENV} (default 8080)")
    p.add_argument("--host", help=f"sets {settings_module.BIND_HOST_ENV} (default 0.0.0.0)")
    p.add_argument("--workers", type=int, help=f"sets {contract.MODEL_SERVER_WORKERS_ENV}")
    p.add_argument("--threads", type=int, help=f"sets {settings_module.THREADS_ENV}")
    p.add_argument("--multi-model", action="store_true", help=f"sets {contract.MULTI_MODEL_ENV}=true")
    # SageMaker passes "serve" as the argument when the image's ENTRYPOINT is this program itself.
    p.add_argument("command", nargs="?", choices=["serve"], help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _export(args: argparse.Namespace) -> None:
    if args.model_dir is not None:
        # The model dir is $SAGEMAKER_BASE_DIR/model; a bare directory gets a private base via a link.
        target = args.model_dir.resolve()
        if target.name == "model":
            os.environ[contract.BASE_DIR_ENV] = str(target.parent)
        else:
            base = Path(tempfile.mkdtemp(prefix="ncf-serve-base-"))
            (base / "model").symlink_to(target, target_is_directory=True)
            os.environ[contract.BASE_DIR_ENV] = str(base)
            atexit.register(shutil.rmtree, base, ignore_errors=True)
    for value, name in (
        (args.port, contract.BIND_TO_PORT_ENV),
        (args.host, settings_module.BIND_HOST_ENV),
        (args.workers, contract.MODEL_SERVER_WORKERS_ENV),
        (args.threads, settings_module.THREADS_ENV),
    ):
        if value is not None:
            os.environ[name] = str(value)
    if args.multi_model:
        os.environ[contract.MULTI_MODEL_ENV] = "true"


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    _export(args)
    try:
        settings = settings_module.Settings.from_env()
    except settings_module.SettingsError as exc:
        print(f"serve: {exc}", file=sys.stderr)
        return 2
    for name in _THREAD_POOL_ENV:
        os.environ.setdefault(name, str(settings.torch_threads))
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter("%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=settings.log_level.upper(), handlers=[handler])
    raise_file_limit(settings.max_connections)
    if settings.multi_model and settings.mme_state_dir is None:
        state = tempfile.mkdtemp(prefix="ncf-mme-")
        os.environ[settings_module.MME_STATE_DIR_ENV] = state
        atexit.register(shutil.rmtree, state, ignore_errors=True)
    if settings.run_dir is None:
        run_dir = tempfile.mkdtemp(prefix="ncf-serve-run-")
        os.environ[settings_module.RUN_DIR_ENV] = run_dir
        atexit.register(shutil.rmtree, run_dir, ignore_errors=True)
    settings = settings_module.Settings.from_env()
    ServeApplication(settings).run()
    return 0


class OneLineFormatter(logging.Formatter):
    """Control characters in a message are escaped: a path or model name holding ``\n`` (sent as
    ``%0a``) cannot forge log lines. Tracebacks, added after the message, keep their lines."""

    _ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)} | {0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"}

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = record.message.translate(self._ESCAPES)
        return super().formatMessage(record)


# Descriptors a worker needs besides its connections: the listening socket, logs, the model's files.
_SPARE_FDS = 256


def raise_file_limit(connections: int) -> int:
    """Raise this process's (and so its workers') soft open-file limit for ``connections`` per worker,
    as far as the hard limit allows; returns the new soft limit. Below the need, says so in the log."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = connections + _SPARE_FDS
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            logging.getLogger("ncf_sagemaker.serving").warning("cannot raise the open-file limit: %s", exc)
    if soft < want:
        logging.getLogger("ncf_sagemaker.serving").warning(
            "open-file limit %d is below the %d that %s=%d connections need: lower it or raise the limit "
            "(docker run --ulimit nofile=...)",
            soft,
            want,
            settings_module.MAX_CONNECTIONS_ENV,
            connections,
        )
    return soft


def build_app(settings: settings_module.Settings) -> Any:
    """The ASGI app for ``settings`` (imports torch: call it after the thread variables are set)."""
    from .app import ServingApp
    from .handler import ServedModel
    from .multi_model import ModelRegistry

    if settings.multi_model:
        assert settings.mme_state_dir is not None
        registry = ModelRegistry(
            settings.mme_state_dir, settings.mme_memory_budget_mb * 2**20, workers=settings.workers
        )
        return ServingApp(settings, registry=registry)
    return ServingApp(settings, model=ServedModel(settings.model_dir, load_wait_s=settings.timeout_s))


class ServeApplication(BaseApplication):
    """gunicorn configured from ``Settings`` (no command line or config file of gunicorn's own)."""

    def __init__(self, settings: settings_module.Settings):
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        for key, value in options(self.settings).items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        return build_app(self.settings)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
