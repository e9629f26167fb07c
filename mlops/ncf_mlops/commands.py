"""scripts/pipeline.sh: print, upsert, start and follow the SageMaker pipeline of ``ncf_mlops.pipeline``.

    scripts/pipeline.sh --definition                      the JSON definition (no AWS call, no credentials)
    scripts/pipeline.sh upsert                            create the pipeline, or update it in place
    scripts/pipeline.sh start --param epochs=20 --param MinHrAt10=0.65 --wait
    scripts/pipeline.sh status [--execution ARN] [--wait] each step's state and failure reason
    scripts/pipeline.sh --local --data s3://BUCKET/ncf/ml-100k/ --param epochs=2   the same pipeline, here

The role is --role-arn or $SAGEMAKER_ROLE_ARN, the bucket --bucket or $BUCKET (models and evaluation
reports go under s3://BUCKET/PREFIX/), the images ncf-train:latest and ncf-serve:latest in ECR (--train-image,
--serve-image): for --definition in the role's account, for upsert in the caller's (checked to exist).
InputDataUri and TestDataUri default to --data (s3://BUCKET/ncf/ml-1m/, where the README uploads ML-1M).
MlflowTrackingUri defaults to $MLFLOW_TRACKING_URI (empty: the steps track nothing).
start checks every --param against the pipeline's parameters (unknown names, thresholds outside 0–1,
hyperparameters the image would refuse) before any AWS call. status (and start --wait) exits 1 when the
execution failed or stopped.

--local runs the same pipeline on this machine with the SDK's LocalPipelineSession: each step in Docker on
the local images ncf-train:local and ncf-serve:local (scripts/build_and_push.sh --cpu --no-push), S3 (data,
model.tar.gz, evaluation.json) in --bucket at AWS_ENDPOINT_URL when set. It prints each step's outcome and
wall time and exits 1 when the execution failed (the quality gate's Fail step included). Local mode cannot
register a model package: there the Register step creates the model locally, and when it ran pipeline.sh
sends the deployed Register step's CreateModelPackage request itself, with this execution's model data and
evaluation.json, to SageMaker (or AWS_ENDPOINT_URL); the model package group must exist.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time

from ncf_launch.aws_client import (
    ROLE_ENV,
    SERVE_REPOSITORY,
    TRAIN_REPOSITORY,
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
    ecr_image_uri,
    key_values,
    parse_s3_uri,
    require_objects,
    result,
    role_arn_option,
    run_main,
    say,
    show_request,
)
from ncf_sagemaker import contract

from . import parameters as P
from .pipeline import DEFAULT_NAME, Settings

BUCKET_ENV = "BUCKET"
DEFAULT_PREFIX = "ncf/pipeline"
DEFAULT_DATA = "ncf/ml-1m/"  # under the bucket: the README's upload_data.sh destination
COMMANDS = ("upsert", "start", "status")
RUNNING = ("Executing", "Stopping")
POLL_SECONDS = 30


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pipeline.sh",
        description="The NCF SageMaker pipeline: train, evaluate, gate on HR@10/NDCG@10, register.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument("command", nargs="?", choices=COMMANDS, help="upsert, start or status")
    p.add_argument("--definition", action="store_true", help="print the pipeline's JSON definition and exit")
    p.add_argument(
        "--local", action="store_true", help="run the pipeline on this machine (Docker, SDK local mode)"
    )
    p.add_argument("--name", default=DEFAULT_NAME, help=f"pipeline name (default {DEFAULT_NAME})")
    role_arn_option(p)
    p.add_argument("--bucket", default=os.environ.get(BUCKET_ENV), help=f"S3 bucket (env {BUCKET_ENV})")
    p.add_argument(
        "--prefix", default=DEFAULT_PREFIX, help=f"S3 prefix for outputs (default {DEFAULT_PREFIX})"
    )
    p.add_argument(
        "--data", metavar="S3_URI", help=f"default data prefix (default s3://BUCKET/{DEFAULT_DATA})"
    )
    p.add_argument(
        "--train-image",
        help="training image URI (default: ncf-train:latest in ECR; ncf-train:local with --local)",
    )
    p.add_argument(
        "--serve-image",
        help="serving image URI (default: ncf-serve:latest in ECR; ncf-serve:local with --local)",
    )
    p.add_argument(
        "--triton",
        action="store_true",
        help="--definition, upsert: also export and register the Triton package (docs/triton.md)",
    )
    p.add_argument(
        "--param", action="append", default=[], metavar="NAME=VALUE", help="start, --local: a parameter"
    )
    p.add_argument("--execution", metavar="ARN", help="status: this execution (default: the latest)")
    p.add_argument("--wait", action="store_true", help="start, status: follow the execution until it ends")
    p.add_argument("--poll", type=float, default=POLL_SECONDS, help=argparse.SUPPRESS)
    p.add_argument("--region", help="AWS region (default: AWS_REGION / your profile)")
    return p


def check_args(args: argparse.Namespace) -> None:
    if args.definition + args.local + bool(args.command) != 1:
        raise UsageError("give --definition, --local or one of: " + ", ".join(COMMANDS))
    if args.param and args.command != "start" and not args.local:
        raise UsageError("--param only applies to start and --local")
    if args.triton and not (args.definition or args.command == "upsert"):
        raise UsageError("--triton applies to --definition and upsert (the pipeline's steps)")
    if args.execution and args.command != "status":
        raise UsageError("--execution only applies to status")
    if args.wait and args.command not in ("start", "status"):
        raise UsageError("--wait only applies to start and status")
    check_name(args.name, "--name", 256)


def region_of(args: argparse.Namespace) -> str:
    """--region, AWS_REGION, AWS_DEFAULT_REGION or the profile's: read locally, never asked of AWS."""
    region = args.region or os.environ.get("AWS_REGION")
    if not region:
        import boto3

        region = boto3.Session().region_name
    if not region:
        raise UsageError("no AWS region: pass --region or set AWS_REGION (or a region in your AWS profile)")
    return region


