"""scripts/smoke_test.sh against a real local `serve` (tests/support/serving.py), a broken one (its model's
code fails to import: every request 503) and a closed port; p99 over the limit; refusals. The SageMaker
path (InvokeEndpoint) is tested against moto in tests/aws/test_smoke_test_endpoint.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests.support.net import free_port
from tests.support.paths import ROOT
from tests.support.serving import copy_model, running_server, trained_artifact

WORKERS = {"SAGEMAKER_MODEL_SERVER_WORKERS": "1"}


def smoke(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SAGEMAKER_"))}
    env["PYTHON"] = sys.executable
    return subprocess.run(
        [str(ROOT / "scripts" / "smoke_test.sh"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def payloads(tmp_path_factory):
    """The seed payload's shape (one user, 100 candidates) and a top-K request, in the test model's ids."""
    d = tmp_path_factory.mktemp("payloads")
    seed, top_k = d / "seed.json", d / "users.json"
    seed.write_text(json.dumps({"user": [1] * 20, "item": list(range(10, 30))}))
    top_k.write_text(json.dumps({"users": [1, 2], "k": 10}))
    return [str(seed), str(top_k)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return trained_artifact(tmp_path_factory.getbasetemp())


def test_a_healthy_server_passes_and_a_slow_p99_fails(tmp_path, model_dir, payloads):
    with running_server(tmp_path, model_dir, WORKERS) as srv:
        url = f"http://127.0.0.1:{srv.port}"
        args = ["--url", url, "--payload", payloads[0], "--payload", payloads[1], "--requests", "20"]
        proc = smoke(*args, "--max-p99-ms", "5000")
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.splitlines()
        assert [line.split(":")[0] for line in lines] == ["seed.json", "users.json"]
        assert all("21 requests, 0 errors" in line for line in lines), lines
        assert "passed" in proc.stderr

        proc = smoke(*args, "--max-p99-ms", "0.001")
        assert proc.returncode == 1, proc.stderr
        assert "p99" in proc.stderr and "is over --max-p99-ms 0.001" in proc.stderr


def answered_503(srv, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if srv.request("GET", "/ping", timeout=5).status == 503:
                return
        except OSError:
            pass
        time.sleep(0.05)
    pytest.fail(f"the broken server never answered 503:\n{srv.log()}")


def test_a_broken_server_and_a_closed_port_fail(tmp_path, model_dir, payloads):
    broken = copy_model(model_dir, tmp_path / "broken", "import no_such_module_here\n")
    with running_server(tmp_path, broken, WORKERS, wait=False) as srv:
        answered_503(srv)  # listening, its model failed to load
        proc = smoke("--url", f"http://127.0.0.1:{srv.port}", "--payload", payloads[1], "--requests", "3")
    assert proc.returncode == 1, proc.stderr
    assert "users.json: 4 of 4 requests failed" in proc.stderr
    assert "users.json: 503" in proc.stderr

    proc = smoke("--url", f"http://127.0.0.1:{free_port()}", "--payload", payloads[0], "--requests", "2")
    assert proc.returncode == 1
    assert "cannot reach" in proc.stderr and "seed.json: 3 of 3 requests failed" in proc.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--url", "localhost:8080"], "is not a URL"),
        (["--url", "http://127.0.0.1:1", "--requests", "0"], "--requests must be at least 1"),
        (["--url", "http://127.0.0.1:1", "--max-p99-ms", "0"], "--max-p99-ms must be above 0"),
        (["--url", "http://127.0.0.1:1", "--payload", "/nonexistent.json"], "not found"),
    ],
)
def test_refusals(args, message):
    proc = smoke(*args)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
