"""README.md's Docker blocks, as written and in the README's order, on this machine's engine: the images built
and pushed by `scripts/build_and_push.sh` (to moto's ECR and a local registry), and docker-compose: train
on the downloaded data with the training image, serve, curl, down. tests/aws/test_readme.py runs every other
block (and stands in for these with images registered in moto).

Needs the engine, ncf-python:bookworm and docker-compose from .ci/docker_setup.sh (skipped without, failed
in CI). Nothing is pulled: BASE_IMAGE is CI's local base for docker-compose, and debian:bookworm-slim (the
default base of build_and_push.sh) is CI's base under that name for the length of the build test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from tests.aws.test_launch_data_and_images import local_registry  # noqa: F401 - a fixture
from tests.aws.test_readme import seed_download
from tests.support import docker_harness as dh
from tests.support import free_port
from tests.support import readme as R
from tests.support.moto import BUCKET, Aws, MotoServer

pytestmark = pytest.mark.docker


def blocks_until(last: str, data: str = "raw") -> list[R.Block]:
    """The path's blocks up to `last`: the ones it needs run before it, as a user would have."""
    path = R.path(data)
    return path[: [b.id for b in path].index(last) + 1]


@pytest.fixture(scope="module")
def images() -> None:
    dh.require_docker()
    dh.build_project_image("train")
    dh.build_project_image("serve")


def compose_shim(bin_dir) -> None:
    """The README's `docker-compose`: Debian's 1.29, or `docker compose` (v2) behind that name."""
    if shutil.which("docker-compose"):
        return
    if subprocess.run([dh.DOCKER, "compose", "version"], capture_output=True).returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but neither docker-compose nor `docker compose` is installed")
        pytest.skip("neither docker-compose nor `docker compose` is installed")
    shim = bin_dir / "docker-compose"
    shim.write_text(f'#!/bin/sh\nexec {dh.DOCKER} compose "$@"\n')
    shim.chmod(0o755)


def test_readme_docker_compose_blocks(images, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SAGEMAKER_"))}
    project = dh.unique_name("ncf-readme")
    env |= {
        "NCF_SERVE_PORT": str(free_port()),
        "BASE_IMAGE": dh.PYTHON_IMAGE,
        "COMPOSE_PROJECT_NAME": project,
    }
    shell = R.Shell(tmp_path / "clone", env)
    compose_shim(tmp_path / "clone-bin")
    seed_download(shell.work / "data")
    try:
        for block in blocks_until("compose"):
            if block.id == "local":
                continue  # tests/aws/test_readme.py runs it; the compose block needs only DATA and the port
            out = shell.run(block, timeout=900)
        answer = json.loads(out.splitlines()[-1])
        assert [len(r["items"]) for r in answer["recommendations"]] == [5, 5]
        assert (shell.work / ".compose" / "model" / "ncf_config.json").is_file()
    finally:
        subprocess.run(["docker-compose", "down"], cwd=shell.work, env=shell.env, capture_output=True)


@pytest.fixture
def moto() -> Iterator[Aws]:
    server = MotoServer()
    try:
        server.reset()
        view = Aws(server)
        view.s3.create_bucket(Bucket=BUCKET)
        yield view
    finally:
        server.stop()


def test_readme_build_block_pushes_both_images(images, moto, local_registry, tmp_path):  # noqa: F811
    from ncf_launch.build_and_push import CPU_BASE_IMAGE

    stand_in = subprocess.run([dh.DOCKER, "image", "inspect", CPU_BASE_IMAGE], capture_output=True).returncode
    if stand_in:
        subprocess.run([dh.DOCKER, "tag", dh.PYTHON_IMAGE, CPU_BASE_IMAGE], check=True)
    env = {k: v for k, v in moto.env.items() if k not in ("SAGEMAKER_ROLE_ARN",)}
    env |= {"NCF_REGISTRY": local_registry, "DOCKER_CONFIG": str(tmp_path / "docker-config")}
    shell = R.Shell(tmp_path / "clone", env)
    try:
        for block in blocks_until("build"):
            if block.id in ("data", "local", "compose"):
                continue  # not needed for the build (the test above and tests/aws run them)
            out = shell.run(block, timeout=1500)
        pushed = out.split()
        assert [p.rsplit("/", 1)[1].split(":")[0] for p in pushed] == ["ncf-train", "ncf-serve"]
        assert all(p.startswith(f"{local_registry}/") for p in pushed)
    finally:
        if stand_in:
            subprocess.run([dh.DOCKER, "rmi", CPU_BASE_IMAGE], capture_output=True)
