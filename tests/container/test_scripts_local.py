"""The scripts with our real images on this machine's Docker engine: train.sh --local trains with the
training image, invoke.sh --local asks the serving image for recommendations; build_and_push.sh's --cpu and
--gpu choose the base image and whether the build requires a CUDA build of torch.

Needs the engine and ncf-python:bookworm from .ci/docker_setup.sh (skipped without, failed in CI) and a
filled ./wheelhouse (scripts/wheelhouse.sh): containers here cannot reach PyPI.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ROOT
from tests.support.docker_harness import (
    PYTHON_IMAGE,
    build_project_image,
    docker_run,
    remove_image,
    require_image,
    running_container,
    wait_for_http,
)
from tests.support.synthetic import write_ncf_files

pytestmark = pytest.mark.docker

SCRIPTS = ROOT / "scripts"
TRAIN_DOCKERFILE = ROOT / "containers" / "train" / "Dockerfile"
SERVE_DOCKERFILE = ROOT / "containers" / "serve" / "Dockerfile"


def env() -> dict[str, str]:
    """No AWS at all: the local paths must not need it."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SAGEMAKER_"))}
    return clean | {"PYTHON": sys.executable, "AWS_EC2_METADATA_DISABLED": "true"}


def run(script: str, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SCRIPTS / f"{script}.sh"), *args], env=env(), capture_output=True, text=True, timeout=timeout
    )


def ok(proc: subprocess.CompletedProcess) -> list[str]:
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-6000:]}"
    )
    return proc.stdout.splitlines()


def build(which: str, dockerfile: Path) -> str:
    """The real image, as CI builds it (the harness builds each once per session, on ncf-python:bookworm).

    It is the tag the scripts use by default (ncf-train:local, ncf-serve:local). build_and_push.sh's own
    build path is tested with throwaway images (below, and the push test): rebuilding the real images
    through it would only send the 300 MB context again.
    """
    if not dockerfile.is_file():
        pytest.skip(f"{dockerfile.relative_to(ROOT)} does not exist yet")
    tag = build_project_image(which)
    assert tag == f"ncf-{which}:local"
    return tag


def test_cpu_and_gpu_flags_choose_the_base_image(tmp_path):
    """--gpu keeps the Dockerfile's default base and passes REQUIRE_CUDA=1 (the images' build check then
    refuses a CPU build of torch); --cpu builds on debian:bookworm-slim, REQUIRE_CUDA left at its default.

    Nothing can be pulled here, so debian:bookworm-slim is stood in for by ncf-base:bookworm (a Debian
    bookworm minbase, without the /opt/venv of ncf-python:bookworm) for the length of the test, if absent.
    """
    from ncf_launch.build_and_push import CPU_BASE_IMAGE, TORCH_CPU_INDEX

    require_image(PYTHON_IMAGE)
    require_image("ncf-base:bookworm")
    stand_in = (
        subprocess.run(["docker", "image", "inspect", CPU_BASE_IMAGE], capture_output=True).returncode != 0
    )
    if stand_in:
        subprocess.run(["docker", "tag", "ncf-base:bookworm", CPU_BASE_IMAGE], check=True)
    (tmp_path / "Dockerfile").write_text(
        f"ARG BASE_IMAGE={PYTHON_IMAGE}\nFROM ${{BASE_IMAGE}}\n"
        'ARG REQUIRE_CUDA=0\nRUN echo "$REQUIRE_CUDA" > /require-cuda\n'
        'ARG TORCH_INDEX_URL=\nRUN echo "$TORCH_INDEX_URL" > /torch-index\nCMD ["true"]\n'
    )
    name = f"ncf-base-test-{os.getpid()}"
    common = ["--no-push", "--image", f"{name}={tmp_path / 'Dockerfile'}", "--context", str(tmp_path)]
    try:
        cu126 = "https://download.pytorch.org/whl/cu126"
        cases = (
            ("gpu", ["--gpu"], True, "1", ""),  # PyPI's torch: its CUDA build
            ("cpu", ["--cpu"], False, "0", TORCH_CPU_INDEX),  # PyTorch's CPU builds
            ("cu126", ["--gpu", "--torch-index", cu126], True, "1", cu126),
        )
        for tag, flags, has_venv, require_cuda, index in cases:
            assert ok(run("build_and_push", *flags, *common, "--tag", tag)) == [f"{name}:{tag}"]
            proc = docker_run(f"{name}:{tag}", ["test", "-d", "/opt/venv"])
            assert (proc.returncode == 0) == has_venv, flags
            proc = docker_run(f"{name}:{tag}", ["cat", "/require-cuda"])
            assert proc.stdout.strip() == require_cuda, (flags, proc)
            assert docker_run(f"{name}:{tag}", ["cat", "/torch-index"]).stdout.strip() == index, flags
        proc = run("build_and_push", "--torch-index", "download.pytorch.org", *common)
        assert proc.returncode == 2 and "is not a URL" in proc.stderr, proc
    finally:
        for tag in ("local", "gpu", "cpu", "cu126"):
            remove_image(f"{name}:{tag}")
        if stand_in:
            subprocess.run(["docker", "rmi", CPU_BASE_IMAGE], capture_output=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_ncf_files(tmp_path_factory.mktemp("data") / "toy")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data) -> Iterator[tuple[Path, subprocess.CompletedProcess]]:
    """train.sh --local with the real training image: (the /opt/ml tree, the finished process)."""
    build("train", TRAIN_DOCKERFILE)
    tree = tmp_path_factory.mktemp("job") / "opt-ml"
    hp = ["--hp", "model=neumf", "--hp", "epochs=2", "--hp", "factor_num=8", "--hp", "test_num_ng=20"]
    proc = run(
        "train", "--local", "--job-name", "ncf-local", "--train", str(data), "--local-dir", str(tree), *hp
    )
    yield tree, proc


