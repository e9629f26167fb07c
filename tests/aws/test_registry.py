"""registry.sh (list, approve, reject) and deploy.sh --model-package-group (latest Approved version,
--rollback, a model package as canary) against the moto server (tests/support/moto.py)."""

from __future__ import annotations

import json

import pytest

from tests.support.moto import BUCKET, REGISTRY, ok, refused

GROUP = "ncf-models"


def register(aws, version_hr: float, status: str = "PendingManualApproval") -> str:
    """A model package as the pipeline's Register step makes it: serving image, model data, model metrics."""
    report = {
        "metrics": {
            "hr_at_10": {"value": version_hr},
            "ndcg_at_10": {"value": round(version_hr * 0.6, 4)},
            "users_evaluated": {"value": 6040},
            "k": {"value": 10},
        }
    }
    n = len(aws.sm.list_model_packages(ModelPackageGroupName=GROUP)["ModelPackageSummaryList"]) + 1
    metrics_uri = aws.put(f"ncf/pipeline/evaluation/exec{n}/evaluation.json", json.dumps(report).encode())
    model_data = aws.put(f"ncf/pipeline/models/job{n}/output/model.tar.gz")
    return aws.sm.create_model_package(
        ModelPackageGroupName=GROUP,
        ModelApprovalStatus=status,
        InferenceSpecification={
            "Containers": [{"Image": f"{REGISTRY}/ncf-serve:latest", "ModelDataUrl": model_data}],
            "SupportedContentTypes": ["application/json"],
            "SupportedResponseMIMETypes": ["application/json"],
            "SupportedRealtimeInferenceInstanceTypes": ["ml.m5.large", "ml.m5.xlarge"],
        },
        ModelMetrics={
            "ModelQuality": {"Statistics": {"ContentType": "application/json", "S3Uri": metrics_uri}}
        },
    )["ModelPackageArn"]


@pytest.fixture
def group(aws):
    aws.sm.create_model_package_group(ModelPackageGroupName=GROUP)
    return aws


def test_list_shows_each_version_with_its_metrics_and_status(group):
    aws = group
    first = register(aws, 0.70, "Approved")
    second = register(aws, 0.71)
    assert ok(aws.run("registry", "list", "--group", GROUP)) == [
        f"2\tPendingManualApproval\thr_at_10=0.71 ndcg_at_10=0.426 users_evaluated=6040\t{second}",
        f"1\tApproved\thr_at_10=0.7 ndcg_at_10=0.42 users_evaluated=6040\t{first}",
    ]


def test_approve_and_reject_with_a_reason(group):
    aws = group
    arn = register(aws, 0.70)
    assert ok(aws.run("registry", "approve", "--arn", arn, "--reason", "HR@10 0.70 on ML-1M")) == [
        f"{arn}\tApproved"
    ]
    desc = aws.sm.describe_model_package(ModelPackageName=arn)
    assert (desc["ModelApprovalStatus"], desc["ApprovalDescription"]) == ("Approved", "HR@10 0.70 on ML-1M")
    ok(aws.run("registry", "reject", "--arn", arn, "--reason", "lost the A/B test"))
    assert aws.sm.describe_model_package(ModelPackageName=arn)["ModelApprovalStatus"] == "Rejected"


def test_registry_refusals(group):
    aws = group
    refused(aws.run("registry", "list", "--group", "nope"), "no model package group named nope")
    missing = "arn:aws:sagemaker:us-east-1:123456789012:model-package/ncf-models/9"
    refused(aws.run("registry", "approve", "--arn", missing, "--reason", "x"), "no model package")
    refused(
        aws.run("registry", "approve", "--arn", "not-an-arn", "--reason", "x"),
        "is not a model package version ARN",
    )
    arn = register(aws, 0.7)
    refused(aws.run("registry", "approve", "--arn", arn), "approve takes --arn ARN and --reason TEXT")
    assert aws.server.calls("UpdateModelPackage") == []


