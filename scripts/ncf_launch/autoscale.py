"""deploy.sh --autoscale / cleanup.sh: Application Auto Scaling of an endpoint's production variants.

    scripts/deploy.sh ... --autoscale 1:4                                  100 invocations/instance/minute
    scripts/deploy.sh ... --autoscale 2:8 --target-invocations 300
    scripts/deploy.sh ... --multi-model --instance-type ml.g5.xlarge --autoscale 1:4 \\
        --target-gpu-utilization 60                                        GPU multi-model endpoints

Each variant (primary, canary) becomes a scalable target (endpoint/NAME/variant/VARIANT,
sagemaker:variant:DesiredInstanceCount, MIN..MAX instances) with one target-tracking policy,
NAME-VARIANT-scaling, on
SageMakerVariantInvocationsPerInstance (a CPU endpoint's default) or the endpoint's GPUUtilization
(/aws/sagemaker/Endpoints, average over the variant's instances: a GPU multi-model endpoint's default, 60 %).
Scale-out cooldown 60 s, scale-in 300 s: react to load fast, give instances back slowly.
Registering needs the endpoint InService (so no --no-wait); updating an endpoint whose variants are scalable
targets fails on SageMaker, so deploy.sh deregisters them before UpdateEndpoint and registers them again
after it when --autoscale is given (a deploy without --autoscale leaves the endpoint at a fixed size).
cleanup.sh deletes the policies and deregisters the targets.
"""

from __future__ import annotations

import argparse
import re

from .aws_client import Aws, UsageError, is_not_found, result, say

NAMESPACE = "sagemaker"
DIMENSION = "sagemaker:variant:DesiredInstanceCount"
SCALE_OUT_COOLDOWN = 60
SCALE_IN_COOLDOWN = 300
DEFAULT_INVOCATIONS = 100.0  # per instance per minute (SageMakerVariantInvocationsPerInstance)
DEFAULT_GPU_UTILIZATION = 60.0  # percent, averaged over the variant's instances
MAX_INSTANCES = 100  # a sanity bound on MAX (an account's instance quota is usually far lower)
GPU_INSTANCE = re.compile(r"^ml\.(g\d|p\d)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--autoscale", metavar="MIN:MAX", help="register each variant for auto scaling, MIN..MAX instances"
    )
    target = p.add_mutually_exclusive_group()
    target.add_argument(
        "--target-invocations",
        type=float,
        metavar="N",
        help=f"with --autoscale: invocations per instance per minute (default {DEFAULT_INVOCATIONS:g})",
    )
    target.add_argument(
        "--target-gpu-utilization",
        type=float,
        metavar="P",
        help="with --autoscale, GPU multi-model: average GPU utilisation in %% "
        f"(default {DEFAULT_GPU_UTILIZATION:g})",
    )


def is_gpu(instance_type: str) -> bool:
    return bool(GPU_INSTANCE.match(instance_type or ""))


