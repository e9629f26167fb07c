"""scripts/*.sh against real servers: a moto server (S3, ECR, STS, SageMaker, SageMaker runtime) on an
ephemeral loopback port, and, for pushes, Debian's docker-registry on loopback with the Docker engine.

Each test runs the real scripts as a user would (subprocesses, AWS_ENDPOINT_URL pointing at moto, dummy
credentials) and then reads what they created back through boto3. Two things moto 5.2.1 lacks are added to
the in-process server, in `_extend_moto` (nothing else is changed):
- UpdateEndpoint is not implemented: it is added with SageMaker's semantics (the endpoint switches to the new
  config's variants and data capture);
- it overwrites a training job's MetricDefinitions with a canned one, and never fails a job or an endpoint:
  so metric definitions are checked in the CreateTrainingJob request the server received, and a test can
  ask for a job or endpoint to come up Failed with a given FailureReason.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import boto3
import pytest

from tests.synthetic import write_ncf_files, write_ratings_csv

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
ACCOUNT = "123456789012"  # moto's default account
REGION = "us-east-1"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/SageMakerRole"
BUCKET = "ncf-test-bucket"
REGISTRY = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com"
MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "size": 1,
            "digest": "sha256:" + "0" * 64,
        },
        "layers": [],
    }
)


# ------------------------------------------------------------------------------------------ moto server


class MotoServer:
    """moto's WSGI app on 127.0.0.1:<ephemeral>, recording every request it receives."""

    def __init__(self) -> None:
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
        from werkzeug.serving import make_server

        _extend_moto()
        self.requests: list[dict] = []
        app = DomainDispatcherApplication(create_backend_app)
        self._server = make_server("127.0.0.1", 0, self._recording(app), threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _recording(self, app):
        def wsgi(environ, start_response):
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(length) if length else b""
            environ["wsgi.input"] = io.BytesIO(body)
            headers = {
                k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")
            }
            headers["content-type"] = environ.get("CONTENT_TYPE", "")
            self.requests.append(
                {
                    "target": (environ.get("HTTP_X_AMZ_TARGET") or "").rpartition(".")[2],
                    "method": environ["REQUEST_METHOD"],
                    "path": environ.get("PATH_INFO", ""),
                    "headers": headers,
                    "body": body,
                }
            )
            return app(environ, start_response)

        return wsgi

    def calls(self, target: str) -> list[dict]:
        """The JSON bodies of the SageMaker/ECR API calls named `target` (e.g. CreateTrainingJob)."""
        return [json.loads(r["body"] or b"{}") for r in self.requests if r["target"] == target]

    def reset(self) -> None:
        urllib.request.urlopen(
            urllib.request.Request(f"{self.url}/moto-api/reset", method="POST"), timeout=10
        )
        self.requests.clear()
        FAILURES.clear()

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join(timeout=10)


FAILURES: dict[str, str] = {}  # training job or endpoint name -> FailureReason it comes up with


def _extend_moto() -> None:
    from moto.core.responses import ActionResult
    from moto.core.utils import utcnow
    from moto.sagemaker.models import SageMakerModelBackend
    from moto.sagemaker.responses import SageMakerResponse

    if getattr(SageMakerResponse, "_ncf_extended", False):
        return

    def update_endpoint(self):
        backend = self.sagemaker_backend
        name, config_name = self._get_param("EndpointName"), self._get_param("EndpointConfigName")
        backend.describe_endpoint(name)  # ValidationException when it does not exist
        config = backend.describe_endpoint_config(config_name)
        endpoint = backend.endpoints[name]
        endpoint.endpoint_config_name = config_name
        endpoint.production_variants = endpoint._process_production_variants(config["ProductionVariants"])
        endpoint.data_capture_config = config["DataCaptureConfig"]
        endpoint.last_modified_time = utcnow()
        return ActionResult({"EndpointArn": endpoint.arn})

    create_job, create_endpoint = (
        SageMakerModelBackend.create_training_job,
        SageMakerModelBackend.create_endpoint,
    )

    def create_training_job(self, training_job_name, *args, **kwargs):
        job = create_job(self, training_job_name, *args, **kwargs)
        if training_job_name in FAILURES:
            stored = self.training_jobs[training_job_name]
            stored.training_job_status = stored.secondary_status = "Failed"
            stored.failure_reason = FAILURES[training_job_name]
        return job

    def create_failing_endpoint(self, endpoint_name, *args, **kwargs):
        endpoint = create_endpoint(self, endpoint_name, *args, **kwargs)
        if endpoint_name in FAILURES:
            endpoint.endpoint_status, endpoint.failure_reason = "Failed", FAILURES[endpoint_name]
        return endpoint

    SageMakerResponse.update_endpoint = update_endpoint
    SageMakerModelBackend.create_training_job = create_training_job
    SageMakerModelBackend.create_endpoint = create_failing_endpoint
    SageMakerResponse._ncf_extended = True


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    server = MotoServer()
    yield server
    server.stop()


def aws_env(endpoint_url: str, **extra: str) -> dict[str, str]:
    """A user's environment aimed at `endpoint_url`: dummy credentials, none of the caller's AWS settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SAGEMAKER_", "NCF_"))}
    env |= {
        "AWS_ENDPOINT_URL": endpoint_url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": REGION,
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
        "SAGEMAKER_ROLE_ARN": ROLE,
        "PYTHON": sys.executable,
    }
    return env | extra


class Aws:
    """The test's view of the server: boto3 clients, the scripts' environment, and a script runner."""

    def __init__(self, server: MotoServer) -> None:
        self.server = server
        self.env = aws_env(server.url)
        session = boto3.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
        )
        self.s3 = session.client("s3", endpoint_url=server.url)
        self.ecr = session.client("ecr", endpoint_url=server.url)
        self.sm = session.client("sagemaker", endpoint_url=server.url)

    def run(self, script: str, *args: str, env: dict | None = None, input: str | None = None):
        return run_script(script, *args, env=env or self.env, input=input)

    def put(self, key: str, body: bytes = b"x") -> str:
        self.s3.put_object(Bucket=BUCKET, Key=key, Body=body)
        return f"s3://{BUCKET}/{key}"

    def push_fake_image(self, repository: str, tag: str = "latest") -> str:
        """Register `repository:tag` in moto's ECR, as build_and_push.sh would have."""
        if not self.ecr.describe_repositories()["repositories"] or repository not in {
            r["repositoryName"] for r in self.ecr.describe_repositories()["repositories"]
        }:
            self.ecr.create_repository(repositoryName=repository)
        self.ecr.put_image(repositoryName=repository, imageManifest=MANIFEST, imageTag=tag)
        return f"{REGISTRY}/{repository}:{tag}"


@pytest.fixture
def aws(moto_server: MotoServer) -> Aws:
    moto_server.reset()
    view = Aws(moto_server)
    view.s3.create_bucket(Bucket=BUCKET)
    return view


def run_script(script: str, *args: str, env: dict, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SCRIPTS / f"{script}.sh"), *args],
        env=env,
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )


def ok(proc: subprocess.CompletedProcess) -> list[str]:
    """Assert success; return the result lines (stdout)."""
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc.stdout.splitlines()


def refused(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    """Assert a usage error (exit 2) whose message holds every fragment."""
    assert proc.returncode == 2, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    for fragment in fragments:
        assert fragment in proc.stderr, proc.stderr


# --------------------------------------------------------------------------------------------- contracts


LOG_LINE = "epoch=3; loss=0.2512; train_s=6.1; eval_s=0.9; val_hr=0.79; val_ndcg=0.54; hr=0.67; ndcg=0.39;"


def test_metric_definitions_pick_each_value_from_the_log_line():
    from ncf_launch.common import load_metric_definitions

    values = {}
    for d in load_metric_definitions():
        matches = re.findall(d["Regex"], LOG_LINE)
        assert len(matches) == 1, (d, matches)
        values[d["Name"]] = matches[0]
    assert values == {
        "train:loss": "0.2512",
        "validation:hr": "0.79",
        "validation:ndcg": "0.54",
        "test:hr": "0.67",
        "test:ndcg": "0.39",
        "epoch": "3",
    }


def test_dataset_names_are_ncf_cores():
    from ncf_core import data
    from ncf_launch import upload_data

    assert upload_data.NCF_SUFFIXES == data.NCF_SUFFIXES
    assert upload_data.RAW_FILE_NAMES == data.RAW_FILE_NAMES


def test_seed_payload_is_the_workshops():
    """user 0 with its held-out item 25 and the 99 negatives of ml-1m.test.negative's first line."""
    payload = json.loads((SCRIPTS / "payloads" / "seed.json").read_text())
    assert payload["user"] == [0] * 100
    assert payload["item"][:4] == [25, 1064, 174, 2791] and len(payload["item"]) == 100
    negatives = ROOT.parent / "shared" / "data" / "ml-1m" / "ml-1m.test.negative"
    if negatives.is_file():
        first = negatives.read_text().splitlines()[0].split("\t")
        assert first[0] == "(0,25)"
        assert payload["item"][1:] == [int(x) for x in first[1:]]


def test_every_shell_script_passes_shellcheck():
    if shutil.which("shellcheck") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but shellcheck is not installed (apt-get install shellcheck)")
        pytest.skip("shellcheck not installed (apt-get install shellcheck)")
    scripts = sorted(SCRIPTS.glob("*.sh")) + sorted(p for p in (ROOT / ".ci").glob("*") if _is_shell(p))
    assert len(scripts) >= 6
    proc = subprocess.run(
        ["shellcheck", "--severity=style", *map(str, scripts)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _is_shell(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:40].startswith(
        (b"#!/usr/bin/env bash", b"#!/bin/bash", b"#!/bin/sh")
    )


def test_each_script_shows_help_without_aws():
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | {"PYTHON": sys.executable}
    for script in ("build_and_push", "upload_data", "train", "deploy", "invoke", "cleanup"):
        lines = ok(run_script(script, "--help", env=env))
        assert lines[0].startswith(f"usage: {script}.sh"), lines[:2]


# ----------------------------------------------------------------------------------------- credentials


def test_missing_credentials_and_region_are_reported_before_any_call(aws, tmp_path):
    data = write_ratings_csv(tmp_path / "ratings.csv")
    no_creds = {k: v for k, v in aws.env.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    refused(aws.run("upload_data", str(data), f"s3://{BUCKET}/d", env=no_creds), "no AWS credentials")
    no_region = {k: v for k, v in aws.env.items() if k != "AWS_REGION"}
    refused(aws.run("upload_data", str(data), f"s3://{BUCKET}/d", env=no_region), "no AWS region")
    bad_profile = aws.env | {"AWS_PROFILE": "nope"}
    refused(aws.run("upload_data", str(data), f"s3://{BUCKET}/d", env=bad_profile), "nope")
    assert (
        aws.server.calls("GetCallerIdentity") == [] and aws.s3.list_objects_v2(Bucket=BUCKET)["KeyCount"] == 0
    )


# ---------------------------------------------------------------------------------------------- upload


def test_upload_ncf_prefix_then_rerun_uploads_only_what_changed(aws, tmp_path):
    prefix = write_ncf_files(tmp_path / "ml" / "toy")
    lines = ok(aws.run("upload_data", str(prefix), f"s3://{BUCKET}/ncf/toy"))
    assert lines == [f"s3://{BUCKET}/ncf/toy/"]
    listed = aws.s3.list_objects_v2(Bucket=BUCKET, Prefix="ncf/toy/")["Contents"]
    assert sorted(o["Key"] for o in listed) == [
        "ncf/toy/toy.test.negative",
        "ncf/toy/toy.test.rating",
        "ncf/toy/toy.train.rating",
    ]
    body = aws.s3.get_object(Bucket=BUCKET, Key="ncf/toy/toy.train.rating")["Body"].read()
    assert body == Path(f"{prefix}.train.rating").read_bytes()

    # The directory form finds the same prefix; nothing changed, so nothing is uploaded.
    proc = aws.run("upload_data", str(prefix.parent), f"s3://{BUCKET}/ncf/toy/")
    ok(proc)
    assert proc.stderr.count("unchanged:") == 3 and "uploading" not in proc.stderr
    assert "warning" not in proc.stderr

    # Anything else under the prefix would reach the training job too: said, not deleted.
    aws.put("ncf/toy/old.train.rating")
    proc = aws.run("upload_data", str(prefix), f"s3://{BUCKET}/ncf/toy")
    ok(proc)
    assert f"warning: s3://{BUCKET}/ncf/toy/ also holds ncf/toy/old.train.rating" in proc.stderr
    aws.s3.delete_object(Bucket=BUCKET, Key="ncf/toy/old.train.rating")

    Path(f"{prefix}.test.rating").write_text("0\t1\t5\t200\n")
    proc = aws.run("upload_data", str(prefix), f"s3://{BUCKET}/ncf/toy")
    ok(proc)
    assert proc.stderr.count("unchanged:") == 2 and proc.stderr.count("uploading") == 1
    assert aws.s3.get_object(Bucket=BUCKET, Key="ncf/toy/toy.test.rating")["Body"].read() == b"0\t1\t5\t200\n"


def test_upload_raw_ratings_file_and_refusals(aws, tmp_path):
    ratings = write_ratings_csv(tmp_path / "ratings.csv")
    assert ok(aws.run("upload_data", str(ratings), f"s3://{BUCKET}/raw")) == [f"s3://{BUCKET}/raw/"]
    assert [o["Key"] for o in aws.s3.list_objects_v2(Bucket=BUCKET)["Contents"]] == ["raw/ratings.csv"]

    other = shutil.copy(ratings, tmp_path / "mine.csv")
    refused(aws.run("upload_data", str(other), f"s3://{BUCKET}/raw2"), "rename it to one of")
    refused(aws.run("upload_data", str(tmp_path / "nothing"), f"s3://{BUCKET}/x"), "no such file")
    refused(aws.run("upload_data", str(ratings), f"s3://{BUCKET}"), "its own prefix")
    refused(aws.run("upload_data", str(ratings), "bucket/key"), "s3://bucket/prefix")
    refused(aws.run("upload_data", str(ratings), "s3://no-such-bucket/x"), "'no-such-bucket' does not exist")
    assert [o["Key"] for o in aws.s3.list_objects_v2(Bucket=BUCKET)["Contents"]] == ["raw/ratings.csv"]


# ----------------------------------------------------------------------------------------------- train


def test_train_creates_the_job_sagemaker_would_run(aws, tmp_path):
    """Every setting of a distributed spot job with both channels, read back from the server."""
    train_uri = aws.put("ncf/ml/toy.train.rating")
    test_uri = aws.put("ncf/ml-test/toy.test.rating")
    image = aws.push_fake_image("ncf-train")
    hp = {
        "model": "neumf", "epochs": "20", "lr": "0.001", "batch_size": "256", "factor_num": "32",
        "num_layers": "3", "num_ng": "4", "dropout": "0.0", "top_k": "10", "test_num_ng": "99",
        "seed": "7", "weight_decay": "1e-6", "patience": "3", "device": "cuda",
    }  # fmt: skip
    proc = aws.run(
        "train",
        "--job-name", "ncf-ml-spot",
        "--train", train_uri.rsplit("/", 1)[0] + "/",
        "--test", test_uri.rsplit("/", 1)[0] + "/",
        "--output", f"s3://{BUCKET}/ncf/output/",
        *[a for k, v in hp.items() for a in ("--hp", f"{k}={v}")],
        "--instance-type", "ml.g4dn.xlarge",
        "--instance-count", "2",
        "--volume-gb", "50",
        "--max-run", "3600",
        "--input-mode", "FastFile",
        "--spot",
        "--max-wait", "7200",
        "--wait",
    )  # fmt: skip
    lines = ok(proc)
    assert lines == ["ncf-ml-spot", f"s3://{BUCKET}/ncf/output/ncf-ml-spot/output/model.tar.gz"]
    assert "Completed" in proc.stderr

    job = aws.sm.describe_training_job(TrainingJobName="ncf-ml-spot")
    assert job["AlgorithmSpecification"]["TrainingImage"] == image  # the default: ncf-train:latest in ECR
    assert job["AlgorithmSpecification"]["TrainingInputMode"] == "FastFile"
    assert job["RoleArn"] == ROLE
    assert job["HyperParameters"] == hp  # strings, exactly as given
    assert all(isinstance(v, str) for v in job["HyperParameters"].values())
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"] for c in job["InputDataConfig"]}
    prefix = {"S3DataType": "S3Prefix", "S3DataDistributionType": "FullyReplicated"}
    assert channels == {
        "train": prefix | {"S3Uri": f"s3://{BUCKET}/ncf/ml/"},
        "test": prefix | {"S3Uri": f"s3://{BUCKET}/ncf/ml-test/"},
    }
    assert job["OutputDataConfig"]["S3OutputPath"] == f"s3://{BUCKET}/ncf/output"
    assert job["ResourceConfig"] == {
        "InstanceType": "ml.g4dn.xlarge",
        "InstanceCount": 2,
        "VolumeSizeInGB": 50,
    }
    assert job["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 7200}
    assert job["EnableManagedSpotTraining"] is True
    assert job["CheckpointConfig"]["S3Uri"] == f"s3://{BUCKET}/ncf/output/ncf-ml-spot/checkpoints"
    # moto replaces MetricDefinitions with its own: check what the script sent.
    (request,) = aws.server.calls("CreateTrainingJob")
    expected = json.loads((SCRIPTS / "metric_definitions.json").read_text())["MetricDefinitions"]
    assert request["AlgorithmSpecification"]["MetricDefinitions"] == expected


def test_train_defaults_single_on_demand_instance(aws):
    train_uri = aws.put("ncf/ml/ratings.csv").rsplit("/", 1)[0]
    image = aws.push_fake_image("ncf-train", "abc123")
    lines = ok(aws.run("train", "--train", train_uri, "--output", f"s3://{BUCKET}/out", "--image", image))
    (job_name,) = lines
    assert re.fullmatch(r"ncf-train-\d{8}-\d{6}-\d{3}", job_name)
    job = aws.sm.describe_training_job(TrainingJobName=job_name)
    assert job["AlgorithmSpecification"]["TrainingImage"] == image
    assert job["AlgorithmSpecification"]["TrainingInputMode"] == "File"
    assert [c["ChannelName"] for c in job["InputDataConfig"]] == ["train"]
    assert job["ResourceConfig"] == {"InstanceType": "ml.m5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 30}
    assert job["StoppingCondition"] == {"MaxRuntimeInSeconds": 86400}
    assert job["EnableManagedSpotTraining"] is False
    assert "CheckpointConfig" not in aws.server.calls("CreateTrainingJob")[0]
    assert job["HyperParameters"] == {}


@pytest.mark.parametrize(
    ("args", "env_change", "message"),
    [
        (["--hp", "log_interval=500"], {}, "unknown hyperparameter(s) log_interval"),
        (["--hp", "epochs"], {}, "is not KEY=VALUE"),
        ([], {"SAGEMAKER_ROLE_ARN": ""}, "no IAM role"),
        (["--role-arn", "SageMakerRole"], {}, "is not an IAM role ARN"),
        (["--train", f"s3://{BUCKET}/empty/"], {}, "holds no objects"),
        (["--output", "s3://no-such-bucket/out"], {}, "'no-such-bucket' does not exist"),
        (["--image", f"{REGISTRY}/ncf-train:nope"], {}, "is not in ECR"),
        (["--image", f"{REGISTRY}/ncf-other:latest"], {}, "no ECR repository 'ncf-other'"),
        (["--spot", "--max-wait", "60"], {}, "--max-wait (60) must be at least --max-run"),
        (["--max-wait", "7200"], {}, "--max-wait only applies with --spot"),
        (["--job-name", "ncf_bad_name"], {}, "not a valid SageMaker name"),
        (["--instance-type", "local"], {}, "needs --local"),
        (["--gmf", f"s3://{BUCKET}/ncf/ml/ratings.csv"], {}, "needs both --gmf and --mlp"),
    ],
)
def test_train_refuses_before_creating_anything(aws, args, env_change, message):
    aws.push_fake_image("ncf-train")
    train_uri = aws.put("ncf/ml/ratings.csv").rsplit("/", 1)[0]
    base = ["--train", train_uri, "--output", f"s3://{BUCKET}/out", "--job-name", "ncf-ok"]
    env = {k: v for k, v in (aws.env | env_change).items() if v != ""}
    refused(aws.run("train", *base, *args, env=env), message)
    assert aws.server.calls("CreateTrainingJob") == []


def test_train_passes_pretrained_models_as_gmf_and_mlp_channels(aws):
    train_uri = aws.put("ncf/ml/ratings.csv").rsplit("/", 1)[0]
    gmf = aws.put("ncf/output/gmf-job/output/model.tar.gz")
    mlp = aws.put("ncf/output/mlp-job/output/model.tar.gz")
    aws.push_fake_image("ncf-train")
    args = ["--train", train_uri, "--gmf", gmf, "--mlp", mlp, "--output", f"s3://{BUCKET}/out"]
    (job_name,) = ok(aws.run("train", *args, "--hp", "pretrain_alpha=auto"))
    job = aws.sm.describe_training_job(TrainingJobName=job_name)
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in job["InputDataConfig"]}
    assert channels == {"train": train_uri, "gmf": gmf, "mlp": mlp}
    assert job["HyperParameters"] == {"pretrain_alpha": "auto"}


def test_train_refuses_an_existing_job_name(aws):
    aws.push_fake_image("ncf-train")
    train_uri = aws.put("ncf/ml/ratings.csv").rsplit("/", 1)[0]
    args = ["--job-name", "ncf-once", "--train", train_uri, "--output", f"s3://{BUCKET}/out"]
    ok(aws.run("train", *args))
    refused(aws.run("train", *args), "a training job named ncf-once already exists (Completed)")
    assert len(aws.server.calls("CreateTrainingJob")) == 1


def test_train_wait_reports_the_failure_reason(aws):
    aws.push_fake_image("ncf-train")
    train_uri = aws.put("ncf/ml/ratings.csv").rsplit("/", 1)[0]
    FAILURES["ncf-doomed"] = "AlgorithmError: hyperparameter lr='abc' is not a number"
    proc = aws.run(
        "train", "--job-name", "ncf-doomed", "--train", train_uri, "--output", f"s3://{BUCKET}/o", "--wait"
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.splitlines() == ["ncf-doomed"]
    assert (
        "training job ncf-doomed failed: AlgorithmError: hyperparameter lr='abc' is not a number"
        in proc.stderr
    )


# ---------------------------------------------------------------------------------------------- deploy


def endpoint_view(aws: Aws, name: str) -> tuple[dict, dict, dict]:
    """(endpoint, its config, {variant: model})"""
    endpoint = aws.sm.describe_endpoint(EndpointName=name)
    config = aws.sm.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
    models = {
        v["VariantName"]: aws.sm.describe_model(ModelName=v["ModelName"])
        for v in config["ProductionVariants"]
    }
    return endpoint, config, models


def test_deploy_single_model_with_data_capture(aws):
    image = aws.push_fake_image("ncf-serve", "rev1")
    model_data = aws.put("ncf/output/job/output/model.tar.gz")
    proc = aws.run(
        "deploy",
        "--endpoint", "ncf",
        "--model-data", model_data,
        "--image", image,
        "--instance-type", "ml.c5.xlarge",
        "--instance-count", "2",
        "--env", "SAGEMAKER_MODEL_SERVER_WORKERS=2",
        "--data-capture", f"s3://{BUCKET}/capture",
        "--capture-percent", "20",
    )  # fmt: skip
    assert ok(proc) == ["ncf"]
    endpoint, config, models = endpoint_view(aws, "ncf")
    assert endpoint["EndpointStatus"] == "InService"
    assert re.fullmatch(r"ncf-\d{8}-\d{6}-\d{3}", config["EndpointConfigName"])
    (variant,) = config["ProductionVariants"]
    assert variant["VariantName"] == "primary"
    assert re.fullmatch(r"ncf-primary-\d{8}-\d{6}-\d{3}", variant["ModelName"])
    assert (variant["InstanceType"], variant["InitialInstanceCount"], variant["InitialVariantWeight"]) == (
        "ml.c5.xlarge", 2, 1.0,
    )  # fmt: skip
    model = models["primary"]
    assert model["ExecutionRoleArn"] == ROLE
    assert model["PrimaryContainer"] == {
        "Image": image,
        "ModelDataUrl": model_data,
        "Environment": {"SAGEMAKER_MODEL_SERVER_WORKERS": "2"},
    }
    assert config["DataCaptureConfig"] == {
        "EnableCapture": True,
        "InitialSamplingPercentage": 20,
        "DestinationS3Uri": f"s3://{BUCKET}/capture",
        "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
        "CaptureContentTypeHeader": {"JsonContentTypes": ["application/json"]},
    }


def test_deploy_training_jobs_model_with_a_canary(aws):
    image = aws.push_fake_image("ncf-serve")  # the default image: ncf-serve:latest
    aws.push_fake_image("ncf-train")
    train_uri = aws.put("ncf/ml/ratings.csv").rsplit("/", 1)[0]
    ok(
        aws.run(
            "train", "--job-name", "ncf-v1", "--train", train_uri, "--output", f"s3://{BUCKET}/out", "--wait"
        )
    )
    artifact = aws.put("out/ncf-v1/output/model.tar.gz")
    canary_data = aws.put("models/v2/model.tar.gz")
    proc = aws.run(
        "deploy", "--endpoint", "ncf-ab", "--training-job", "ncf-v1",
        "--canary-model-data", canary_data, "--canary-weight", "0.1",
    )  # fmt: skip
    assert ok(proc) == ["ncf-ab"]
    _, config, models = endpoint_view(aws, "ncf-ab")
    weights = {v["VariantName"]: v["InitialVariantWeight"] for v in config["ProductionVariants"]}
    assert weights == {"primary": 0.9, "canary": 0.1}
    assert models["primary"]["PrimaryContainer"]["ModelDataUrl"] == artifact
    assert models["canary"]["PrimaryContainer"]["ModelDataUrl"] == canary_data
    assert {m["PrimaryContainer"]["Image"] for m in models.values()} == {image}
    assert "DataCaptureConfig" not in aws.server.calls("CreateEndpointConfig")[0]


def test_deploy_multi_model_endpoint(aws):
    image = aws.push_fake_image("ncf-serve")
    aws.put("ncf/models/ml-1m.tar.gz")
    assert ok(
        aws.run(
            "deploy", "--endpoint", "ncf-mme", "--multi-model", "--model-data", f"s3://{BUCKET}/ncf/models"
        )
    ) == ["ncf-mme"]
    _, _, models = endpoint_view(aws, "ncf-mme")
    assert models["primary"]["PrimaryContainer"] == {
        "Image": image,
        "ModelDataUrl": f"s3://{BUCKET}/ncf/models/",
        "Mode": "MultiModel",
        "Environment": {"SAGEMAKER_MULTI_MODEL": "true"},
    }


def test_deploy_again_updates_the_endpoint_in_place(aws):
    aws.push_fake_image("ncf-serve")
    first, second = aws.put("m/1/model.tar.gz"), aws.put("m/2/model.tar.gz")
    ok(aws.run("deploy", "--endpoint", "ncf", "--model-data", first))
    config_1 = aws.sm.describe_endpoint(EndpointName="ncf")["EndpointConfigName"]
    proc = aws.run("deploy", "--endpoint", "ncf", "--model-data", second)
    ok(proc)
    assert "UpdateEndpoint ncf (InService)" in proc.stderr
    assert len(aws.server.calls("CreateEndpoint")) == 1
    (update,) = aws.server.calls("UpdateEndpoint")
    endpoint, _, models = endpoint_view(aws, "ncf")
    assert update["EndpointConfigName"] == endpoint["EndpointConfigName"] != config_1
    assert models["primary"]["PrimaryContainer"]["ModelDataUrl"] == second
    # the previous config stays (rollback) until cleanup.sh
    assert aws.sm.describe_endpoint_config(EndpointConfigName=config_1)["ProductionVariants"]


def test_deploy_reports_a_failed_endpoint(aws):
    aws.push_fake_image("ncf-serve")
    FAILURES["ncf-broken"] = (
        "The primary container for production variant primary did not pass the ping health check."
    )
    proc = aws.run("deploy", "--endpoint", "ncf-broken", "--model-data", aws.put("m/model.tar.gz"))
    assert proc.returncode == 1, proc.stderr
    assert "endpoint ncf-broken failed: The primary container" in proc.stderr
    # re-running on a Failed endpoint is refused with what to do
    refused(
        aws.run("deploy", "--endpoint", "ncf-broken", "--model-data", aws.put("m/model.tar.gz")), "cleanup.sh"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--canary-model-data", f"s3://{BUCKET}/m/model.tar.gz"], "needs both"),
        (
            ["--canary-model-data", f"s3://{BUCKET}/m/model.tar.gz", "--canary-weight", "1"],
            "strictly between 0",
        ),
        (["--endpoint", "x" * 40], "at most 35 characters"),
        (["--model-data", f"s3://{BUCKET}/m/missing.tar.gz"], "does not exist"),
        (["--image", f"{REGISTRY}/ncf-serve:nope"], "is not in ECR"),
        (["--data-capture", "s3://no-such-bucket/c"], "'no-such-bucket' does not exist"),
        (
            ["--capture-percent", "0", "--data-capture", f"s3://{BUCKET}/c"],
            "--capture-percent must lie in 1..100",
        ),
        (["--env", "NOEQUALS"], "is not KEY=VALUE"),
    ],
)
def test_deploy_refuses_before_creating_anything(aws, args, message):
    aws.push_fake_image("ncf-serve")
    model_data = aws.put("m/model.tar.gz")
    base = ["--endpoint", "ncf", "--model-data", model_data]
    refused(aws.run("deploy", *base, *args), message)
    assert aws.server.calls("CreateModel") == []


def test_deploy_refuses_unknown_or_unfinished_training_job(aws):
    aws.push_fake_image("ncf-serve")
    refused(aws.run("deploy", "--endpoint", "ncf", "--training-job", "nope"), "no training job named nope")
    FAILURES["ncf-failed"] = "OOM"
    aws.push_fake_image("ncf-train")
    train_uri = aws.put("ncf/ml/ratings.csv").rsplit("/", 1)[0]
    aws.run("train", "--job-name", "ncf-failed", "--train", train_uri, "--output", f"s3://{BUCKET}/o")
    refused(
        aws.run("deploy", "--endpoint", "ncf", "--training-job", "ncf-failed"), "is Failed, not Completed"
    )
    assert aws.server.calls("CreateModel") == []


# ---------------------------------------------------------------------------------------------- invoke


def set_endpoint_results(aws: Aws, *bodies: str) -> None:
    results = [
        {"Body": b, "ContentType": "application/json", "InvokedProductionVariant": "primary"} for b in bodies
    ]
    request = urllib.request.Request(
        f"{aws.server.url}/moto-api/static/sagemaker/endpoint-results",
        data=json.dumps({"account_id": ACCOUNT, "region": REGION, "results": results}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    urllib.request.urlopen(request, timeout=10)


def test_invoke_endpoint_sends_the_seed_payload_and_prints_the_answer(aws, tmp_path):
    set_endpoint_results(aws, "[128, 273, 174, 25, 617, 175, 864, 58, 464, 1423]", '{"scores": [0.5]}')
    proc = aws.run("invoke", "--endpoint", "ncf")
    assert ok(proc) == ["[128, 273, 174, 25, 617, 175, 864, 58, 464, 1423]"]
    assert "(variant primary)" in proc.stderr
    (sent,) = [r for r in aws.server.requests if r["path"] == "/endpoints/ncf/invocations"]
    assert sent["body"] == (SCRIPTS / "payloads" / "seed.json").read_bytes()
    assert sent["headers"]["content-type"] == "application/json"
    assert sent["headers"]["accept"] == "application/json"

    payload = tmp_path / "pairs.json"
    payload.write_text('{"user": [1], "item": [2]}')
    args = [
        "--endpoint",
        "ncf-mme",
        "--payload",
        str(payload),
        "--target-model",
        "ml-1m.tar.gz",
        "--variant",
        "canary",
    ]
    assert ok(aws.run("invoke", *args)) == ['{"scores": [0.5]}']
    sent = aws.server.requests[-1]
    assert sent["path"] == "/endpoints/ncf-mme/invocations" and sent["body"] == payload.read_bytes()
    assert sent["headers"]["x-amzn-sagemaker-target-model"] == "ml-1m.tar.gz"
    assert sent["headers"]["x-amzn-sagemaker-target-variant"] == "canary"

    refused(aws.run("invoke", "--endpoint", "ncf", "--payload", str(tmp_path / "missing.json")), "not found")


class _Recorder(BaseHTTPRequestHandler):
    """Answers POSTs with a fixed JSON body (or a 400 for /models/bad/invoke), remembering each request."""

    seen: ClassVar[list[tuple[str, dict, bytes]]] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).seen.append((self.path, dict(self.headers), body))
        status, answer = (
            (400, b'{"error": "item 99999 is unknown"}') if "bad" in self.path else (200, b"[25, 1064]")
        )
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


def test_invoke_local_posts_to_the_container_contract_paths():
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | {"PYTHON": sys.executable}
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    _Recorder.seen = []
    try:
        proc = run_script("invoke", "--local", url, env=env)
        assert ok(proc) == ["[25, 1064]"]
        assert "curl -sS -X POST -H 'Content-Type: application/json'" in proc.stderr
        path, headers, body = _Recorder.seen[-1]
        assert path == "/invocations" and headers["Content-Type"] == "application/json"
        assert body == (SCRIPTS / "payloads" / "seed.json").read_bytes()

        ok(run_script("invoke", "--local", url + "/", "--target-model", "ml-1m", env=env))
        assert _Recorder.seen[-1][0] == "/models/ml-1m/invoke"

        proc = run_script("invoke", "--local", url, "--target-model", "bad", env=env)
        assert proc.returncode == 1
        assert proc.stdout.strip() == '{"error": "item 99999 is unknown"}'
        assert "answered 400" in proc.stderr
    finally:
        server.shutdown()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    proc = run_script("invoke", "--local", f"http://127.0.0.1:{closed}", env=env)
    assert proc.returncode == 1 and "cannot reach" in proc.stderr


# --------------------------------------------------------------------------------------------- cleanup


def test_cleanup_asks_then_deletes_only_this_endpoints_resources(aws):
    aws.push_fake_image("ncf-serve")
    model_data = aws.put("m/model.tar.gz")
    ok(aws.run("deploy", "--endpoint", "ncf", "--model-data", model_data))
    ok(
        aws.run(
            "deploy",
            "--endpoint",
            "ncf",
            "--model-data",
            model_data,
            "--canary-model-data",
            model_data,
            "--canary-weight",
            "0.5",
        )
    )
    ok(aws.run("deploy", "--endpoint", "ncf-other", "--model-data", model_data))

    def inventory() -> tuple[list, list, list]:
        return (
            sorted(e["EndpointName"] for e in aws.sm.list_endpoints()["Endpoints"]),
            sorted(c["EndpointConfigName"] for c in aws.sm.list_endpoint_configs()["EndpointConfigs"]),
            sorted(m["ModelName"] for m in aws.sm.list_models()["Models"]),
        )

    before = inventory()
    assert len(before[1]) == 3 and len(before[2]) == 4
    for answer in ("n\n", "", "yes please\n"):
        proc = aws.run("cleanup", "--endpoint", "ncf", input=answer)
        refused(proc, "nothing deleted")
        assert "endpoint        ncf (InService)" in proc.stderr
        assert inventory() == before

    proc = aws.run("cleanup", "--endpoint", "ncf", input="y\n")
    deleted = ok(proc)
    endpoints, configs, models = inventory()
    assert endpoints == ["ncf-other"]
    assert [c for c in configs if not c.startswith("ncf-other-")] == []
    assert [m for m in models if not m.startswith("ncf-other-")] == []
    assert len(configs) == 1 and len(models) == 1
    assert sorted(deleted) == sorted(
        ["ncf", *(set(before[1]) - set(configs)), *(set(before[2]) - set(models))]
    )

    proc = aws.run("cleanup", "--endpoint", "ncf", "--yes")
    assert ok(proc) == [] and "nothing to delete" in proc.stderr
    assert ok(aws.run("cleanup", "--endpoint", "ncf-other", "--yes"))[0] == "ncf-other"
    assert inventory() == ([], [], [])


# ----------------------------------------------------------------------------------- README walkthrough

# The commands of the README's "Run it on SageMaker" section, verbatim (run from the repository root, with
# BUCKET, AWS_REGION, SAGEMAKER_ROLE_ARN exported and the images pushed by build_and_push.sh). Once README.md
# has that section, the test below also checks that it still shows every one of them.
README_SECTION = "## Run it on SageMaker"
README_COMMANDS = [
    'scripts/upload_data.sh data/ml-1m "s3://$BUCKET/ncf/ml-1m"',
    'scripts/train.sh --job-name ncf-ml1m --train "s3://$BUCKET/ncf/ml-1m/" '
    '--output "s3://$BUCKET/ncf/output" --hp model=neumf --hp epochs=20 --wait',
    "scripts/deploy.sh --endpoint ncf --training-job ncf-ml1m",
    "scripts/invoke.sh --endpoint ncf",
    "scripts/cleanup.sh --endpoint ncf --yes",
]


def test_readme_walkthrough_from_data_to_cleanup(aws, tmp_path):
    """README_COMMANDS in order, with AWS_ENDPOINT_URL pointing at moto; and the README shows them."""
    aws.push_fake_image("ncf-train")
    aws.push_fake_image("ncf-serve")
    # the NCF paper's ML-1M files, as the seed workshop used them (here: synthetic data in that format)
    write_ncf_files(tmp_path / "data" / "ml-1m" / "ml-1m")
    (tmp_path / "scripts").symlink_to(SCRIPTS)  # a checkout with data/ beside scripts/
    env = aws.env | {"BUCKET": BUCKET}
    set_endpoint_results(aws, "[25, 1064, 174, 2791, 3373, 269, 2678, 1902, 3641, 1216]")

    def sh(command: str) -> list[str]:
        proc = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True
        )
        return ok(proc)

    upload, train, deploy, invoke, cleanup = README_COMMANDS
    assert sh(upload) == [f"s3://{BUCKET}/ncf/ml-1m/"]
    assert sorted(o["Key"] for o in aws.s3.list_objects_v2(Bucket=BUCKET)["Contents"]) == [
        f"ncf/ml-1m/ml-1m.{suffix}" for suffix in ("test.negative", "test.rating", "train.rating")
    ]
    assert sh(train) == ["ncf-ml1m", f"s3://{BUCKET}/ncf/output/ncf-ml1m/output/model.tar.gz"]
    aws.put("ncf/output/ncf-ml1m/output/model.tar.gz")  # what the real job writes when it ends
    assert sh(deploy) == ["ncf"]
    assert len(json.loads(sh(invoke)[0])) == 10
    assert len(sh(cleanup)) == 3  # the endpoint, its config, its model
    assert aws.sm.list_endpoints()["Endpoints"] == []
    assert aws.sm.list_models()["Models"] == []

    readme = ROOT / "README.md"
    if readme.is_file() and README_SECTION in readme.read_text():
        text = re.sub(r"\\\n\s*", "", readme.read_text())  # join continued lines
        missing = [c for c in README_COMMANDS if c not in text]
        assert not missing, f"README.md no longer shows these tested commands: {missing}"


# The README's pre-training jobs, verbatim.
README_PRETRAIN_COMMANDS = [
    'scripts/train.sh --job-name ncf-gmf --train "s3://$BUCKET/ncf/ml-1m/" '
    '--output "s3://$BUCKET/ncf/output" --hp model=gmf --hp epochs=20 --hp num_neg=8 --wait',
    'scripts/train.sh --job-name ncf-mlp --train "s3://$BUCKET/ncf/ml-1m/" '
    '--output "s3://$BUCKET/ncf/output" --hp model=mlp --hp epochs=12 --hp num_neg=8 --hp lr=0.006 --wait',
    'scripts/train.sh --job-name ncf-neumf-pretrained --train "s3://$BUCKET/ncf/ml-1m/" '
    '--output "s3://$BUCKET/ncf/output" --gmf "s3://$BUCKET/ncf/output/ncf-gmf/output/model.tar.gz" '
    '--mlp "s3://$BUCKET/ncf/output/ncf-mlp/output/model.tar.gz" --hp epochs=2 --hp lr=0.00001 '
    "--hp lr_decay=1.0 --wait",
]


def test_readme_pretraining_jobs(aws, tmp_path):
    aws.push_fake_image("ncf-train")
    aws.put("ncf/ml-1m/ml-1m.train.rating")
    env = aws.env | {"BUCKET": BUCKET}
    (tmp_path / "scripts").symlink_to(SCRIPTS)
    for command in README_PRETRAIN_COMMANDS:
        proc = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True
        )
        _job, model = ok(proc)
        aws.put(model.removeprefix(f"s3://{BUCKET}/"))  # what the real job writes when it ends
    desc = aws.sm.describe_training_job(TrainingJobName="ncf-neumf-pretrained")
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in desc["InputDataConfig"]}
    assert channels["gmf"] == f"s3://{BUCKET}/ncf/output/ncf-gmf/output/model.tar.gz"
    assert channels["mlp"] == f"s3://{BUCKET}/ncf/output/ncf-mlp/output/model.tar.gz"
    text = re.sub(r"\\\n\s*", "", (ROOT / "README.md").read_text())
    missing = [c for c in README_PRETRAIN_COMMANDS if c not in text]
    assert not missing, f"README.md no longer shows these tested commands: {missing}"


# ----------------------------------------------------------------------------- push to a local registry


@pytest.fixture
def local_registry(tmp_path) -> Iterator[str]:
    """Debian's docker-registry on 127.0.0.1:<ephemeral>; yields HOST:PORT."""
    from tests.docker_harness import free_port

    binary = shutil.which("docker-registry")
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but docker-registry is not installed (apt-get install docker-registry)")
        pytest.skip("docker-registry not installed (apt-get install docker-registry)")
    port = free_port()
    config = tmp_path / "registry.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
        f"    rootdirectory: {tmp_path / 'registry'}\nhttp:\n  addr: 127.0.0.1:{port}\n"
    )
    proc = subprocess.Popen([binary, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"docker-registry did not start: {proc.stderr.read().decode()}"
                    ) from None
                time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.docker
def test_build_and_push_to_a_registry(aws, local_registry, tmp_path):
    """The same code path as for ECR: repositories created, token login, revision + latest tags pushed."""
    from tests.docker_harness import PYTHON_IMAGE, remove_image, require_image

    require_image(PYTHON_IMAGE)
    context = tmp_path / "context"
    context.mkdir()
    (context / "Dockerfile").write_text("ARG BASE_IMAGE=missing\nFROM ${BASE_IMAGE}\nCOPY hello /hello\n")
    (context / "hello").write_text("hello from a throwaway image\n")
    env = aws.env | {"DOCKER_CONFIG": str(tmp_path / "docker-config"), "NCF_REGISTRY": local_registry}
    name = f"ncf-push-test-{os.getpid()}"
    args = [
        "--image",
        f"{name}={context / 'Dockerfile'}",
        "--context",
        str(context),
        "--base-image",
        PYTHON_IMAGE,
    ]
    try:
        proc = aws.run("build_and_push", *args, "--tag", "t1", env=env)
        assert ok(proc) == [f"{local_registry}/{name}:t1"]
        # ECR side: the repository was created in the account and region
        repos = aws.ecr.describe_repositories()["repositories"]
        assert [r["repositoryName"] for r in repos] == [name]
        # docker logged in to the registry with the ECR token (user AWS, moto's password)
        auth = json.loads((tmp_path / "docker-config" / "config.json").read_text())["auths"][local_registry][
            "auth"
        ]
        assert base64.b64decode(auth).decode() == f"AWS:{ACCOUNT}-auth-token"
        assert "--password-stdin" in proc.stderr and f"{ACCOUNT}-auth-token" not in proc.stderr
        # the registry holds both tags, and they are the same image
        tags = json.load(urllib.request.urlopen(f"http://{local_registry}/v2/{name}/tags/list", timeout=10))
        assert sorted(tags["tags"]) == ["latest", "t1"]
        digests = set()
        for tag in ("t1", "latest"):
            request = urllib.request.Request(
                f"http://{local_registry}/v2/{name}/manifests/{tag}",
                headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
                method="HEAD",
            )
            with urllib.request.urlopen(request, timeout=10) as resp:
                digests.add(resp.headers["Docker-Content-Digest"])
        assert len(digests) == 1
        # re-running is safe: the repository exists, the tags are pushed again
        proc = aws.run("build_and_push", *args, "--tag", "t1", env=env)
        ok(proc)
        assert f"ECR repository {name} exists" in proc.stderr
    finally:
        for tag in ("local", "t1"):
            remove_image(f"{name}:{tag}")
        for tag in ("t1", "latest"):
            remove_image(f"{local_registry}/{name}:{tag}")


# ------------------------------------------------------------------------------- train.sh --local (Docker)

# A stand-in training image: its `train` records what it finds under /opt/ml, the way our image reads it,
# and fails like our image does (output/failure, exit 1) when epochs is "-1".
FAKE_TRAIN = r"""#!/usr/bin/env python3
import json, os, pathlib, socket, sys
ml = pathlib.Path("/opt/ml")
config = {n: json.loads((ml / "input/config" / f"{n}.json").read_text())
          for n in ("hyperparameters", "resourceconfig", "inputdataconfig")}
if config["hyperparameters"].get("epochs") == "-1":
    (ml / "output/failure").write_text("hyperparameter epochs='-1' must be at least 1")
    sys.exit(1)
channels = {c: sorted(p.name for p in (ml / "input/data" / c).iterdir()) for c in config["inputdataconfig"]}
try:
    (ml / "input/data/train/new").write_text("x")
    writable = True
except OSError:
    writable = False
print("epoch=1; loss=0.5; train_s=0.1; eval_s=0.1; val_hr=0.5; val_ndcg=0.3; hr=0.4; ndcg=0.2;", flush=True)
(ml / "checkpoints/checkpoint.pt").write_text("ckpt")
(ml / "output/data/metrics.json").write_text("{}")
(ml / "model/seen.json").write_text(json.dumps({
    "config": config, "channels": channels, "channel_writable": writable, "host": socket.gethostname(),
    "job": os.environ.get("TRAINING_JOB_NAME"), "argv": sys.argv[1:],
}))
"""


@pytest.fixture(scope="module")
def fake_train_image(tmp_path_factory) -> Iterator[str]:
    from tests.docker_harness import PYTHON_IMAGE, build_image, remove_image, require_image

    require_image(PYTHON_IMAGE)
    context = tmp_path_factory.mktemp("fake-train")
    (context / "train").write_text(FAKE_TRAIN)
    (context / "Dockerfile").write_text(
        f"FROM {PYTHON_IMAGE}\nCOPY train /usr/local/bin/train\n"
        'RUN chmod +x /usr/local/bin/train\nCMD ["train"]\n'
    )
    tag = build_image(context / "Dockerfile", f"ncf-fake-train:{os.getpid()}", context)
    yield tag
    remove_image(tag)


@pytest.mark.docker
def test_train_local_builds_sagemakers_tree_and_runs_the_image(aws, fake_train_image, tmp_path):
    """Channels from S3 (downloaded) and from a local NCF prefix, read-only; config files; model packed."""
    aws.put("ncf/ml/ratings.csv", b"user_id,item_id\n1,2\n")
    prefix = write_ncf_files(tmp_path / "data" / "toy")
    tree = tmp_path / "tree"
    proc = aws.run(
        "train", "--local", "--job-name", "ncf-local-1", "--image", fake_train_image,
        "--local-dir", str(tree), "--train", f"s3://{BUCKET}/ncf/ml/", "--test", str(prefix),
        "--hp", "epochs=2", "--hp", "model=gmf",
    )  # fmt: skip
    assert ok(proc) == ["ncf-local-1", str(tree / "model")]
    assert "epoch=1; loss=0.5;" in proc.stderr  # the container's log, shown to the user
    seen = json.loads((tree / "model" / "seen.json").read_text())
    assert seen["config"]["hyperparameters"] == {"epochs": "2", "model": "gmf"}
    assert seen["config"]["resourceconfig"]["current_host"] == "algo-1" == seen["host"]
    assert seen["config"]["resourceconfig"]["hosts"] == ["algo-1"]
    assert set(seen["config"]["inputdataconfig"]) == {"train", "test"}
    assert seen["config"]["inputdataconfig"]["train"]["TrainingInputMode"] == "File"
    assert seen["channels"] == {
        "train": ["ratings.csv"],
        "test": ["toy.test.negative", "toy.test.rating", "toy.train.rating"],
    }
    assert seen["channel_writable"] is False
    assert seen["job"] == "ncf-local-1" and seen["argv"] == []
    assert (tree / "checkpoints" / "checkpoint.pt").read_text() == "ckpt"
    assert (tree / "output" / "data" / "metrics.json").is_file()
    with tarfile.open(tree / "output" / "model.tar.gz") as tar:
        assert tar.getnames() == ["seen.json"]

    # the same tree again is refused; a failing job shows the image's output/failure and exits 1
    refused(
        aws.run(
            "train", "--local", "--image", fake_train_image, "--local-dir", str(tree), "--train", str(prefix)
        ),
        "is not empty",
    )
    proc = aws.run(
        "train", "--local", "--image", fake_train_image, "--local-dir", str(tmp_path / "t2"),
        "--train", str(prefix), "--hp", "epochs=-1",
    )  # fmt: skip
    assert proc.returncode == 1
    assert "exited 1: hyperparameter epochs='-1' must be at least 1" in proc.stderr
    refused(
        aws.run("train", "--local", "--image", "ncf-no-such-image:x", "--train", str(prefix)),
        "no local image",
    )


# ------------------------------------------------------------------------------------------ wait loops


class _Describer:
    """Stands in for a SageMaker client whose describe call walks through a list of answers."""

    def __init__(self, answers: list[dict]) -> None:
        self.answers = answers
        self.calls = 0

    def describe(self, **_: str) -> dict:
        self.calls += 1
        return self.answers[min(self.calls, len(self.answers)) - 1]

    describe_training_job = describe_endpoint = describe


def test_wait_for_job_follows_every_status_change(capsys):
    from ncf_launch.common import Failure
    from ncf_launch.train import wait_for_job

    starting = {"TrainingJobStatus": "InProgress", "SecondaryStatus": "Starting"}
    training = {"TrainingJobStatus": "InProgress", "SecondaryStatus": "Training"}
    done = {"TrainingJobStatus": "Completed", "SecondaryStatus": "Completed", "ModelArtifacts": {}}
    sm = _Describer([starting, starting, training, training, done])
    assert wait_for_job(sm, "j", poll=0) is done
    assert sm.calls == 5
    err = capsys.readouterr().err
    assert [line.split("] ")[1] for line in err.splitlines()] == [
        "j: InProgress / Starting",
        "j: InProgress / Training",
        "j: Completed / Completed",
    ]
    stopped = {"TrainingJobStatus": "Stopped", "SecondaryStatus": "MaxRuntimeExceeded"}
    with pytest.raises(Failure, match="training job j stopped: no FailureReason given"):
        wait_for_job(_Describer([training, stopped]), "j", poll=0)


def test_wait_for_endpoint_until_in_service_failed_or_timeout():
    from ncf_launch.common import Failure
    from ncf_launch.deploy import wait_for_endpoint

    creating, updating = {"EndpointStatus": "Creating"}, {"EndpointStatus": "Updating"}
    sm = _Describer([creating, updating, {"EndpointStatus": "InService"}])
    wait_for_endpoint(sm, "e", timeout=60, poll=0)
    assert sm.calls == 3
    failed = {"EndpointStatus": "Failed", "FailureReason": "ping health check failed"}
    with pytest.raises(Failure, match="endpoint e failed: ping health check failed"):
        wait_for_endpoint(_Describer([creating, failed]), "e", timeout=60, poll=0)
    with pytest.raises(Failure, match="still Creating after 0 s"):
        wait_for_endpoint(_Describer([creating]), "e", timeout=0, poll=0)
