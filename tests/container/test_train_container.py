"""The real training image, run the way SageMaker runs it: `docker run -v TREE:/opt/ml IMAGE train`."""

from __future__ import annotations

import json
import re
import subprocess
import tarfile
import time
from dataclasses import replace
from pathlib import Path

import pytest

from ncf_core import artifact
from ncf_core import data as ncf_data
from ncf_core.jobs import train_to_artifact
from ncf_core.training import TrainConfig, list_checkpoints
from tests.support import docker_harness as dh
from tests.support import require_file, shared_data_dir
from tests.support.sagemaker_tree import SageMakerTree

pytestmark = pytest.mark.docker

HPS = {"epochs": '"3"', "batch_size": "4096", "lr": "0.005", "factor_num": "16", "num_layers": "2"}


@pytest.fixture(scope="module")
def image() -> str:
    dh.require_docker()
    return dh.build_project_image("train")


@pytest.fixture
def tree(tmp_path: Path) -> SageMakerTree:
    """/opt/ml with MovieLens-100K converted to a headed CSV in the train channel."""
    udata = require_file(shared_data_dir() / "ml-100k" / "u.data")
    t = SageMakerTree(tmp_path / "ml")
    lines = ["user,item,rating,timestamp"] + [",".join(r.split("\t")) for r in udata.read_text().splitlines()]
    (t.channel("train") / "ratings.csv").write_text("\n".join(lines) + "\n")
    return t


def run(image: str, tree: SageMakerTree, *options: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return dh.docker_run(image, ["train"], options=["-v", f"{tree.base}:/opt/ml", *options], timeout=timeout)


def test_train_in_container_writes_artifact_and_metrics(image: str, tree: SageMakerTree):
    tree.write_config(HPS)
    t0 = time.monotonic()
    proc = run(image, tree)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    art = artifact.load(tree.model)
    assert art.config.num_users == 943 and art.config.factor == 16
    assert art.metrics["hr"] > 0.3
    assert len(re.findall(r"epoch=\d+; loss=[0-9.]+;.* val_hr=[0-9.]+;.* hr=[0-9.]+;", proc.stdout)) == 3
    assert (tree.output / "data" / "learning_curve.png").is_file()
    assert list_checkpoints(tree.checkpoints)
    print(f"container train wall time {time.monotonic() - t0:.1f}s")


def test_neumf_from_earlier_jobs_models_in_read_only_channels(
    image: str, tree: SageMakerTree, tmp_path: Path
):
    data = ncf_data.load(tree.channel("train"), seed=TrainConfig().seed)
    cfg = TrainConfig(factor=16, num_layers=2, epochs=2, batch_size=4096, lr=0.005)
    for name in ("gmf", "mlp"):  # as SageMaker delivers an earlier job's output: one model.tar.gz
        train_to_artifact(data, replace(cfg, model=name), tmp_path / name)
        with tarfile.open(tree.channel(name) / "model.tar.gz", "w:gz") as tar:
            for path in (tmp_path / name).iterdir():
                tar.add(path, arcname=path.name)
    tree.write_config(HPS | {"epochs": "1", "lr": "0.0001"})
    read_only = [f"-v{tree.channel(n)}:/opt/ml/input/data/{n}:ro" for n in ("train", "gmf", "mlp")]
    proc = run(image, tree, *read_only)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "picked on validation" in proc.stdout
    history = json.loads((tree.output / "data" / "metrics.json").read_text())
    assert [h["epoch"] for h in history] == [0, 1] and history[0]["val_hr"] > 0.3
    assert artifact.load(tree.model).config.model == "neumf"


def test_bad_hyperparameter_exits_nonzero_with_failure_reason(image: str, tree: SageMakerTree):
    tree.write_config(HPS | {"lr": "abc"})
    proc = run(image, tree)
    assert proc.returncode != 0
    assert (tree.output / "failure").read_text() == "hyperparameter lr='abc' is not a number"


def test_killed_run_resumes_from_checkpoints(image: str, tree: SageMakerTree):
    tree.write_config(HPS | {"epochs": '"30"', "batch_size": "2048"})
    name = dh.unique_name("ncf-train-kill")
    proc = subprocess.Popen(
        [dh.DOCKER, "run", "--rm", "--name", name, "-v", f"{tree.base}:/opt/ml", image, "train"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180
        while len(list_checkpoints(tree.checkpoints)) < 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert list_checkpoints(tree.checkpoints), "no checkpoint before the deadline"
        subprocess.run([dh.DOCKER, "kill", "--signal", "KILL", name], check=True, timeout=60)
        proc.wait(timeout=60)
    finally:
        subprocess.run([dh.DOCKER, "rm", "-f", name], capture_output=True, timeout=60)
    assert proc.returncode != 0  # killed, not finished

    tree.write_config(HPS | {"epochs": '"4"', "batch_size": "2048"})
    rerun = run(image, tree)
    assert rerun.returncode == 0, rerun.stdout[-3000:]
    assert "resuming from /opt/ml/checkpoints/" in rerun.stdout
    history = json.loads((tree.output / "data" / "metrics.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]


def test_sigterm_from_docker_stop_checkpoints_promptly(image: str, tree: SageMakerTree):
    tree.write_config(HPS | {"epochs": '"30"', "batch_size": "2048"})
    with dh.running_container(image, ["train"], port=None, options=["-v", f"{tree.base}:/opt/ml"]) as (
        cid,
        _,
    ):
        deadline = time.monotonic() + 180
        while not list_checkpoints(tree.checkpoints) and time.monotonic() < deadline:
            time.sleep(0.2)
        t0 = time.monotonic()
        subprocess.run([dh.DOCKER, "stop", "--timeout", "30", cid], check=True, timeout=60)
        stopped_in = time.monotonic() - t0
        state = subprocess.run(
            [dh.DOCKER, "inspect", "-f", "{{.State.ExitCode}}", cid],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        out = dh.logs(cid)
    assert state == "143", out[-2000:]
    assert stopped_in < 10 and "stopped on request" in out


def test_two_containers_on_a_docker_network(image: str, tmp_path: Path, tree: SageMakerTree):
    hosts = ("algo-1", "algo-2")
    trees = []
    for host in hosts:
        t = SageMakerTree(tmp_path / host)
        (t.channel("train") / "ratings.csv").write_bytes((tree.channel("train") / "ratings.csv").read_bytes())
        t.write_config(HPS, hosts=hosts, current_host=host)
        trees.append(t)
    with dh.network() as net:
        procs = [
            subprocess.Popen(
                [
                    dh.DOCKER,
                    "run",
                    "--rm",
                    "--network",
                    net,
                    "--name",
                    dh.unique_name(host),
                    "--hostname",
                    host,
                    "--network-alias",
                    host,
                    "-v",
                    f"{t.base}:/opt/ml",
                    image,
                    "train",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for host, t in zip(hosts, trees, strict=True)
        ]
        outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    report = json.loads((trees[0].output / "data" / "evaluation.json").read_text())
    assert report["world_size"] == 2 and report["hr"] > 0.3
    assert artifact.is_artifact(trees[0].model) and not artifact.is_artifact(trees[1].model)
