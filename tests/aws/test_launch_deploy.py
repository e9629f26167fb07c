"""deploy.sh and cleanup.sh against the moto server (tests/support/moto.py): single-model, canary and
multi-model endpoints, updates in place, failures and refusals; cleanup deleting only one endpoint's
resources.
"""

from __future__ import annotations

import re

import pytest

from tests.support.moto import BUCKET, FAILURES, REGISTRY, ROLE, Aws, ok, refused

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
