"""The real serving image through docker-compose, as a person would try it: train, serve, curl.

Builds ``ncf-serve:local`` (and ``ncf-train:local``) on the CI base with the Docker harness, then drives
``docker-compose.yml`` with a private project name, loopback ports and temporary directories: the
``train`` service trains on MovieLens-100K into a model directory, ``serve`` serves it, ``mme`` loads copies
of it through the multi-model API. Everything is torn down (``down --volumes``) whatever happens.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ROOT, free_port, require_file, shared_data_dir
from tests.support import docker_harness as dh
from tests.support.serving import SEED_PAYLOAD

pytestmark = [pytest.mark.docker, pytest.mark.movielens]


SEED = SEED_PAYLOAD
ML100K_ITEMS = 1682  # ML-100K item ids are 1..1682, users 1..943


def compose_command() -> list[str]:
    """``docker compose`` (v2) or Debian's ``docker-compose`` (1.29); skip (fail in CI) without either."""
    probe = subprocess.run([dh.DOCKER, "compose", "version"], capture_output=True, text=True)
    if probe.returncode == 0:
        return [dh.DOCKER, "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    reason = "neither `docker compose` nor `docker-compose` is installed (apt-get install docker-compose)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {reason}", pytrace=False)
    pytest.skip(reason)


class Compose:
    def __init__(self, tmp: Path):
        self.cmd = compose_command()
        self.project = dh.unique_name("ncf-compose")
        self.serve_port, self.mme_port = free_port(), free_port()
        self.model_dir = tmp / "model"
        self.models_dir = tmp / "models"
        self.env = {
            **os.environ,
            "NCF_TRAIN_DATA": str((shared_data_dir() / "ml-100k").resolve()),
            "BASE_IMAGE": dh.PYTHON_IMAGE,
            "NCF_MODEL_DIR": str(self.model_dir),
            "NCF_MODELS_DIR": str(self.models_dir),
            "NCF_SERVE_PORT": str(self.serve_port),
            "NCF_MME_PORT": str(self.mme_port),
            "DOCKER_BUILDKIT": "0",
        }

    def run(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [*self.cmd, "--project-name", self.project, "--file", str(ROOT / "docker-compose.yml"), *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            output = proc.stdout[-3000:] + proc.stderr[-3000:]
            pytest.fail(f"compose {' '.join(args)} exited {proc.returncode}:\n{output}")
        return proc

    def logs(self) -> str:
        proc = self.run("logs", "--no-color", check=False)
        return proc.stdout[-6000:] + proc.stderr[-2000:]


def curl(*args: str) -> tuple[int, str]:
    """curl, as the README shows it: returns (HTTP status, body)."""
    proc = subprocess.run(
        ["curl", "-sS", "--max-time", "30", "-w", "\n%{http_code}", *args], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    body, _, status = proc.stdout.rpartition("\n")
    return int(status), body


def post_json(url: str, payload: object) -> tuple[int, str]:
    return curl("-H", "Content-Type: application/json", "--data-binary", json.dumps(payload), url)


def wait_for_ping(port: int, compose: Compose, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc = subprocess.run(
            ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{port}/ping"],
            capture_output=True,
            text=True,
        )
        if proc.stdout == "200":
            return
        time.sleep(0.5)
    pytest.fail(f"/ping on port {port} never answered 200:\n{compose.logs()}")


@pytest.fixture(scope="module")
def compose(tmp_path_factory) -> Iterator[Compose]:
    dh.require_docker()
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    require_file(shared_data_dir() / "ml-100k" / "u.data")
    dh.build_project_image("serve")
    dh.build_project_image("train")
    c = Compose(tmp_path_factory.mktemp("compose"))
    try:
        yield c
    finally:
        c.run("--profile", "train", "down", "--volumes", "--remove-orphans", check=False)


def test_compose_trains_on_ml100k_then_serves_the_seed_payload(compose: Compose):
    proc = compose.run("--profile", "train", "run", "--rm", "train", timeout=1200)
    assert (compose.model_dir / "ncf_config.json").is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]

    compose.run("up", "-d", "--no-build", "serve")
    wait_for_ping(compose.serve_port, compose)
    url = f"http://127.0.0.1:{compose.serve_port}"
    status, body = curl(f"{url}/ping")
    assert status == 200 and json.loads(body)["status"] == "healthy"

    # The workshop's payload, unchanged: ML-100K knows neither user 0 nor items above 1682.
    status, body = post_json(f"{url}/invocations", SEED)
    assert status == 400 and "unknown item id" in json.loads(body)["error"]
    # The same shape with ids this model knows: the workshop's answer, a JSON array of 10 item ids.
    known = [i for i in SEED["item"] if i <= ML100K_ITEMS]
    status, body = post_json(f"{url}/invocations", {"user": [1] * len(known), "item": known})
    top = json.loads(body)
    assert status == 200 and len(top) == 10 and set(top) <= set(known)
    status, body = post_json(f"{url}/invocations", {"users": [1, 2], "k": 5})
    recs = json.loads(body)["recommendations"]
    assert status == 200 and [len(r["items"]) for r in recs] == [5, 5]

    health = subprocess.run(
        [dh.DOCKER, "inspect", "--format", "{{.State.Health.Status}}", f"{compose.project}_serve_1"],
        capture_output=True,
        text=True,
    )
    if health.returncode != 0:  # compose v2 names containers project-serve-1
        health = subprocess.run(
            [dh.DOCKER, "inspect", "--format", "{{.State.Health.Status}}", f"{compose.project}-serve-1"],
            capture_output=True,
            text=True,
        )
    deadline = time.monotonic() + 60
    while health.stdout.strip() != "healthy" and time.monotonic() < deadline:
        time.sleep(1)
        health = subprocess.run(health.args, capture_output=True, text=True)
    assert health.stdout.strip() == "healthy", compose.logs()


def test_compose_mme_loads_invokes_lists_and_unloads(compose: Compose):
    if not (compose.model_dir / "ncf_config.json").is_file():
        pytest.skip("needs the model the train test writes")
    for name in ("a", "b"):
        shutil.copytree(compose.model_dir, compose.models_dir / name / "model")
    compose.run("up", "-d", "--no-build", "mme")
    wait_for_ping(compose.mme_port, compose)
    url = f"http://127.0.0.1:{compose.mme_port}"
    for name in ("a", "b"):
        status, body = post_json(f"{url}/models", {"model_name": name, "url": f"/opt/ml/models/{name}/model"})
        assert status == 200, body
    assert post_json(f"{url}/models", {"model_name": "a", "url": "/opt/ml/models/a/model"})[0] == 409
    assert post_json(f"{url}/models", {"model_name": "c", "url": "/opt/ml/models/nope"})[0] == 404
    status, body = curl(f"{url}/models?page_size=1")
    page = json.loads(body)
    assert status == 200 and [m["modelName"] for m in page["models"]] == ["a"] and page["nextPageToken"]
    status, body = post_json(f"{url}/models/b/invoke", {"users": [1], "k": 3})
    assert status == 200 and len(json.loads(body)["recommendations"][0]["items"]) == 3
    assert curl("-X", "DELETE", f"{url}/models/b")[0] == 200
    assert post_json(f"{url}/models/b/invoke", {"users": [1]})[0] == 404
    assert curl("-X", "DELETE", f"{url}/models/b")[0] == 404
