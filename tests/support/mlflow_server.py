"""A real ``mlflow server`` on an ephemeral loopback port: a sqlite backend and a temporary artifact store
behind it (artifacts go through the server, as with a remote one), for the experiment-tracking tests.

Without mlflow importable (the tracking and dev extras), `require_mlflow()` skips the test, except in CI
(``CI=true``), where it fails.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support.net import free_port

START_TIMEOUT_S = 90  # imports and the first migration of a fresh database; ~10 s on an idle laptop


def require_mlflow() -> None:
    try:
        import mlflow  # noqa: F401
        import sqlalchemy  # noqa: F401  (the server's backend store)
    except ImportError as exc:
        reason = f"mlflow server dependencies missing ({exc}); install the tracking and dev extras"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {reason}", pytrace=False)
        pytest.skip(reason)


class MlflowServer:
    """``python -m mlflow server`` in this interpreter, stopped by PID (its whole process group)."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log = root / "server.log"
        command = [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.sqlite'}",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=root
            )
        try:
            self._wait()
        except BaseException:
            self.stop()
            raise

    def _wait(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited {self.proc.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"mlflow server not healthy after {START_TIMEOUT_S} s:\n{self.tail()}")

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def stop(self) -> None:
        """SIGTERM to the server's process group (uvicorn and its worker), SIGKILL if it lingers."""
        pgid = self.proc.pid  # its own session: the group id is its PID
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=3)  # a throwaway: no need to wait on its job runner
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            self.proc.wait(timeout=15)