def parse_range(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", text or "")
    if match is None:
        raise UsageError(f"--autoscale must be MIN:MAX (two whole numbers, e.g. 1:4), got {text!r}")
    low, high = int(match.group(1)), int(match.group(2))
    if low < 1:
        raise UsageError(f"--autoscale MIN must be at least 1 instance, got {low}")
    if high < low:
        raise UsageError(f"--autoscale MAX must be at least MIN, got {low}:{high}")
    if high > MAX_INSTANCES:
        raise UsageError(f"--autoscale MAX must be at most {MAX_INSTANCES} instances, got {high}")
    return low, high


def check_args(args: argparse.Namespace) -> None:
    """Every refusal before any AWS call: the range, the target, and what they need."""
    if args.autoscale is None:
        if args.target_invocations is not None or args.target_gpu_utilization is not None:
            raise UsageError("--target-invocations/--target-gpu-utilization need --autoscale MIN:MAX")
        return
    low, high = parse_range(args.autoscale)
    if args.instance_count > high:
        raise UsageError(f"--instance-count {args.instance_count} lies above --autoscale {low}:{high}")
    args.instance_count = max(args.instance_count, low)  # start at MIN at least
    if args.no_wait:
        raise UsageError("--autoscale registers the variants once the endpoint is InService: drop --no-wait")
    if args.target_invocations is not None and not args.target_invocations > 0:
        raise UsageError(f"--target-invocations must be above 0, got {args.target_invocations:g}")
    if args.target_gpu_utilization is not None:
        if not 0 < args.target_gpu_utilization <= 100:
            raise UsageError(
                f"--target-gpu-utilization is a percentage in (0, 100], got {args.target_gpu_utilization:g}"
            )
        if not (args.multi_model and is_gpu(args.instance_type)):
            raise UsageError(
                "--target-gpu-utilization is for GPU multi-model endpoints (--multi-model and a GPU "
                f"--instance-type such as ml.g5.xlarge), not {args.instance_type}"
                + ("" if args.multi_model else " without --multi-model")
            )


def target_tracking(args: argparse.Namespace, endpoint: str, variant: str) -> dict:
    gpu = args.target_gpu_utilization
    if gpu is None and args.target_invocations is None and args.multi_model and is_gpu(args.instance_type):
        gpu = DEFAULT_GPU_UTILIZATION
    config: dict = {"ScaleOutCooldown": SCALE_OUT_COOLDOWN, "ScaleInCooldown": SCALE_IN_COOLDOWN}
    if gpu is not None:
        config["TargetValue"] = float(gpu)
        config["CustomizedMetricSpecification"] = {
            "MetricName": "GPUUtilization",
            "Namespace": "/aws/sagemaker/Endpoints",
            "Dimensions": [
                {"Name": "EndpointName", "Value": endpoint},
                {"Name": "VariantName", "Value": variant},
            ],
            "Statistic": "Average",
            "Unit": "Percent",
        }
    else:
        config["TargetValue"] = float(args.target_invocations or DEFAULT_INVOCATIONS)
        config["PredefinedMetricSpecification"] = {
            "PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"
        }
    return config


def resource_id(endpoint: str, variant: str) -> str:
    return f"endpoint/{endpoint}/variant/{variant}"


def scalable_targets(aws: Aws, endpoint: str) -> list[str]:
    """Resource ids of the endpoint's variants registered as scalable targets."""
    client = aws.client("application-autoscaling")
    prefix = f"endpoint/{endpoint}/variant/"
    found = []
    for page in client.get_paginator("describe_scalable_targets").paginate(ServiceNamespace=NAMESPACE):
        found += [
            t["ResourceId"]
            for t in page["ScalableTargets"]
            if t["ResourceId"].startswith(prefix) and t["ScalableDimension"] == DIMENSION
        ]
    return sorted(found)


def register(aws: Aws, args: argparse.Namespace, endpoint: str, variants: list[str]) -> None:
    """Register each variant and put its target-tracking policy (the endpoint is InService)."""
    low, high = parse_range(args.autoscale)
    client = aws.client("application-autoscaling")
    for variant in variants:
        rid = resource_id(endpoint, variant)
        say(f"RegisterScalableTarget {rid} {low}..{high} instances")
        client.register_scalable_target(
            ServiceNamespace=NAMESPACE,
            ResourceId=rid,
            ScalableDimension=DIMENSION,
            MinCapacity=low,
            MaxCapacity=high,
        )
        config = target_tracking(args, endpoint, variant)
        predefined = config.get("PredefinedMetricSpecification", {})
        metric = predefined.get("PredefinedMetricType") or "GPUUtilization"
        say(f"PutScalingPolicy {endpoint}-{variant}-scaling: {metric} at {config['TargetValue']:g}")
        client.put_scaling_policy(
            PolicyName=f"{endpoint}-{variant}-scaling",
            ServiceNamespace=NAMESPACE,
            ResourceId=rid,
            ScalableDimension=DIMENSION,
            PolicyType="TargetTrackingScaling",
            TargetTrackingScalingPolicyConfiguration=config,
        )


def deregister(aws: Aws, resource_ids: list[str], show: bool = False) -> None:
    """Delete the targets' policies, then deregister them (gone already is fine)."""
    from botocore.exceptions import ClientError

    client = aws.client("application-autoscaling")
    for rid in resource_ids:
        policies = client.describe_scaling_policies(
            ServiceNamespace=NAMESPACE, ResourceId=rid, ScalableDimension=DIMENSION
        )["ScalingPolicies"]
        try:
            for policy in policies:
                client.delete_scaling_policy(
                    PolicyName=policy["PolicyName"],
                    ServiceNamespace=NAMESPACE,
                    ResourceId=rid,
                    ScalableDimension=DIMENSION,
                )
            say(f"DeregisterScalableTarget {rid}")
            client.deregister_scalable_target(
                ServiceNamespace=NAMESPACE, ResourceId=rid, ScalableDimension=DIMENSION
            )
        except ClientError as exc:
            if not (is_not_found(exc) or "ObjectNotFound" in str(exc)):
                raise
        if show:
            result(rid)
