"""Experiment tracking: ``train`` and ``evaluate`` against a real ``mlflow server`` on loopback (sqlite, a
temporary artifact store), read back with the MLflow client; and a tracking server that cannot be reached
or fails mid-run, which costs a WARNING and never the job."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ncf_core import artifact
from ncf_core import data as ncf_data
from ncf_core.jobs import train_to_artifact
from ncf_core.training import TrainConfig
from ncf_sagemaker import contract, tracking
from tests.support import free_port
from tests.support.mlflow_server import MlflowServer, require_mlflow
from tests.support.sagemaker_tree import SageMakerTree
from tests.support.synthetic import SMALL_DATA, write_ncf_files, write_ratings_csv

JOB = "ncf-train-2026-12-02-03-00-00-000"
JOB_ARN = f"arn:aws:sagemaker:eu-west-1:123456789012:training-job/{JOB}"
EXECUTION_ARN = "arn:aws:sagemaker:eu-west-1:123456789012:pipeline/ncf-pipeline/execution/abc123"
HPS = {"epochs": "3", "batch_size": "512", "factor": "8", "num_layers": "2", "num_neg": "4", "lr_decay": "1"}
WARNING = "experiment tracking off"

pytestmark = pytest.mark.mlflow


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[MlflowServer]:
    require_mlflow()
    srv = MlflowServer(tmp_path_factory.mktemp("mlflow"))
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def tree(tmp_path: Path) -> SageMakerTree:
    t = SageMakerTree(tmp_path / "ml")
    write_ratings_csv(t.channel("train") / "interactions.csv")
    t.write_config(HPS)
    return t


def client(server: MlflowServer):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=server.uri)


def only_run(server: MlflowServer, experiment: str, query: str):
    c = client(server)
    exp = c.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment!r}"
    runs = c.search_runs([exp.experiment_id], filter_string=query)
    assert len(runs) == 1, runs
    return runs[0]


def artifact_files(server: MlflowServer, run_id: str, path: str | None = None) -> set[str]:
    out: set[str] = set()
    for f in client(server).list_artifacts(run_id, path):
        out |= artifact_files(server, run_id, f.path) if f.is_dir else {f.path}
    return out


def test_train_logs_params_epochs_kept_figures_curve_and_model(server: MlflowServer, tree: SageMakerTree):
    proc = tree.run_train(
        timeout=120,
        MLFLOW_TRACKING_URI=server.uri,
        MLFLOW_EXPERIMENT_NAME="ncf-test-train",
        TRAINING_JOB_NAME=JOB,
        TRAINING_JOB_ARN=JOB_ARN,
        NCF_PIPELINE_EXECUTION_ARN=EXECUTION_ARN,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert WARNING not in proc.stdout

    run = only_run(server, "ncf-test-train", f"attributes.run_name = '{JOB}'")
    assert run.info.status == "FINISHED"
    assert run.data.tags[tracking.TRAINING_JOB_TAG] == JOB
    assert run.data.tags[tracking.TRAINING_JOB_ARN_TAG] == JOB_ARN
    assert run.data.tags[tracking.PIPELINE_EXECUTION_TAG] == EXECUTION_ARN
    assert run.data.tags[tracking.PROGRAM_TAG] == "train"
    # the resolved hyperparameters: those sent, and the defaults filled in
    params = run.data.params
    assert (params["epochs"], params["factor"], params["num_layers"]) == ("3", "8", "2")
    assert params["model"] == "neumf" and params["seed"] == "42" and params["world_size"] == "1"

    history = json.loads((tree.output / "data" / "metrics.json").read_text())
    for key in ("loss", "hr", "ndcg", "val_hr", "val_ndcg"):
        logged = client(server).get_metric_history(run.info.run_id, key)
        assert [m.step for m in sorted(logged, key=lambda m: m.step)] == [1, 2, 3], key
        assert [m.value for m in sorted(logged, key=lambda m: m.step)] == pytest.approx(
            [h[key] for h in history]
        )
    report = json.loads((tree.output / "data" / "evaluation.json").read_text())
    metrics = run.data.metrics
    assert metrics["best_epoch"] == report["best_epoch"] and metrics["epochs_run"] == 3
    for key in ("hr", "ndcg", "val_hr", "val_ndcg"):
        assert metrics[f"best_{key}"] == pytest.approx(report[key]), key

    files = artifact_files(server, run.info.run_id)
    assert {"reports/learning_curve.png", "reports/metrics.json", "reports/evaluation.json"} <= files
    model_files = {f.removeprefix("model/") for f in files if f.startswith("model/")}
    assert model_files == {p.name for p in tree.model.iterdir()}
    assert artifact.WEIGHTS_FILE in model_files


def test_evaluate_logs_its_figures_tagged_with_the_pipeline_execution(server: MlflowServer, tmp_path: Path):
    prefix = write_ncf_files(tmp_path / "ncf" / "toy")
    model = tmp_path / "model"
    cfg = TrainConfig(factor=8, num_layers=2, epochs=1, batch_size=512, **SMALL_DATA)
    train_to_artifact(ncf_data.load(prefix, seed=cfg.seed), cfg, model)

    base = tmp_path / "processing"
    test_dir = base / contract.PROCESSING_SUBDIR / contract.PROCESSING_TEST
    test_dir.mkdir(parents=True)
    for suffix in (".test.rating", ".test.negative"):
        (test_dir / f"toy{suffix}").write_bytes(Path(f"{prefix}{suffix}").read_bytes())
    (base / "config").mkdir()
    (base / "config" / "processingjobconfig.json").write_text(json.dumps({"ProcessingJobName": "ncf-eval-1"}))
    env = os.environ | dict(
        SAGEMAKER_BASE_DIR=str(base),
        MLFLOW_TRACKING_URI=server.uri,
        MLFLOW_EXPERIMENT_NAME="ncf-test-evaluate",
        NCF_PIPELINE_EXECUTION_ARN=EXECUTION_ARN,
        NCF_TRAINING_JOB_NAME=JOB,
    )
    command = [sys.executable, "-m", "ncf_sagemaker.evaluation_job", "--model", str(model)]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])

    run = only_run(server, "ncf-test-evaluate", "attributes.run_name = 'ncf-eval-1'")
    assert run.info.status == "FINISHED"
    assert run.data.tags[tracking.PIPELINE_EXECUTION_TAG] == EXECUTION_ARN
    assert run.data.tags[tracking.EVALUATED_JOB_TAG] == JOB
    assert run.data.tags[tracking.PROCESSING_JOB_TAG] == "ncf-eval-1"
    assert run.data.metrics["hr_at_10"] == pytest.approx(report["metrics"]["hr_at_10"]["value"])
    assert artifact_files(server, run.info.run_id) == {"reports/evaluation.json"}


def test_a_resumed_job_continues_its_unfinished_run(server: MlflowServer, monkeypatch):
    monkeypatch.setenv(contract.MLFLOW_TRACKING_URI_ENV, server.uri)
    monkeypatch.setenv(contract.MLFLOW_EXPERIMENT_NAME_ENV, "ncf-test-resume")
    monkeypatch.setenv(contract.TRAINING_JOB_NAME_ENV, "ncf-train-spot")
    first = tracking.start_training({"epochs": 10, "lr": 0.01})
    first.log_epoch({"epoch": 1, "hr": 0.5})
    first.end(tracking.KILLED)  # SIGTERM: the checkpoint resumes the job, under the same name
    again = tracking.start_training({"epochs": 12, "lr": 0.01})  # epochs may change across a resume
    assert again.active and again.run_id == first.run_id
    again.log_epoch({"epoch": 2, "hr": 0.6})
    again.end()
    run = client(server).get_run(first.run_id)
    assert run.info.status == "FINISHED" and run.data.params["epochs"] == "10"
    assert [m.step for m in client(server).get_metric_history(first.run_id, "hr")] == [1, 2]
    assert tracking.start_training({}).run_id != first.run_id  # a finished run is not reopened


def test_an_unreachable_server_is_one_warning_and_the_job_succeeds(tree: SageMakerTree):
    require_mlflow()
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    t0 = time.monotonic()
    proc = tree.run_train(timeout=120, MLFLOW_TRACKING_URI=closed, TRAINING_JOB_NAME=JOB)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert time.monotonic() - t0 < 90  # MLflow's own retry policy alone would take minutes
    warnings = [line for line in proc.stdout.splitlines() if WARNING in line]
    assert len(warnings) == 1 and " WARNING " in warnings[0] and closed in warnings[0], warnings
    assert artifact.is_artifact(tree.model)
    assert (tree.output / "data" / "evaluation.json").is_file()
    assert not (tree.output / "failure").exists()


class BrokenClient:
    """A server that answers the start of the run and then fails every request."""

    def __init__(self) -> None:
        self.calls = 0

    def __getattr__(self, name: str):
        def call(*args, **kwargs):
            self.calls += 1
            raise ConnectionError("server went away")

        return call


def test_a_server_failing_mid_run_is_one_warning_then_nothing(caplog):
    require_mlflow()  # the run's calls build mlflow entities
    broken = BrokenClient()
    run = tracking.Run(broken, "run-1", "https://user:secret@mlflow.example.com")
    with caplog.at_level(logging.WARNING, logger="ncf_sagemaker.tracking"):
        run.log_epoch({"epoch": 1, "hr": 0.5})
        run.log_epoch({"epoch": 2, "hr": 0.6})
        run.log_kept({"best_epoch": 2, "hr": 0.6})
        run.end()
    assert broken.calls == 1 and not run.active
    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert "logging metrics" in message and "server went away" in message
    assert "secret" not in message and "user:***@mlflow.example.com" in message


def test_no_tracking_uri_means_no_run(monkeypatch):
    monkeypatch.delenv(contract.MLFLOW_TRACKING_URI_ENV, raising=False)
    run = tracking.start_training({"epochs": 1})
    assert not run.active
    run.log_epoch({"epoch": 1, "hr": 0.5})  # a no-op
    run.end()
    monkeypatch.setenv(contract.MLFLOW_TRACKING_URI_ENV, " ")  # the pipeline's default when none is given
    assert not tracking.start_training({}).active


def test_a_tracking_server_arn_goes_through_the_sagemaker_plugin(monkeypatch, caplog):
    """No such server (and, offline, no network): the plugin's signed request fails, one WARNING."""
    require_mlflow()
    arn = "arn:aws:sagemaker:eu-west-1:123456789012:mlflow-tracking-server/ncf-test"
    monkeypatch.setenv(contract.MLFLOW_TRACKING_URI_ENV, arn)
    for name, value in {
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "y",
        "AWS_REGION": "eu-west-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with caplog.at_level(logging.WARNING, logger="ncf_sagemaker.tracking"):
        run = tracking.start_training({"epochs": 1})
    assert not run.active
    (record,) = [r for r in caplog.records if r.name == "ncf_sagemaker.tracking"]
    assert WARNING in record.getMessage() and arn in record.getMessage()
    assert "experiments.sagemaker.aws" in record.getMessage()  # the plugin's endpoint, not a plain URL