def settings_for(args: argparse.Namespace, aws: Aws | None) -> Settings:
    """Check role and bucket and resolve the images; with ``aws``, in the caller's account, checked."""
    role = check_role_arn(args.role_arn)
    if not args.bucket:
        raise UsageError(f"no S3 bucket: pass --bucket or set {BUCKET_ENV} (models and reports go there)")
    parse_s3_uri(f"s3://{args.bucket}", "--bucket")
    data = args.data or f"s3://{args.bucket}/{DEFAULT_DATA}"
    parse_s3_uri(data, "--data")
    region = aws.region if aws else region_of(args)
    images = {}
    for flag, repository in (("train_image", TRAIN_REPOSITORY), ("serve_image", SERVE_REPOSITORY)):
        given = getattr(args, flag)
        if args.local:
            from .local import LOCAL_IMAGES

            images[flag] = given or LOCAL_IMAGES[flag]
        elif aws is None:
            images[flag] = given or ecr_image_uri(role.split(":")[4], region, repository)
        elif given:
            check_ecr_image(aws, given)
            images[flag] = given
        else:
            images[flag] = default_image(aws, repository)
    tracking = os.environ.get(contract.MLFLOW_TRACKING_URI_ENV, "").strip()
    if getattr(args, "triton", False):
        from ncf_launch.triton_deploy import GPU_INSTANCE_TYPE, triton_image

        images["triton_image"] = triton_image(region, GPU_INSTANCE_TYPE)
    return Settings(
        args.name, region, role, args.bucket, args.prefix, data_uri=data, tracking_uri=tracking, **images
    )


