"""The Docker harness itself works: our base image runs, builds on it work, and containers talk on a network.

Needs the engine and ncf-python:bookworm from .ci/docker_setup.sh (skipped without, failed in CI).
"""

from __future__ import annotations

import urllib.request

import pytest

from tests.support.docker_harness import (
    PYTHON_IMAGE,
    build_image,
    docker_run,
    network,
    remove_image,
    require_image,
    running_container,
    unique_name,
    wait_for_http,
)

pytestmark = pytest.mark.docker

# Serves the text "hello from <hostname>" at /hello on port 8080.
SERVER = [
    "sh",
    "-c",
    'mkdir -p /srv && echo "hello from $(hostname)" > /srv/hello && exec python3 -m http.server -d /srv 8080',
]

# Run in a second container: fetches algo-1's /hello by name, retrying while the server starts.
CLIENT = """
import time, urllib.request
for _ in range(100):
    try:
        body = urllib.request.urlopen("http://algo-1:8080/hello", timeout=5).read()
        break
    except OSError:
        time.sleep(0.3)
else:
    raise SystemExit("algo-1 unreachable")
print(body.decode(), end="")
"""


@pytest.fixture(autouse=True)
def _image() -> None:
    require_image(PYTHON_IMAGE)


def test_base_image_runs_python_311():
    proc = docker_run(PYTHON_IMAGE, ["python3", "-c", "import sys; print(sys.version)"], check=True)
    assert proc.stdout.startswith("3.11."), proc.stdout
    # ... and it is the venv's python that is first on PATH
    proc = docker_run(PYTHON_IMAGE, ["python3", "-c", "import sys; print(sys.prefix)"], check=True)
    assert proc.stdout.strip() == "/opt/venv"


def test_build_image_with_build_arg(tmp_path):
    (tmp_path / "Dockerfile").write_text(
        "ARG BASE_IMAGE=does-not-exist\nFROM ${BASE_IMAGE}\nARG GREETING\nRUN echo $GREETING > /greeting\n"
    )
    tag = build_image(
        tmp_path / "Dockerfile",
        f"ncf-harness-test:{unique_name('t')}",
        tmp_path,
        {"BASE_IMAGE": PYTHON_IMAGE, "GREETING": "built"},
    )
    try:
        assert docker_run(tag, ["cat", "/greeting"], check=True).stdout == "built\n"
    finally:
        remove_image(tag)


def test_published_port_and_two_containers_by_name():
    with (
        network() as net,
        running_container(
            PYTHON_IMAGE,
            SERVER,
            options=["--network", net, "--hostname", "algo-1", "--network-alias", "algo-1"],
        ) as (server, host_port),
    ):
        # The host reaches the published ephemeral port on 127.0.0.1.
        body = wait_for_http(f"http://127.0.0.1:{host_port}/hello", container=server)
        assert body == b"hello from algo-1\n"
        # A second container on the same user-defined network reaches the first by its name.
        proc = docker_run(
            PYTHON_IMAGE, ["python3", "-c", CLIENT], options=["--network", net, "--hostname", "algo-2"]
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == "hello from algo-1\n"
    # The host side of the published port is gone with the container.
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{host_port}/hello", timeout=2)