def test_train_local_with_the_training_image(trained):
    from ncf_core import artifact

    tree, proc = trained
    assert ok(proc) == ["ncf-local", str(tree / "model")]
    assert artifact.is_artifact(tree / "model")
    assert (tree / "output" / "model.tar.gz").stat().st_size > 0
    # every metric definition finds its value in the container's log, as SageMaker would
    definitions = json.loads((SCRIPTS / "metric_definitions.json").read_text())["MetricDefinitions"]
    for d in definitions:
        assert re.search(d["Regex"], proc.stderr), (d, proc.stderr[-3000:])
    assert any((tree / "checkpoints").iterdir())


def test_train_local_bad_hyperparameter_is_refused_before_the_image_runs(trained, data, tmp_path):
    proc = run("train", "--local", "--train", str(data), "--local-dir", str(tmp_path / "t"), "--hp", "lr=abc")
    assert proc.returncode == 2, proc.stderr[-3000:]  # train.sh checks with the image's own parser
    assert "lr='abc' is not a number" in proc.stderr
    assert not (tmp_path / "t").exists()


def test_train_local_failing_job_shows_the_failure_reason(trained, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "u.data").write_text("1\t2\t3\t4\n1\tx\t3\t4\n")  # line 2: item "x"
    proc = run("train", "--local", "--train", str(bad), "--local-dir", str(tmp_path / "t"))
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "u.data, line 2" in proc.stderr
    assert "u.data, line 2" in (tmp_path / "t" / "output" / "failure").read_text()


def test_invoke_local_against_the_serving_image(trained, data, tmp_path):
    tree, proc = trained
    ok(proc)
    image = build("serve", SERVE_DOCKERFILE)
    known = sorted(
        {int(line.split("\t")[1]) for line in Path(f"{data}.train.rating").read_text().splitlines()}
    )
    candidates = known[:50]
    payload = tmp_path / "payload.json"
    payload.write_text(json.dumps({"user": [0] * len(candidates), "item": candidates}))
    options = ["--volume", f"{tree / 'model'}:/opt/ml/model:ro"]
    with running_container(image, ["serve"], port=8080, options=options) as (container, port):
        wait_for_http(f"http://127.0.0.1:{port}/ping", timeout=120, container=container)
        answer = json.loads(
            ok(run("invoke", "--local", f"http://127.0.0.1:{port}", "--payload", str(payload)))[0]
        )
    assert isinstance(answer, list) and len(answer) == 10
    assert set(answer) <= set(candidates)