def check_definition_inputs(args: argparse.Namespace) -> None:
    """--definition calls no AWS API and needs no credentials; the JSON names a role, a bucket, a region."""
    needed = [
        what
        for what, given in (
            (f"--role-arn or ${ROLE_ENV} (the role SageMaker runs the steps as)", args.role_arn),
            (f"--bucket or ${BUCKET_ENV} (where models and reports go)", args.bucket),
            ("--region or $AWS_REGION", args.region or os.environ.get("AWS_REGION") or _profile_region()),
        )
        if not given
    ]
    if needed:
        raise UsageError(
            "--definition needs no AWS credentials, but the definition names: "
            + "; ".join(needed)
            + ". scripts/infra.sh prints SAGEMAKER_ROLE_ARN and BUCKET for the stack of "
            "mlops/infra/template.yaml (README, Prerequisites)"
        )


def _profile_region() -> str | None:
    try:
        import boto3

        return boto3.Session().region_name
    except Exception:  # a broken profile: the region is then simply not known
        return None


def definition(settings: Settings) -> str:
    from .pipeline import definition as build_definition

    return build_definition(settings)


# ------------------------------------------------------------------------------------------------ upsert


def upsert(args: argparse.Namespace) -> None:
    aws = connect(args.region)
    settings = settings_for(args, aws)
    check_bucket(aws, settings.bucket)
    body = definition(settings)
    sm = aws.client("sagemaker")
    request = {
        "PipelineName": settings.name,
        "PipelineDefinition": body,
        "RoleArn": settings.role_arn,
        "PipelineDescription": "NCF: train, evaluate, gate on HR@10 / NDCG@10, register the model",
    }
    shown = request | {"PipelineDefinition": f"<{len(body)} characters: pipeline.sh --definition>"}
    if describe_or_none(sm.describe_pipeline, PipelineName=settings.name) is None:
        show_request("CreatePipeline", shown)
        arn = sm.create_pipeline(**request)["PipelineArn"]
    else:
        show_request("UpdatePipeline", shown)
        arn = sm.update_pipeline(**request)["PipelineArn"]
    result(arn)


# ------------------------------------------------------------------------------------------------- start


def deployed_parameters(sm, name: str) -> dict[str, str]:
    """The parameters of the pipeline as SageMaker holds it: name → default (as text)."""
    desc = describe_or_none(sm.describe_pipeline, PipelineName=name)
    if desc is None:
        raise UsageError(f"no pipeline named {name}: create it first (scripts/pipeline.sh upsert)")
    declared = json.loads(desc["PipelineDefinition"]).get("Parameters", [])
    return {p["Name"]: str(p.get("DefaultValue", "")) for p in declared}


def start(args: argparse.Namespace) -> None:
    # Names and values are checked here; the defaults are the deployed pipeline's (read below).
    known = P.parameters(data_uri="", triton=True)  # the deployed pipeline's own list is checked below
    overrides = P.check_overrides(key_values(args.param, "--param"), known)
    aws = connect(args.region)
    sm = aws.client("sagemaker")
    deployed = deployed_parameters(sm, args.name)
    stale = sorted(set(overrides) - deployed.keys())
    if stale:
        raise UsageError(
            f"pipeline {args.name} has no parameter(s) {', '.join(stale)}: "
            "upsert it first (scripts/pipeline.sh upsert)"
        )
    effective = deployed | overrides
    for name in (P.INPUT_DATA, P.TEST_DATA):
        if effective.get(name):
            require_objects(aws, effective[name], name)
    request = {
        "PipelineName": args.name,
        "PipelineParameters": [{"Name": k, "Value": v} for k, v in overrides.items()],
    }
    show_request("StartPipelineExecution", request)
    arn = sm.start_pipeline_execution(**request)["PipelineExecutionArn"]
    say(f"started {arn}")
    result(arn)
    if args.wait:
        follow(sm, arn, wait=True, poll=args.poll)


# ------------------------------------------------------------------------------------------------ status


