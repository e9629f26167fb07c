"""Helpers for tests that build and run our images on a real Docker engine (no tests in here).

The engine and the base images come from `.ci/docker_setup.sh` (stop it with `.ci/docker_setup.sh stop`).
Without a reachable engine, `require_docker()` skips the test, except in CI (`CI=true`), where a skipped
container test would hide a broken setup, so it fails instead.

Builds use the legacy builder (DOCKER_BUILDKIT=0): Debian's docker.io ships no buildx, so Dockerfiles
must not use BuildKit-only syntax (`RUN --mount`, heredocs, `COPY --link`). Nothing can be pulled here:
never pass `--pull`; base images must already be local (ncf-python:bookworm, from docker_setup.sh).
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
import time
import tomllib
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from tests.support.paths import ROOT

DOCKER = os.environ.get("NCF_DOCKER", "docker")
PYTHON_IMAGE = "ncf-python:bookworm"
_BUILD_ENV = {**os.environ, "DOCKER_BUILDKIT": "0"}


class DockerError(RuntimeError):
    """A docker command failed; the message carries the command and the tail of its output."""


def _docker(*args: str, timeout: float = 120, env: Mapping[str, str] | None = None, check: bool = True):
    proc = subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-40:])
        raise DockerError(f"docker {' '.join(args)} exited {proc.returncode}:\n{tail}")
    return proc


def unique_name(prefix: str = "ncf-test") -> str:
    """A container or network name that cannot clash with a parallel or leftover test run."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@functools.lru_cache(maxsize=1)
def docker_available() -> str | None:
    """None if a Docker engine answers, else the reason it does not (cached for the session)."""
    if shutil.which(DOCKER) is None:
        return f"no {DOCKER!r} client on PATH"
    try:
        proc = _docker("info", "--format", "{{.ServerVersion}}", timeout=30, check=False)
    except subprocess.TimeoutExpired:
        return "`docker info` timed out"
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or ["no output"]
        return f"no Docker engine reachable ({lines[-1]}); start one with .ci/docker_setup.sh"
    return None


def require_docker() -> None:
    """Skip the calling test without a Docker engine; fail it instead when CI=true."""
    reason = docker_available()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {reason}", pytrace=False)
    pytest.skip(reason)


def require_image(tag: str = PYTHON_IMAGE) -> str:
    """require_docker(), then skip (fail in CI) if the local image `tag` is missing. Returns `tag`."""
    require_docker()
    if _docker("image", "inspect", tag, check=False).returncode != 0:
        reason = f"image {tag} not found; build it with .ci/docker_setup.sh"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {reason}", pytrace=False)
        pytest.skip(reason)
    return tag


_built: dict[tuple, str] = {}


def build_image(
    dockerfile: str | Path,
    tag: str,
    context: str | Path = ROOT,
    build_args: Mapping[str, str] | None = None,
    timeout: float = 3600,
) -> str:
    """`docker build` (layer cache on, no --pull) and return `tag`; built once per test session."""
    args = tuple(sorted((build_args or {}).items()))
    key = (str(Path(dockerfile).resolve()), tag, str(Path(context).resolve()), args)
    if key not in _built:
        cmd = ["build", "--tag", tag, "--file", str(dockerfile)]
        for name, value in args:
            cmd += ["--build-arg", f"{name}={value}"]
        _docker(*cmd, str(context), timeout=timeout, env=_BUILD_ENV)
        _built[key] = tag
    return tag


def remove_image(tag: str) -> None:
    """Remove an image built by a test (no error if it is already gone)."""
    _docker("rmi", "--force", tag, check=False)
    for key in [k for k, v in _built.items() if v == tag]:
        del _built[key]


def docker_run(
    image: str,
    command: Sequence[str] = (),
    *,
    options: Sequence[str] = (),
    timeout: float = 600,
    check: bool = False,
) -> subprocess.CompletedProcess[str]:
    """`docker run --rm [options] image command...`, output captured as text.

    On a timeout the container is removed too (killing the client alone would leave it running).
    """
    name = unique_name()
    try:
        return _docker("run", "--rm", "--name", name, *options, image, *command, timeout=timeout, check=check)
    except subprocess.TimeoutExpired:
        _docker("rm", "--force", name, check=False)
        raise


