"""scripts/deploy.sh: create (or update in place) a SageMaker endpoint serving our serving image.

    scripts/deploy.sh --endpoint ncf --training-job ncf-ml1m                       model of a finished job
    scripts/deploy.sh --endpoint ncf --model-data s3://BUCKET/ncf/output/JOB/output/model.tar.gz
    scripts/deploy.sh --endpoint ncf-mme --multi-model --model-data s3://BUCKET/ncf/models/
    scripts/deploy.sh --endpoint ncf --training-job ncf-ml1m \\
        --canary-training-job ncf-ml1m-v2 --canary-weight 0.1                    10 % of traffic to a canary
    scripts/deploy.sh ... --data-capture s3://BUCKET/ncf/capture --capture-percent 20
    scripts/deploy.sh ... --autoscale 1:4 [--target-invocations N | --target-gpu-utilization P]
    scripts/deploy.sh --endpoint ncf --model-package-group ncf-models            latest Approved version
    scripts/deploy.sh --endpoint ncf --model-package-group ncf-models --rollback the approved one before
    scripts/deploy.sh --server triton --endpoint ncf-triton --package PKG --upload-to S3_PREFIX
                                                  AWS's Triton image (deploy.sh --server triton --help)

Creates a model per production variant (NAME-primary-TIMESTAMP, NAME-canary-TIMESTAMP) and an endpoint
config (NAME-TIMESTAMP), then creates the endpoint, or, when it exists and is InService, updates it to the
new config (SageMaker swaps the fleet without downtime; the previous config and models stay, for a rollback,
until cleanup.sh). Waits until the endpoint is InService (exit 1 with its FailureReason if it fails).
--image defaults to ncf-serve:latest in this account's ECR (checked to exist); --role-arn to
$SAGEMAKER_ROLE_ARN.
A model package (--model-package-group, --canary-model-package) brings its own image and model data
(the container names the package); only an Approved version is deployed, on an instance type it lists.
Multi-model: the container runs with SAGEMAKER_MULTI_MODEL=true, Mode=MultiModel, and ModelDataUrl is the S3
prefix holding one model.tar.gz per model (invoke.sh --target-model NAME.tar.gz picks one).
"""

from __future__ import annotations

import argparse
import re
import time

from . import autoscale
from .aws_client import (
    SERVE_INSTANCE_TYPE,
    SERVE_REPOSITORY,
    STAMP_PATTERN,
    Aws,
    Failure,
    UsageError,
    check_bucket,
    check_ecr_image,
    check_name,
    check_role_arn,
    connect,
    default_image,
    describe_or_none,
    error_code,
    key_values,
    parse_s3_uri,
    result,
    role_arn_option,
    run_main,
    say,
    show_request,
    stamp,
)

