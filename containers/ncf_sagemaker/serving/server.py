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
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication

from .. import platform
from . import settings as settings_module
from .gunicorn_config import options

# BLAS/OpenMP pools are sized when the libraries load; one thread each (see gunicorn_config).
_THREAD_POOL_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="serve", description=__doc__.splitlines()[0])
    p.add_argument(
        "--model-dir", type=Path, help=f"model directory (default: ${platform.BASE_DIR_ENV}/model)"
    )
    p.add_argument("--port", type=int, help=f"sets {platform.BIND_TO_PORT_ENV} (default 8080)")
    p.add_argument("--host", help=f"sets {settings_module.BIND_HOST_ENV} (default 0.0.0.0)")
    p.add_argument("--workers", type=int, help=f"sets {platform.MODEL_SERVER_WORKERS_ENV}")
    p.add_argument("--threads", type=int, help=f"sets {settings_module.THREADS_ENV}")
    p.add_argument("--multi-model", action="store_true", help=f"sets {platform.MULTI_MODEL_ENV}=true")
    # SageMaker passes "serve" as the argument when the image's ENTRYPOINT is this program itself.
    p.add_argument("command", nargs="?", choices=["serve"], help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _export(args: argparse.Namespace) -> None:
    if args.model_dir is not None:
        # The model dir is $SAGEMAKER_BASE_DIR/model; a bare directory gets a private base via a link.
        target = args.model_dir.resolve()
        if target.name == "model":
            os.environ[platform.BASE_DIR_ENV] = str(target.parent)
        else:
            base = Path(tempfile.mkdtemp(prefix="ncf-serve-base-"))
            (base / "model").symlink_to(target, target_is_directory=True)
            os.environ[platform.BASE_DIR_ENV] = str(base)
            atexit.register(shutil.rmtree, base, ignore_errors=True)
    for value, name in (
        (args.port, platform.BIND_TO_PORT_ENV),
        (args.host, settings_module.BIND_HOST_ENV),
        (args.workers, platform.MODEL_SERVER_WORKERS_ENV),
        (args.threads, settings_module.THREADS_ENV),
    ):
        if value is not None:
            os.environ[name] = str(value)
    if args.multi_model:
        os.environ[platform.MULTI_MODEL_ENV] = "true"


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
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if settings.multi_model and settings.mme_state_dir is None:
        state = tempfile.mkdtemp(prefix="ncf-mme-")
        os.environ[settings_module.MME_STATE_DIR_ENV] = state
        atexit.register(shutil.rmtree, state, ignore_errors=True)
        settings = settings_module.Settings.from_env()
    ServeApplication(settings).run()
    return 0


def build_app(settings: settings_module.Settings) -> Any:
    """The ASGI app for ``settings`` (imports torch: call it after the thread variables are set)."""
    from .app import ServingApp
    from .handler import ServedModel
    from .registry import ModelRegistry

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