def deployed_containers(aws, endpoint: str) -> dict[str, dict]:
    config_name = aws.sm.describe_endpoint(EndpointName=endpoint)["EndpointConfigName"]
    variants = aws.sm.describe_endpoint_config(EndpointConfigName=config_name)["ProductionVariants"]
    return {
        v["VariantName"]: aws.sm.describe_model(ModelName=v["ModelName"])["PrimaryContainer"]
        | {"weight": v["InitialVariantWeight"]}
        for v in variants
    }


def test_deploy_the_latest_approved_version_then_roll_back(group):
    aws = group
    v1 = register(aws, 0.70, "Approved")
    v2 = register(aws, 0.72, "Approved")
    register(aws, 0.73)  # pending: never deployed
    ok(aws.run("deploy", "--endpoint", "ncf", "--model-package-group", GROUP))
    assert deployed_containers(aws, "ncf") == {
        "primary": {"ModelPackageName": v2, "Environment": {}, "weight": 1.0}
    }
    proc = aws.run("deploy", "--endpoint", "ncf", "--model-package-group", GROUP, "--rollback")
    ok(proc)
    assert "UpdateEndpoint ncf (InService)" in proc.stderr
    assert deployed_containers(aws, "ncf")["primary"]["ModelPackageName"] == v1


def test_deploy_a_model_package_canary_with_weights(group):
    aws = group
    aws.push_fake_image("ncf-serve")
    v1 = register(aws, 0.70, "Approved")
    v2 = register(aws, 0.72, "Approved")
    ok(
        aws.run(
            "deploy", "--endpoint", "ncf-ab", "--model-package-group", GROUP, "--rollback",
            "--canary-model-package", v2, "--canary-weight", "0.1",
        )
    )  # fmt: skip
    containers = deployed_containers(aws, "ncf-ab")
    assert {k: (c["ModelPackageName"], c["weight"]) for k, c in containers.items()} == {
        "primary": (v1, 0.9),
        "canary": (v2, 0.1),
    }
    # a package as primary, an S3 model as canary (the serving image for it)
    canary_data = aws.put("m/v3/model.tar.gz")
    ok(
        aws.run(
            "deploy", "--endpoint", "ncf-mix", "--model-package-group", GROUP,
            "--canary-model-data", canary_data, "--canary-weight", "0.2",
        )
    )  # fmt: skip
    mixed = deployed_containers(aws, "ncf-mix")
    assert mixed["canary"]["ModelDataUrl"] == canary_data
    assert mixed["canary"]["Image"] == f"{REGISTRY}/ncf-serve:latest"


@pytest.mark.parametrize(
    ("approved", "args", "message"),
    [
        (0, [], "has no Approved version: approve one first"),
        (1, ["--rollback"], "one Approved version only: nothing to roll back to"),
        (1, ["--instance-type", "ml.g5.xlarge"], "does not list --instance-type ml.g5.xlarge"),
        (1, ["--image", f"{REGISTRY}/ncf-serve:latest"], "the package names its own image"),
        (1, ["--multi-model"], "not a model package"),
    ],
)
def test_deploy_from_a_group_refuses_before_creating_anything(group, approved, args, message):
    aws = group
    register(aws, 0.7)  # pending
    for _ in range(approved):
        register(aws, 0.7, "Approved")
    refused(aws.run("deploy", "--endpoint", "ncf", "--model-package-group", GROUP, *args), message)
    assert aws.server.calls("CreateModel") == []


def test_deploy_refuses_a_missing_group_a_pending_canary_and_a_stray_rollback(group):
    aws = group
    refused(aws.run("deploy", "--endpoint", "ncf", "--model-package-group", "nope"), "no model package group")
    register(aws, 0.7, "Approved")
    pending = register(aws, 0.71)
    refused(
        aws.run("deploy", "--endpoint", "ncf", "--model-package-group", GROUP,
                "--canary-model-package", pending, "--canary-weight", "0.1"),
        "is PendingManualApproval, not Approved",
    )  # fmt: skip
    refused(aws.run("deploy", "--endpoint", "ncf", "--model-data", f"s3://{BUCKET}/m.tar.gz", "--rollback"),
            "--rollback needs --model-package-group")  # fmt: skip
    assert aws.server.calls("CreateModel") == []
