"""Shared helpers for the serving tests: a trained artifact, a real ``serve`` process, an HTTP client.

The artifact is a small NeuMF trained on ``tests.support.synthetic``'s planted groups, so tests can check that
answers come from the model (a user's recommendations are items of the user's own group), not just that
they have the right shape. It is trained once per test session, whichever module asks first.

Servers are real gunicorn processes (``python -m ncf_sagemaker.serving.server``) on a free loopback port,
started with their own environment and stopped with SIGTERM. The helpers' own tests are at the bottom.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ncf_core import data as ncf_data
from ncf_core.jobs import train_to_artifact
from ncf_core.training import TrainConfig
from tests.support.net import free_port
from tests.support.paths import ROOT
from tests.support.synthetic import SMALL_DATA, write_ratings_csv

GROUPS = 6  # tests.support.synthetic's default: user u and item i share a group when u % 6 == i % 6
# The seed workshop's request (user 0 against 100 ML-1M items): one copy, shared with scripts/invoke.sh.
SEED_PAYLOAD = json.loads((ROOT / "scripts" / "payloads" / "seed.json").read_text())
SEED_ITEMS = SEED_PAYLOAD["item"]


# --------------------------------------------------------------------------------------------- artifact
def trained_artifact(base: Path) -> Path:
    """Train (once per session: the directory is reused if complete) a small NeuMF on planted groups."""
    model_dir = base / "serving-model"
    if (model_dir / "ncf_config.json").is_file():
        return model_dir
    tmp = base / "serving-model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    csv = write_ratings_csv(base / "serving-ratings.csv")
    data = ncf_data.load(csv, seed=0)
    config = TrainConfig(
        epochs=6, batch_size=512, factor=8, num_layers=2, lr=0.01, seed=0, device="cpu", **SMALL_DATA
    )
    train_to_artifact(data, config, tmp)
    tmp.rename(model_dir)
    return model_dir


def group_of_user(raw_user: int) -> int:
    """tests.support.synthetic writes user u as u + 1 and item i as i + 10."""
    return (raw_user - 1) % GROUPS


def group_of_item(raw_item: int) -> int:
    return (raw_item - 10) % GROUPS


def copy_model(src: Path, dst: Path, inference_py: str | None = None) -> Path:
    """A copy of an artifact, optionally with ``code/inference.py`` overriding handler steps."""
    shutil.copytree(src, dst)
    if inference_py is not None:
        (dst / "code").mkdir()
        (dst / "code" / "inference.py").write_text(inference_py)
    return dst


# --------------------------------------------------------------------------------------------- server
@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def worker(self) -> str:
        """The answering worker's pid (hex), from the request id the server generates."""
        return self.headers["x-request-id"].split("-")[0]


class Server:
    """A running ``serve`` process; ``request`` opens a new connection each time (any worker may answer)."""

    def __init__(self, proc: subprocess.Popen, port: int, log_path: Path):
        self.proc = proc
        self.port = port
        self.log_path = log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def request(
        self,
        method: str,
        path: str,
        body: bytes | str | Any | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 30,
    ) -> Response:
        if body is not None and not isinstance(body, (bytes, str)):
            body = json.dumps(body)
            headers = {"Content-Type": "application/json", **(headers or {})}
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=dict(headers or {}))
            resp = conn.getresponse()
            return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
        finally:
            conn.close()

    def invoke(self, payload: Any, **kw: Any) -> Response:
        return self.request("POST", "/invocations", payload, **kw)

    def wait_ready(self, timeout: float = 60) -> Response:
        """Poll /ping until 200; fail with the server log if it exits or never gets there."""
        deadline = time.monotonic() + timeout
        last: Response | str = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                last = self.request("GET", "/ping", timeout=5)
                if last.status == 200:
                    return last
            except OSError as exc:
                last = repr(exc)
            time.sleep(0.05)
        pytest.fail(f"/ping not 200 within {timeout} s (last: {last}):\n{self.log()}")

    def wait_workers_ready(self, workers: int, timeout: float = 60) -> None:
        """Wait until ``workers`` workers have logged their model ready: /ping says 200 as soon as one
        has, and a worker still loading answers it with another message (``ServingApp._ping``)."""
        deadline = time.monotonic() + timeout
        while self.log().count(" ready in ") < workers:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{workers} workers not ready within {timeout} s:\n{self.log()}")
            time.sleep(0.05)

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def assert_json_error(resp: Response, status: int, fragment: str) -> None:
    """The app's one error shape: JSON ``{"error", "request_id"}``, the id also in ``X-Request-Id``."""
    assert resp.status == status, (resp.status, resp.body)
    assert resp.headers["content-type"] == "application/json"
    doc = resp.json()
    assert fragment in doc["error"], doc
    assert doc["request_id"] == resp.headers["x-request-id"]


def server_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAGEMAKER_", "NCF_"))}
    env["NCF_BIND_HOST"] = "127.0.0.1"
    env.update(extra or {})
    return env


@contextlib.contextmanager
def running_server(
    tmp: Path,
    model_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
    wait: bool = True,
) -> Iterator[Server]:
    """``serve`` on a free loopback port (multi-model mode when ``model_dir`` is None)."""
    port = free_port()
    args = [sys.executable, "-m", "ncf_sagemaker.serving.server", "--port", str(port)]
    args += ["--model-dir", str(model_dir)] if model_dir is not None else ["--multi-model"]
    tmp.mkdir(parents=True, exist_ok=True)
    log_path = tmp / f"serve-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(args, env=server_env(env), stdout=log, stderr=subprocess.STDOUT, cwd=tmp)
    server = Server(proc, port, log_path)
    try:
        if wait:
            server.wait_ready()
        yield server
    finally:
        server.stop()


# ---------------------------------------------------------------------------------- the helpers' tests