def latest_execution(sm, name: str) -> str:
    if describe_or_none(sm.describe_pipeline, PipelineName=name) is None:
        raise UsageError(f"no pipeline named {name}: create it first (scripts/pipeline.sh upsert)")
    summaries = sm.list_pipeline_executions(PipelineName=name).get("PipelineExecutionSummaries", [])
    if not summaries:
        raise UsageError(f"pipeline {name} has no execution yet: scripts/pipeline.sh start")
    return max(summaries, key=lambda s: s["StartTime"])["PipelineExecutionArn"]


def step_line(step: dict, seconds: float | None = None) -> str:
    """``Train: Succeeded``, with the failure reason, a condition's outcome or a Fail step's message
    (and ``in 12.3 s`` after the state, given the step's wall time)."""
    line = f"{step['StepName']}: {step.get('StepStatus', '?')}"
    if seconds is not None:
        line += f" in {seconds:.1f} s"
    metadata = step.get("Metadata") or {}
    if "Condition" in metadata:
        line += f" (outcome {metadata['Condition'].get('Outcome')})"
    details = [step.get("FailureReason"), (metadata.get("Fail") or {}).get("ErrorMessage")]
    for detail in dict.fromkeys(d for d in details if d):
        line += f" - {detail}"
    return line


def steps(sm, arn: str) -> list[dict]:
    out: list[dict] = []
    kwargs = {"PipelineExecutionArn": arn, "SortOrder": "Ascending"}
    while True:
        page = sm.list_pipeline_execution_steps(**kwargs)
        out += page.get("PipelineExecutionSteps", [])
        if not page.get("NextToken"):
            return out
        kwargs["NextToken"] = page["NextToken"]


def follow(sm, arn: str, wait: bool, poll: float = POLL_SECONDS) -> dict:
    """Print the execution's and each step's state (each change, when waiting); Failure if it failed."""
    shown: set[str] = set()
    while True:
        desc = sm.describe_pipeline_execution(PipelineExecutionArn=arn)
        status = desc["PipelineExecutionStatus"]
        lines = [f"execution {arn}: {status}"] + [f"  {step_line(s)}" for s in steps(sm, arn)]
        for line in lines:
            if line not in shown:
                result(line)
                shown.add(line)
        if status not in RUNNING or not wait:
            break
        time.sleep(poll)
    if status in ("Failed", "Stopped"):
        raise Failure(
            f"pipeline execution {status.lower()}: {desc.get('FailureReason') or 'no FailureReason given'}"
        )
    return desc


def status(args: argparse.Namespace) -> None:
    if args.execution and not re.match(r"^arn:aws[a-z-]*:sagemaker:", args.execution):
        raise UsageError(f"--execution {args.execution!r} is not a pipeline execution ARN")
    aws = connect(args.region)
    sm = aws.client("sagemaker")
    follow(sm, args.execution or latest_execution(sm, args.name), wait=args.wait, poll=args.poll)


# ------------------------------------------------------------------------------------------------- local


def run_local(args: argparse.Namespace) -> None:
    from . import local

    known = P.parameters(data_uri="", triton=True)  # the deployed pipeline's own list is checked below
    overrides = P.check_overrides(key_values(args.param, "--param"), known)
    aws = connect(args.region)
    args.region = aws.region
    settings = settings_for(args, None)
    check_bucket(aws, settings.bucket)
    for name in (P.INPUT_DATA, P.TEST_DATA):
        require_objects(aws, overrides.get(name, settings.data_uri), name)
    given = {"train_image": args.train_image, "serve_image": args.serve_image}
    local.run(settings, local.deployed_settings(settings, aws.account, given), overrides, step_line)


# -------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    def body() -> None:
        check_args(args)
        if args.definition:
            check_definition_inputs(args)
            result(json.dumps(json.loads(definition(settings_for(args, None))), indent=2))
        elif args.local:
            run_local(args)
        else:
            {"upsert": upsert, "start": start, "status": status}[args.command](args)

    return run_main("pipeline", body)