def logs(container: str) -> str:
    """stdout and stderr of a container so far (for assertion messages)."""
    proc = _docker("logs", container, check=False)
    return proc.stdout + proc.stderr


@contextlib.contextmanager
def running_container(
    image: str,
    command: Sequence[str] = (),
    *,
    port: int | None = 8080,
    options: Sequence[str] = (),
    name: str | None = None,
) -> Iterator[tuple[str, int | None]]:
    """Start a detached container, yield (container_id, host_port), always remove it.

    The container's `port` is published on an ephemeral port of 127.0.0.1 only (`-p 127.0.0.1::PORT`);
    with port=None nothing is published and host_port is None. `name` defaults to a unique name; for
    a fixed host name on a network (SageMaker's algo-1...) pass `--hostname`/`--network-alias` in
    `options` rather than `name`, so leftovers of an earlier run cannot clash.
    """
    publish = ["--publish", f"127.0.0.1::{port}"] if port is not None else []
    proc = _docker("run", "--detach", "--name", name or unique_name(), *publish, *options, image, *command)
    container = proc.stdout.strip()
    try:
        host_port = None
        if port is not None:
            # "127.0.0.1:49153" (one line per address family; only IPv4 is published here)
            proc = _docker("port", container, f"{port}/tcp", check=False)
            if proc.returncode != 0:  # typically: the container already exited
                raise DockerError(f"{container}: port {port} not published:\n{proc.stderr}{logs(container)}")
            host_port = int(proc.stdout.split()[0].rsplit(":", 1)[1])
        yield container, host_port
    finally:
        _docker("rm", "--force", "--volumes", container, check=False)


@contextlib.contextmanager
def network(name: str | None = None) -> Iterator[str]:
    """A user-defined bridge network (containers on it resolve each other by name); removed after."""
    name = name or unique_name("ncf-net")
    _docker("network", "create", name)
    try:
        yield name
    finally:
        _docker("network", "rm", name, check=False)


def wait_for_http(url: str, timeout: float = 60, container: str | None = None) -> bytes:
    """GET `url` until it answers 2xx, and return the body; fail early (with logs) if `container` exits."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return resp.read()
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            error = exc
        if container is not None:
            state = _docker(
                "inspect", "--format", "{{.State.Running}}", container, check=False
            ).stdout.strip()
            if state != "true":
                raise DockerError(f"container {container} stopped before {url} answered:\n{logs(container)}")
        if time.monotonic() > deadline:
            tail = f"\n{logs(container)}" if container else ""
            raise DockerError(f"{url} did not answer within {timeout} s ({error}){tail}")
        time.sleep(0.3)


# What scripts/wheelhouse.sh downloads, with the dependencies.
IMAGE_EXTRAS = ("train", "tracking", "serve", "monitor")


def ensure_wheelhouse() -> Path:
    """Image builds install from ./wheelhouse (pip cannot verify TLS inside containers here): fill it once,
    and again (only what is missing is fetched) when pyproject.toml pins something its list lacks."""
    wheelhouse = ROOT / "wheelhouse"
    listed = wheelhouse / "requirements.txt"
    have = set(listed.read_text().split()) if listed.is_file() else set()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = set(project["dependencies"]).union(*(project["optional-dependencies"][e] for e in IMAGE_EXTRAS))
    if not any(wheelhouse.glob("torch-*.whl")) or not pins <= have:
        subprocess.run(["bash", str(ROOT / "scripts" / "wheelhouse.sh")], check=True, timeout=1800)
    return wheelhouse


TRAIN_IMAGE = "ncf-train:local"
SERVE_IMAGE = "ncf-serve:local"


def build_project_image(kind: str) -> str:
    """Build containers/<kind>/Dockerfile (train or serve) on the local CI base; returns its tag."""
    require_image(PYTHON_IMAGE)
    ensure_wheelhouse()
    tag = {"train": TRAIN_IMAGE, "serve": SERVE_IMAGE}[kind]
    return build_image(ROOT / "containers" / kind / "Dockerfile", tag, ROOT, {"BASE_IMAGE": PYTHON_IMAGE})