VARIANTS = ("primary", "canary")
# NAME-canary-20261123-164905-123 must fit SageMaker's 63 characters.
MAX_ENDPOINT_NAME = 63 - len("-primary-") - len("20261123-164905-123")
BUSY = ("Creating", "Updating", "SystemUpdating", "RollingBack", "Deleting", "UpdateRollbackFailed")
POLL_SECONDS = 15


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="deploy.sh",
        description="Create or update a SageMaker endpoint for the ncf-serve image.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument(
        "--endpoint", required=True, help=f"endpoint name (at most {MAX_ENDPOINT_NAME} characters)"
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--model-data", metavar="S3_URI", help="model.tar.gz (or, --multi-model, the S3 prefix)"
    )
    source.add_argument(
        "--training-job", metavar="JOB", help="deploy the model of this completed training job"
    )
    source.add_argument(
        "--model-package-group", metavar="NAME", help="deploy the group's latest Approved model package"
    )
    p.add_argument(
        "--rollback", action="store_true", help="with --model-package-group: the approved version before it"
    )
    p.add_argument(
        "--multi-model", action="store_true", help="multi-model endpoint: --model-data is a prefix"
    )
    p.add_argument("--image", help="serving image URI (default: ncf-serve:latest in ECR)")
    role_arn_option(p)
    p.add_argument(
        "--instance-type", default=SERVE_INSTANCE_TYPE, help=f"per variant (default {SERVE_INSTANCE_TYPE})"
    )
    p.add_argument("--instance-count", type=int, default=1, help="initial instances per variant (default 1)")
    canary = p.add_mutually_exclusive_group()
    canary.add_argument("--canary-model-data", metavar="S3_URI", help="second variant: this model")
    canary.add_argument("--canary-training-job", metavar="JOB", help="second variant: this job's model")
    canary.add_argument("--canary-model-package", metavar="ARN", help="second variant: this Approved version")
    p.add_argument("--canary-weight", type=float, help="share of traffic for the canary, 0 < W < 1")
    p.add_argument("--canary-image", help="image of the canary (default: --image)")
    p.add_argument("--data-capture", metavar="S3_URI", help="capture requests and responses here")
    p.add_argument("--capture-percent", type=int, default=100, help="sampled share of requests (default 100)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="container environment")
    p.add_argument("--no-wait", action="store_true", help="return once the create/update call is accepted")
    p.add_argument("--timeout", type=int, default=3600, metavar="SECONDS", help="max wait (default 1 hour)")
    p.add_argument("--region", help="AWS region (default: AWS_REGION / your profile)")
    p.add_argument("--server", choices=("ncf", "triton"), default="ncf", help="triton: --server triton -h")
    autoscale.add_arguments(p)  # --autoscale MIN:MAX, --target-invocations, --target-gpu-utilization
    return p


def check_args(args: argparse.Namespace) -> None:
    check_name(args.endpoint, "--endpoint", MAX_ENDPOINT_NAME)
    check_role_arn(args.role_arn)
    has_canary = bool(args.canary_model_data or args.canary_training_job or args.canary_model_package)
    if has_canary != (args.canary_weight is not None):
        raise UsageError(
            "a canary needs both --canary-model-data/--canary-training-job/--canary-model-package "
            "and --canary-weight"
        )
    if args.canary_image and not (args.canary_model_data or args.canary_training_job):
        raise UsageError("--canary-image needs a canary (--canary-model-data or --canary-training-job)")
    if has_canary and not 0 < args.canary_weight < 1:
        raise UsageError(f"--canary-weight must lie strictly between 0 and 1, got {args.canary_weight}")
    if args.multi_model and (args.training_job or args.canary_training_job):
        raise UsageError("--multi-model serves an S3 prefix of models: use --model-data s3://BUCKET/PREFIX/")
    if args.multi_model and (args.model_package_group or args.canary_model_package):
        raise UsageError("--multi-model serves an S3 prefix of models, not a model package")
    if args.rollback and not args.model_package_group:
        raise UsageError(
            "--rollback needs --model-package-group (it picks the approved version before the latest)"
        )
    if args.image and args.model_package_group and not (args.canary_model_data or args.canary_training_job):
        raise UsageError("--image does not apply to a model package: the package names its own image")
    if args.instance_count < 1:
        raise UsageError(f"--instance-count must be at least 1, got {args.instance_count}")
    if not 0 < args.capture_percent <= 100:
        raise UsageError(f"--capture-percent must lie in 1..100, got {args.capture_percent}")
    for flag in ("model_data", "canary_model_data", "data_capture"):
        if getattr(args, flag):
            parse_s3_uri(getattr(args, flag), "--" + flag.replace("_", "-"))
    key_values(args.env, "--env")
    autoscale.check_args(args)


def job_model_data(sm, job: str) -> str:
    desc = describe_or_none(sm.describe_training_job, TrainingJobName=job)
    if desc is None:
        raise UsageError(f"no training job named {job}")
    if desc["TrainingJobStatus"] != "Completed":
        raise UsageError(
            f"training job {job} is {desc['TrainingJobStatus']}, not Completed: nothing to deploy"
        )
    return desc["ModelArtifacts"]["S3ModelArtifacts"]


def check_model_data(aws: Aws, uri: str, multi_model: bool) -> str:
    """Fail early when a model.tar.gz is missing; a multi-model prefix only needs its bucket."""
    from botocore.exceptions import ClientError

    bucket, key = parse_s3_uri(uri, "model data")
    check_bucket(aws, bucket)
    if multi_model:
        return uri if uri.endswith("/") else uri + "/"
    try:
        aws.client("s3").head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if error_code(exc) in ("404", "NoSuchKey"):
            raise UsageError(f"model data {uri} does not exist") from None
        raise
    return uri


def package_to_deploy(sm, group: str, rollback: bool) -> str:
    """The ARN of the group's latest Approved version, or with ``rollback`` the approved one before it."""
    from .registry import approved_versions

    approved = approved_versions(sm, group)
    wanted = 1 if rollback else 0
    if len(approved) <= wanted:
        if not approved:
            raise UsageError(
                f"model package group {group} has no Approved version: approve one first "
                "(scripts/registry.sh approve --arn ARN --reason TEXT)"
            )
        raise UsageError(
            f"model package group {group} has one Approved version only: nothing to roll back to"
        )
    chosen = approved[wanted]
    say(f"{group}: version {chosen.get('ModelPackageVersion')} ({chosen['ModelPackageArn']})")
    return chosen["ModelPackageArn"]


def check_package(sm, arn: str, instance_type: str) -> str:
    """Fail early unless the package is Approved and may run on ``instance_type``."""
    from .registry import APPROVED, describe_package

    desc = describe_package(sm, arn)
    if desc.get("ModelApprovalStatus") != APPROVED:
        raise UsageError(f"model package {arn} is {desc.get('ModelApprovalStatus')}, not {APPROVED}")
    allowed = desc.get("InferenceSpecification", {}).get("SupportedRealtimeInferenceInstanceTypes") or []
    if allowed and instance_type not in allowed:
        raise UsageError(
            f"model package {arn} does not list --instance-type {instance_type}: one of {', '.join(allowed)}"
        )
    return arn


def endpoint_status(sm, name: str) -> str | None:
    desc = describe_or_none(sm.describe_endpoint, EndpointName=name)
    return None if desc is None else desc["EndpointStatus"]


def wait_for_endpoint(sm, name: str, timeout: float, poll: float = POLL_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    seen = None
    while True:
        desc = sm.describe_endpoint(EndpointName=name)
        status = desc["EndpointStatus"]
        if status != seen:
            say(f"endpoint {name}: {status}")
            seen = status
        if status == "InService":
            return
        if status == "Failed":
            raise Failure(f"endpoint {name} failed: {desc.get('FailureReason') or 'no FailureReason given'}")
        if status not in BUSY:
            raise Failure(f"endpoint {name} is {status}")
        if time.monotonic() > deadline:
            raise Failure(
                f"endpoint {name} still {status} after {timeout:.0f} s (it goes on; re-check later)"
            )
        time.sleep(poll)


def main(argv: list[str] | None = None) -> int:
    server = argparse.ArgumentParser(add_help=False)
    server.add_argument("--server", choices=("ncf", "triton"), default="ncf")
    chosen, rest = server.parse_known_args(argv)
    if chosen.server == "triton":
        from .triton_deploy import main as triton_main

        return triton_main(rest)
    args = parser().parse_args(argv)

    def body() -> None:
        # Checks: nothing is created or changed until all of them pass.
        check_args(args)
        env = key_values(args.env, "--env")
        if args.multi_model:
            env["SAGEMAKER_MULTI_MODEL"] = "true"
        aws = connect(args.region)
        sm = aws.client("sagemaker")

        images: list[str] = []

        def image() -> str:  # the serving image, resolved (and checked) once, only when a variant needs it
            if not images:
                images.append(args.image or default_image(aws, SERVE_REPOSITORY))
                if args.image:
                    check_ecr_image(aws, args.image)
            return images[0]

        # variant -> its container (without Environment): an image and model data, or a model package
        variants: dict[str, dict] = {}
        if args.model_package_group:
            arn = package_to_deploy(sm, args.model_package_group, args.rollback)
            variants["primary"] = {"ModelPackageName": check_package(sm, arn, args.instance_type)}
        else:
            uri = args.model_data or job_model_data(sm, args.training_job)
            variants["primary"] = {"Image": image(), "ModelDataUrl": uri}
        if args.canary_model_package:
            variants["canary"] = {
                "ModelPackageName": check_package(sm, args.canary_model_package, args.instance_type)
            }
        elif args.canary_model_data or args.canary_training_job:
            canary_image = args.canary_image or image()
            if args.canary_image:
                check_ecr_image(aws, canary_image)
            uri = args.canary_model_data or job_model_data(sm, args.canary_training_job)
            variants["canary"] = {"Image": canary_image, "ModelDataUrl": uri}
        for container in variants.values():
            if "ModelDataUrl" in container:
                container["ModelDataUrl"] = check_model_data(aws, container["ModelDataUrl"], args.multi_model)
        if args.data_capture:
            check_bucket(aws, parse_s3_uri(args.data_capture)[0])

        status = endpoint_status(sm, args.endpoint)
        if status in BUSY:
            raise UsageError(f"endpoint {args.endpoint} is {status}: wait until it is InService, then re-run")
        if status == "Failed":
            raise UsageError(
                f"endpoint {args.endpoint} is Failed: delete it (scripts/cleanup.sh), then re-run"
            )
        if status not in (None, "InService", "OutOfService"):
            raise UsageError(f"endpoint {args.endpoint} is {status}: cannot update it")

        # Models, endpoint config, then the endpoint (created, or updated in place).
        suffix = stamp()
        weights = {"primary": 1.0 - (args.canary_weight or 0.0), "canary": args.canary_weight}
        production_variants = []
        for variant, source in variants.items():
            container = source | {"Environment": env}
            if args.multi_model:
                container["Mode"] = "MultiModel"
            model_name = f"{args.endpoint}-{variant}-{suffix}"
            model = {"ModelName": model_name, "ExecutionRoleArn": args.role_arn}
            model["PrimaryContainer"] = container
            show_request("CreateModel", model)
            sm.create_model(**model)
            production_variants.append(
                {
                    "VariantName": variant,
                    "ModelName": model_name,
                    "InstanceType": args.instance_type,
                    "InitialInstanceCount": args.instance_count,
                    "InitialVariantWeight": round(weights[variant], 6),
                }
            )
        config = {
            "EndpointConfigName": f"{args.endpoint}-{suffix}",
            "ProductionVariants": production_variants,
        }
        if args.data_capture:
            config["DataCaptureConfig"] = {
                "EnableCapture": True,
                "InitialSamplingPercentage": args.capture_percent,
                "DestinationS3Uri": args.data_capture,
                "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
                "CaptureContentTypeHeader": {"JsonContentTypes": ["application/json"]},
            }
        show_request("CreateEndpointConfig", config)
        sm.create_endpoint_config(**config)
        if status is None:
            say(f"CreateEndpoint {args.endpoint} with config {config['EndpointConfigName']}")
            sm.create_endpoint(EndpointName=args.endpoint, EndpointConfigName=config["EndpointConfigName"])
        else:
            # SageMaker refuses to update a variant that is a scalable target: deregister first.
            autoscale.deregister(aws, autoscale.scalable_targets(aws, args.endpoint))
            say(f"UpdateEndpoint {args.endpoint} ({status}) to config {config['EndpointConfigName']}")
            sm.update_endpoint(EndpointName=args.endpoint, EndpointConfigName=config["EndpointConfigName"])
        if args.no_wait:
            say(f"not waiting: scripts/invoke.sh --endpoint {args.endpoint} works once it is InService")
        else:
            wait_for_endpoint(sm, args.endpoint, args.timeout)
        if args.autoscale:
            autoscale.register(aws, args, args.endpoint, list(variants))
        result(args.endpoint)

    return run_main("deploy", body)


# Names this script gives (cleanup.sh deletes exactly these for an endpoint).
def config_name_pattern(endpoint: str) -> str:
    return rf"^{re.escape(endpoint)}-{STAMP_PATTERN}$"


def model_name_pattern(endpoint: str) -> str:
    return rf"^{re.escape(endpoint)}-({'|'.join(VARIANTS)})-{STAMP_PATTERN}$"
