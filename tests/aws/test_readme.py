"""README.md's path, every command block in order, as written, for both data sources (raw ratings and NCF
files), against the moto server (tests/support/moto.py): data → train and serve here → the stack
(scripts/infra.sh) → upload, train, deploy, invoke → pipeline, approval, deploy → operate → clean up.

The blocks run in one shell state from a fresh directory (tests/support/readme.py). What the test adds between
them is only what moto or this machine cannot do, each said where it happens:
- no internet: data/ml-100k is laid out as `ncf_core download` leaves it (MovieLens from NCF_DATA_DIR, or a
  synthetic u.data without it), so the download block finds it complete;
- moto's CloudFormation skips AWS::SageMaker::ModelPackageGroup: the group is created as the stack would;
- the Docker blocks (image builds, docker-compose) are tests/container/test_readme_docker.py's: here the
  images are registered in moto's ECR as build_and_push.sh would have pushed them;
- moto runs no job or pipeline: the training job's model.tar.gz, the Baseline step's files (the real
  `monitor baseline` of the model the local block trained) and the version the Register step makes are
  written as they would be, and the endpoint's answers are canned; moto's scheduler never fires, so
  `monitor.sh status` has no runs yet (tests/aws/test_monitor_schedule.py fires one).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from tests.support import ROOT, free_port, shared_data_dir
from tests.support import readme as R
from tests.support.moto import BUCKET, REGISTRY, SCRIPTS, ok, set_endpoint_results
from tests.support.synthetic import planted_interactions

ANSWER = json.dumps([{"user": 1, "items": [50, 181, 100, 258, 1, 286, 288, 121, 300, 174]}])


def seed_download(data_dir) -> None:
    """data/ml-100k as `python -m ncf_core download ml-100k --to data/` leaves it."""
    target = data_dir / "ml-100k"
    target.mkdir(parents=True)
    real = shared_data_dir() / "ml-100k" / "u.data"
    if real.is_file():
        shutil.copy(real, target / "u.data")
    else:  # ML-100K's format (tab-separated user, item, rating, time; ids from 1) on the planted data
        users, items, _ = planted_interactions(seed=0)
        pairs = enumerate(zip(users, items, strict=True))
        lines = [f"{u + 1}\t{i + 1}\t5\t{880000000 + n}" for n, (u, i) in pairs]
        (target / "u.data").write_text("\n".join(lines) + "\n")
    (target / ".ncf-download.json").write_text(json.dumps({"name": "ml-100k", "seeded_by": __name__}))


def run_baseline(model_dir, output) -> list:
    """The pipeline's Baseline step, here: the serving image's `monitor baseline` on the model."""
    proc = subprocess.run(
        ["monitor", "baseline", "--model", str(model_dir), "--output", str(output), "--users", "200"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    return [output / "statistics.json", output / "constraints.json"]


@pytest.mark.parametrize("data", ["raw", "ncf"])
def test_readme_path_in_order(aws, tmp_path, data):
    path = R.path(data)
    assert [b.id for b in path] == [
        "data", "local", "compose", "infra", "build", "train", "deploy", "pipeline", "approve", "operate",
        "cleanup",
    ]  # fmt: skip
    env = {k: v for k, v in aws.env.items() if k not in ("SAGEMAKER_ROLE_ARN", "BUCKET")}
    shell = R.Shell(tmp_path / "clone", env | {"NCF_SERVE_PORT": str(free_port())})
    seed_download(shell.work / "data")
    set_endpoint_results(aws, *[ANSWER] * 40)  # invoke.sh twice, smoke_test.sh's warm-up and 20 requests
    scheduler, cloudwatch, scaling = (
        aws.session.client(name, endpoint_url=aws.server.url)
        for name in ("scheduler", "cloudwatch", "application-autoscaling")
    )

    for block in path:
        if block.docker:
            if block.id == "build":  # what build_and_push.sh pushes (its own test builds them)
                aws.push_fake_image("ncf-train")
                aws.push_fake_image("ncf-serve")
            continue
        out = shell.run(block)

        if block.id == "data":
            assert shell.var("DATA") == {"raw": "data/ml-100k", "ncf": "data/ml-100k-ncf"}[data]
        elif block.id == "local":  # a real model, served by the real `serve`, answering both users
            users = json.loads(out.splitlines()[-1])  # curl's answer, after training's summary
            assert [len(r["items"]) for r in users["recommendations"]] == [5, 5]
        elif block.id == "infra":
            bucket, group = shell.var("BUCKET"), shell.var("MODEL_PACKAGE_GROUP")
            assert shell.var("SAGEMAKER_ROLE_ARN").endswith(":role/ncf-sagemaker-us-east-1")
            aws.s3.head_bucket(Bucket=bucket)
            aws.sm.create_model_package_group(ModelPackageGroupName=group)  # moto's CloudFormation skips it
        elif block.id == "train":
            job = shell.var("JOB")
            desc = aws.sm.describe_training_job(TrainingJobName=job)
            assert desc["HyperParameters"] == {"epochs": "5", "batch_size": "2048"}
            listed = aws.s3.list_objects_v2(Bucket=bucket, Prefix="ncf/data/")["Contents"]
            names = sorted(o["Key"].rsplit("/", 1)[1] for o in listed)
            expected = (
                ["u.data"]
                if data == "raw"
                else [f"ml-100k.{s}" for s in ("test.negative", "test.rating", "train.rating")]
            )
            assert names == expected
            # what the job writes when it ends
            aws.s3.put_object(Bucket=bucket, Key=f"ncf/output/{job}/output/model.tar.gz", Body=b"x")
        elif block.id == "deploy":
            assert len(json.loads(out.splitlines()[-1])[0]["items"]) == 10
        elif block.id == "pipeline":
            definition = json.loads((shell.work / "pipeline.json").read_text())
            assert [s["Name"] for s in definition["Steps"]][:2] == ["Train", "Evaluate"]
            (execution,) = aws.sm.list_pipeline_executions(PipelineName="ncf-pipeline")[
                "PipelineExecutionSummaries"
            ]
            given = aws.sm.describe_pipeline_execution(PipelineExecutionArn=execution["PipelineExecutionArn"])
            assert given["PipelineExecutionStatus"] == "Succeeded"
            # what the execution's Baseline and Register steps make when the gate passes (moto runs no
            # step): the real `monitor baseline` of a real model (the one the local block trained)
            model = f"s3://{bucket}/ncf/pipeline/models/run1/output/model.tar.gz"
            aws.s3.put_object(Bucket=bucket, Key=model.split("/", 3)[3], Body=b"x")
            baseline = f"s3://{bucket}/ncf/pipeline/baseline/run1"
            written = run_baseline(shell.work / "models" / "local" / "model", shell.work / "baseline")
            for path in written:
                aws.s3.upload_file(str(path), bucket, f"ncf/pipeline/baseline/run1/{path.name}")
            registered = aws.sm.create_model_package(
                ModelPackageGroupName=group,
                InferenceSpecification={
                    "Containers": [{"Image": f"{REGISTRY}/ncf-serve:latest", "ModelDataUrl": model}],
                    "SupportedContentTypes": ["application/json"],
                    "SupportedResponseMIMETypes": ["application/json"],
                },
                ModelApprovalStatus="PendingManualApproval",
                ModelMetrics={
                    "ModelDataQuality": {
                        kind: {"ContentType": "application/json", "S3Uri": f"{baseline}/{path.name}"}
                        for kind, path in zip(("Statistics", "Constraints"), written, strict=True)
                    }
                },
            )["ModelPackageArn"]
        elif block.id == "approve":
            assert shell.var("MODEL_PACKAGE_ARN") == registered
            status = aws.sm.describe_model_package(ModelPackageName=registered)["ModelApprovalStatus"]
            assert status == "Approved"
            config = aws.sm.describe_endpoint(EndpointName="ncf")["EndpointConfigName"]
            variant = aws.sm.describe_endpoint_config(EndpointConfigName=config)["ProductionVariants"][0]
            served = aws.sm.describe_model(ModelName=variant["ModelName"])["PrimaryContainer"]
            assert served["ModelPackageName"] == registered
        elif block.id == "operate":
            capture = aws.sm.describe_endpoint(EndpointName="ncf")["DataCaptureConfig"]
            assert capture["DestinationS3Uri"] == f"s3://{bucket}/ncf/capture"
            (target,) = scaling.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]
            assert (target["ResourceId"], target["MinCapacity"], target["MaxCapacity"]) == (
                "endpoint/ncf/variant/primary",
                1,
                4,
            )
            job = json.loads(scheduler.get_schedule(Name="ncf-monitor")["Target"]["Input"])
            inputs = {i["InputName"]: i["S3Input"]["S3Uri"] for i in job["ProcessingInputs"]}
            assert inputs["baseline"] == f"{baseline}/"  # the served package's, found by monitor.sh
            alarms = {a["AlarmName"] for a in cloudwatch.describe_alarms()["MetricAlarms"]}
            assert alarms == {"ncf-monitor-violations", "ncf-monitor-not-running"}
            assert "schedule ncf-monitor ENABLED" in out.splitlines()  # monitor.sh status
            assert not [line for line in out.splitlines() if line.startswith("run ")]  # none yet
            assert re.search(r"^users\.json: 21 requests, 0 errors", out, re.M), out  # smoke_test.sh
        elif block.id == "cleanup":
            assert aws.sm.list_endpoints()["Endpoints"] == []
            assert aws.sm.list_models()["Models"] == []
            assert scheduler.list_schedules()["Schedules"] == []
            assert cloudwatch.describe_alarms()["MetricAlarms"] == []
            assert scaling.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"] == []


def test_every_readme_bash_block_is_marked_and_each_step_has_both_data_sources():
    blocks = R.blocks()
    assert {b.data for b in blocks if b.id == "data"} == {"raw", "ncf"}
    assert [b.id for b in R.path("raw")] == [b.id for b in R.path("ncf")]
    assert np.all([b.body.endswith("\n") for b in blocks])


# The pre-training jobs of docs/launchers.md, verbatim.
PRETRAIN_COMMANDS = [
    'scripts/train.sh --job-name ncf-gmf --train "s3://$BUCKET/ncf/ml-1m/" '
    '--output "s3://$BUCKET/ncf/output" --hp model=gmf --hp epochs=20 --hp num_neg=8 --wait',
    'scripts/train.sh --job-name ncf-mlp --train "s3://$BUCKET/ncf/ml-1m/" '
    '--output "s3://$BUCKET/ncf/output" --hp model=mlp --hp epochs=12 --hp num_neg=8 --hp lr=0.006 --wait',
    'scripts/train.sh --job-name ncf-neumf-pretrained --train "s3://$BUCKET/ncf/ml-1m/" '
    '--output "s3://$BUCKET/ncf/output" --gmf "s3://$BUCKET/ncf/output/ncf-gmf/output/model.tar.gz" '
    '--mlp "s3://$BUCKET/ncf/output/ncf-mlp/output/model.tar.gz" --hp epochs=2 --hp lr=0.00001 '
    "--hp lr_decay=1.0 --wait",
]


def test_docs_pretraining_jobs(aws, tmp_path):
    aws.push_fake_image("ncf-train")
    aws.put("ncf/ml-1m/ml-1m.train.rating")
    env = aws.env | {"BUCKET": BUCKET}
    (tmp_path / "scripts").symlink_to(SCRIPTS)
    for command in PRETRAIN_COMMANDS:
        proc = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True
        )
        _job, model = ok(proc)
        aws.put(model.removeprefix(f"s3://{BUCKET}/"))  # what the real job writes when it ends
    desc = aws.sm.describe_training_job(TrainingJobName="ncf-neumf-pretrained")
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in desc["InputDataConfig"]}
    assert channels["gmf"] == f"s3://{BUCKET}/ncf/output/ncf-gmf/output/model.tar.gz"
    assert channels["mlp"] == f"s3://{BUCKET}/ncf/output/ncf-mlp/output/model.tar.gz"
    text = re.sub(r"\\\n\s*", "", (ROOT / "docs" / "launchers.md").read_text())
    missing = [c for c in PRETRAIN_COMMANDS if c not in text]
    assert not missing, f"docs/launchers.md no longer shows these tested commands: {missing}"
