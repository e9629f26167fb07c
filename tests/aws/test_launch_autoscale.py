"""deploy.sh --autoscale and cleanup.sh against the moto server: scalable targets with target-tracking
policies (invocations per instance, GPU utilisation), re-registered around an update, deregistered by
cleanup; bad ranges and targets refused before any AWS call.
"""

from __future__ import annotations

import pytest

from tests.support.moto import Aws, ok, refused

DIMENSION = "sagemaker:variant:DesiredInstanceCount"


def autoscaling(aws: Aws):
    return aws.session.client("application-autoscaling", endpoint_url=aws.server.url)


def targets_and_policies(aws: Aws) -> tuple[dict, dict]:
    client = autoscaling(aws)
    targets = client.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]
    policies = client.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"]
    return (
        {t["ResourceId"]: (t["MinCapacity"], t["MaxCapacity"]) for t in targets},
        {p["ResourceId"]: p for p in policies},
    )


def test_autoscale_a_cpu_endpoint_with_a_canary_then_cleanup_deregisters(aws):
    aws.push_fake_image("ncf-serve")
    proc = aws.run(
        "deploy", "--endpoint", "ncf", "--model-data", aws.put("m/1/model.tar.gz"),
        "--canary-model-data", aws.put("m/2/model.tar.gz"), "--canary-weight", "0.2",
        "--autoscale", "1:4", "--target-invocations", "250",
    )  # fmt: skip
    assert ok(proc) == ["ncf"]
    targets, policies = targets_and_policies(aws)
    assert targets == {"endpoint/ncf/variant/primary": (1, 4), "endpoint/ncf/variant/canary": (1, 4)}
    policy = policies["endpoint/ncf/variant/primary"]
    assert (policy["PolicyName"], policy["PolicyType"], policy["ScalableDimension"]) == (
        "ncf-primary-scaling", "TargetTrackingScaling", DIMENSION,
    )  # fmt: skip
    assert policy["TargetTrackingScalingPolicyConfiguration"] == {
        "TargetValue": 250.0,
        "PredefinedMetricSpecification": {"PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"},
        "ScaleOutCooldown": 60,
        "ScaleInCooldown": 300,
    }
    # Registered only once the endpoint was up.
    targets_at = [r["target"] for r in aws.server.requests].index("RegisterScalableTarget")
    assert "DescribeEndpoint" in [r["target"] for r in aws.server.requests[:targets_at]]

    # A redeploy deregisters before UpdateEndpoint (SageMaker requires it), then registers the new range.
    aws.server.requests.clear()
    model_3 = aws.put("m/3/model.tar.gz")
    ok(aws.run("deploy", "--endpoint", "ncf", "--model-data", model_3, "--autoscale", "2:3"))
    order = [r["target"] for r in aws.server.requests if r["target"]]
    assert order.index("DeregisterScalableTarget") < order.index("UpdateEndpoint")
    assert order.index("UpdateEndpoint") < order.index("RegisterScalableTarget")
    targets, policies = targets_and_policies(aws)
    assert targets == {"endpoint/ncf/variant/primary": (2, 3)}
    (config,) = aws.server.calls("CreateEndpointConfig")
    assert config["ProductionVariants"][0]["InitialInstanceCount"] == 2  # starts at MIN
    assert set(policies) == {"endpoint/ncf/variant/primary"}
    assert (
        policies["endpoint/ncf/variant/primary"]["TargetTrackingScalingPolicyConfiguration"]["TargetValue"]
        == 100.0
    )  # the default

    proc = aws.run("cleanup", "--endpoint", "ncf", "--yes")
    assert "scalable target endpoint/ncf/variant/primary" in proc.stderr
    assert "endpoint/ncf/variant/primary" in ok(proc)
    assert targets_and_policies(aws) == ({}, {})


def test_autoscale_a_gpu_multi_model_endpoint_on_gpu_utilisation(aws):
    aws.push_fake_image("ncf-serve")
    prefix = aws.put("models/a.tar.gz").rsplit("/", 1)[0]
    ok(
        aws.run(
            "deploy", "--endpoint", "ncf-mme", "--multi-model", "--model-data", prefix,
            "--instance-type", "ml.g4dn.xlarge", "--autoscale", "1:2", "--target-gpu-utilization", "75",
        )
    )  # fmt: skip
    _, policies = targets_and_policies(aws)
    config = policies["endpoint/ncf-mme/variant/primary"]["TargetTrackingScalingPolicyConfiguration"]
    assert config["TargetValue"] == 75.0
    assert config["CustomizedMetricSpecification"] == {
        "MetricName": "GPUUtilization",
        "Namespace": "/aws/sagemaker/Endpoints",
        "Dimensions": [
            {"Name": "EndpointName", "Value": "ncf-mme"},
            {"Name": "VariantName", "Value": "primary"},
        ],
        "Statistic": "Average",
        "Unit": "Percent",
    }


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--autoscale", "4"], "--autoscale must be MIN:MAX"),
        (["--autoscale", "0:3"], "MIN must be at least 1"),
        (["--autoscale", "4:2", "--instance-count", "3"], "MAX must be at least MIN, got 4:2"),
        (["--autoscale", "1:1000"], "MAX must be at most 100"),
        (["--autoscale", "1:2", "--instance-count", "3"], "--instance-count 3 lies above --autoscale 1:2"),
        (["--autoscale", "1:4", "--no-wait"], "drop --no-wait"),
        (["--autoscale", "1:4", "--target-invocations", "0"], "--target-invocations must be above 0"),
        (["--autoscale", "1:4", "--target-gpu-utilization", "150"], "percentage in (0, 100]"),
        (["--autoscale", "1:4", "--target-gpu-utilization", "50"], "for GPU multi-model endpoints"),
        (["--target-invocations", "10"], "need --autoscale MIN:MAX"),
    ],
)
def test_bad_autoscaling_is_refused_before_any_call(aws, extra, message):
    aws.server.requests.clear()
    proc = aws.run("deploy", "--endpoint", "ncf", "--model-data", "s3://b-u-c/m.tar.gz", *extra)
    refused(proc, message)
    assert aws.server.requests == []
