"""scripts/monitor.sh: run the `monitor` analysis of an endpoint's data capture every hour, with alarms.

    scripts/monitor.sh create --endpoint ncf --output s3://BUCKET/ncf/monitoring \\
        [--baseline S3_PREFIX|DIR] [--alarm-action SNS_TOPIC_ARN]
    scripts/monitor.sh status --endpoint ncf [--last 5]
    scripts/monitor.sh delete --endpoint ncf

create: an EventBridge Scheduler schedule NAME-monitor, at ten past every hour (cron(10 * * * ? *), UTC),
whose target is the universal target sagemaker:createProcessingJob: a processing job
NAME-mon-<execution id> on the serving image (entrypoint `monitor --put-metric-data`) reading the
endpoint's capture (CAPTURE/NAME/, CAPTURE = the endpoint's DataCaptureConfig by default) and the baseline
prefix (statistics.json, constraints.json, from `monitor baseline`; by default the one registered with the
model package the endpoint serves, by the pipeline's Baseline step), with end_time = the scheduled time and
NCF_MONITOR_WINDOW_SECONDS=3600 (the window: the last full clock hour), writing to OUTPUT/NAME/<execution
id>/. Then two CloudWatch alarms on the metrics the job puts (namespace /aws/sagemaker/Endpoint/data-metrics,
dimensions Endpoint=NAME, MonitoringSchedule=NAME-monitor): NAME-monitor-violations (violations above
--max-violations in an hour) and NAME-monitor-not-running (no `requests` datum for three hours: the runs
fail or do not start). Re-running create updates both. The scheduler assumes --scheduler-role-arn (default:
--role-arn; the stack's role trusts scheduler.amazonaws.com) to create the job, which runs as --role-arn.
status: the schedule, the alarms' states, and the last runs (processing jobs NAME-mon-*) with their windows
and violations (read from each job's constraint_violations.json).
delete: the schedule and the alarms (past jobs and their S3 results stay).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .aws_client import (
    SERVE_INSTANCE_TYPE,
    SERVE_REPOSITORY,
    Aws,
    UsageError,
    check_bucket,
    check_ecr_image,
    check_name,
    check_role_arn,
    connect,
    default_image,
    describe_or_none,
    error_code,
    parse_s3_uri,
    result,
    role_arn_option,
    run_main,
    say,
    show_request,
)

NAMESPACE = "/aws/sagemaker/Endpoint/data-metrics"  # ncf_sagemaker.contract.MONITOR_NAMESPACE
SCHEDULE_EXPRESSION = "cron(10 * * * ? *)"
WINDOW_SECONDS = 3600
TARGET_ARN = "arn:aws:scheduler:::aws-sdk:sagemaker:createProcessingJob"
EXECUTION_ID = "<aws.scheduler.execution-id>"
SCHEDULED_TIME = "<aws.scheduler.scheduled-time>"
# NAME-mon-<execution id> within a processing job name's 63 characters.
MAX_ENDPOINT_NAME = 24
PROCESSING = "/opt/ml/processing"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="monitor.sh",
        description="Schedule the hourly `monitor` analysis of an endpoint, with CloudWatch alarms.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    sub = p.add_subparsers(dest="action", required=True)
    create = sub.add_parser("create", help="create or update the schedule and the alarms")
    status = sub.add_parser("status", help="the schedule, the alarms and the last runs")
    delete = sub.add_parser("delete", help="delete the schedule and the alarms")
    for q in (create, status, delete):
        q.add_argument("--endpoint", required=True, help=f"endpoint name (at most {MAX_ENDPOINT_NAME} chars)")
        q.add_argument("--region", help="AWS region (default: AWS_REGION / your profile)")
    create.add_argument(
        "--baseline",
        metavar="S3_PREFIX|DIR",
        help="holds statistics.json and constraints.json (a local DIR from `monitor baseline` is uploaded "
        "to OUTPUT/NAME/baseline/); default: the baseline registered with the model package the endpoint "
        "serves (its ModelDataQuality, written by the pipeline's Baseline step)",
    )
    create.add_argument("--output", required=True, metavar="S3_URI", help="results go to OUTPUT/NAME/RUN/")
    create.add_argument("--capture", metavar="S3_URI", help="capture root (default: the endpoint's)")
    create.add_argument("--image", help="image with `monitor` (default: ncf-serve:latest in ECR)")
    role_arn_option(create)
    create.add_argument(
        "--scheduler-role-arn", help="role EventBridge Scheduler assumes (default --role-arn)"
    )
    create.add_argument("--instance-type", default=SERVE_INSTANCE_TYPE, help=f"default {SERVE_INSTANCE_TYPE}")
    create.add_argument(
        "--max-violations", type=int, default=0, help="alarm when a run finds more (default 0)"
    )
    create.add_argument(
        "--alarm-action", action="append", default=[], metavar="ARN", help="e.g. an SNS topic (repeatable)"
    )
    status.add_argument("--last", type=int, default=5, help="how many runs to show (default 5)")
    return p


def schedule_name(endpoint: str) -> str:
    return f"{endpoint}-monitor"


def alarm_names(endpoint: str) -> list[str]:
    return [f"{endpoint}-monitor-violations", f"{endpoint}-monitor-not-running"]


def job_prefix(endpoint: str) -> str:
    return f"{endpoint}-mon-"


def check_args(args: argparse.Namespace) -> None:
    check_name(args.endpoint, "--endpoint", MAX_ENDPOINT_NAME)
    if args.action == "status" and args.last < 1:
        raise UsageError(f"--last must be at least 1, got {args.last}")
    if args.action != "create":
        return
    check_role_arn(args.role_arn)
    if args.scheduler_role_arn:
        check_role_arn(args.scheduler_role_arn)
    if args.max_violations < 0:
        raise UsageError(f"--max-violations must be 0 or more, got {args.max_violations}")
    if args.baseline and not args.baseline.startswith("s3://"):
        local = Path(args.baseline)
        for name in ("statistics.json", "constraints.json"):
            if not (local / name).is_file():
                raise UsageError(
                    f"--baseline {local} has no {name}: write it with `monitor baseline --output DIR`"
                )
    for flag in ("baseline", "output", "capture"):
        value = getattr(args, flag)
        if value and (flag != "baseline" or value.startswith("s3://")):  # a local --baseline: checked above
            parse_s3_uri(value, f"--{flag}")
    for arn in args.alarm_action:
        if not arn.startswith("arn:"):
            raise UsageError(f"--alarm-action {arn!r} is not an ARN (e.g. arn:aws:sns:REGION:ACCOUNT:TOPIC)")


def _uri(uri: str) -> str:
    return uri.rstrip("/")


def processing_job(args: argparse.Namespace, image: str, capture: str) -> dict:
    """The CreateProcessingJob request the schedule sends (with the scheduler's placeholders)."""
    endpoint = args.endpoint
    data = f"{PROCESSING}/endpointdata"
    s3_input = {"S3DataType": "S3Prefix", "S3InputMode": "File", "S3DataDistributionType": "FullyReplicated"}
    return {
        "ProcessingJobName": f"{job_prefix(endpoint)}{EXECUTION_ID}",
        "RoleArn": args.role_arn,
        "AppSpecification": {
            "ImageUri": image,
            "ContainerEntrypoint": ["monitor"],
            "ContainerArguments": ["--put-metric-data"],
        },
        "ProcessingInputs": [
            {
                "InputName": "endpointdata",
                "S3Input": {"S3Uri": f"{_uri(capture)}/{endpoint}/", "LocalPath": f"{data}/{endpoint}"}
                | s3_input,
            },
            {
                "InputName": "baseline",
                "S3Input": {"S3Uri": _uri(args.baseline) + "/", "LocalPath": f"{PROCESSING}/baseline"}
                | s3_input,
            },
        ],
        "ProcessingOutputConfig": {
            "Outputs": [
                {
                    "OutputName": "result",
                    "S3Output": {
                        "S3Uri": f"{_uri(args.output)}/{endpoint}/{EXECUTION_ID}",
                        "LocalPath": f"{PROCESSING}/resultdata",
                        "S3UploadMode": "EndOfJob",
                    },
                }
            ]
        },
        "ProcessingResources": {
            "ClusterConfig": {"InstanceCount": 1, "InstanceType": args.instance_type, "VolumeSizeInGB": 30}
        },
        "StoppingCondition": {"MaxRuntimeInSeconds": 3000},
        "Environment": {
            "dataset_format": json.dumps(
                {"sagemakerCaptureJson": {"captureIndexNames": ["endpointInput", "endpointOutput"]}}
            ),
            "dataset_source": data,
            "sagemaker_endpoint_name": endpoint,
            "sagemaker_monitoring_schedule_name": schedule_name(endpoint),
            "end_time": SCHEDULED_TIME,
            "NCF_MONITOR_WINDOW_SECONDS": str(WINDOW_SECONDS),
            "baseline_statistics": f"{PROCESSING}/baseline/statistics.json",
            "baseline_constraints": f"{PROCESSING}/baseline/constraints.json",
            "output_path": f"{PROCESSING}/resultdata",
            "publish_cloudwatch_metrics": "Disabled",
        },
        "Tags": [{"Key": "ncf:monitored-endpoint", "Value": endpoint}],
    }


def alarms(args: argparse.Namespace) -> list[dict]:
    dimensions = [
        {"Name": "Endpoint", "Value": args.endpoint},
        {"Name": "MonitoringSchedule", "Value": schedule_name(args.endpoint)},
    ]
    common = {
        "Namespace": NAMESPACE,
        "Dimensions": dimensions,
        "Period": WINDOW_SECONDS,
        "AlarmActions": args.alarm_action,
    }
    violations, not_running = alarm_names(args.endpoint)
    return [
        common
        | {
            "AlarmName": violations,
            "AlarmDescription": f"monitor.sh: an hourly analysis of {args.endpoint} found violations "
            "(status: scripts/monitor.sh status)",
            "MetricName": "violations",
            "Statistic": "Maximum",
            "EvaluationPeriods": 1,
            "Threshold": float(args.max_violations),
            "ComparisonOperator": "GreaterThanThreshold",
            "TreatMissingData": "notBreaching",
        },
        common
        | {
            "AlarmName": not_running,
            "AlarmDescription": f"monitor.sh: no analysis of {args.endpoint} finished for three hours",
            "MetricName": "requests",
            "Statistic": "SampleCount",
            "EvaluationPeriods": 3,
            "Threshold": 1.0,
            "ComparisonOperator": "LessThanThreshold",
            "TreatMissingData": "breaching",
        },
    ]


def endpoint_capture(sm, endpoint: str) -> str | None:
    desc = describe_or_none(sm.describe_endpoint, EndpointName=endpoint)
    if desc is None:
        raise UsageError(f"no endpoint named {endpoint}: deploy it first (scripts/deploy.sh)")
    capture = desc.get("DataCaptureConfig") or {}
    return capture.get("DestinationS3Uri") if capture.get("EnableCaptureSetting", True) else None


def served_baseline(sm, endpoint: str) -> str:
    """The baseline prefix registered with the model package the endpoint's first variant serves.

    The pipeline's Baseline step writes ``monitor baseline``'s files and its Register step records them as
    the package's ``ModelMetrics.ModelDataQuality``: so the schedule compares the endpoint with the model
    it actually serves, not with whichever baseline was made last. With a canary, the first variant (the
    primary) is the reference.
    """
    config = sm.describe_endpoint(EndpointName=endpoint)["EndpointConfigName"]
    variant = sm.describe_endpoint_config(EndpointConfigName=config)["ProductionVariants"][0]
    model = sm.describe_model(ModelName=variant["ModelName"])
    container = model.get("PrimaryContainer") or (model.get("Containers") or [{}])[0]
    package = container.get("ModelPackageName")
    if not package:
        raise UsageError(
            f"endpoint {endpoint} serves model {variant['ModelName']}, not a registered model package, so "
            "it has no registered baseline: pass --baseline (a DIR from `monitor baseline --model "
            "model.tar.gz --output DIR`, or an S3 prefix holding its files)"
        )
    quality = (
        sm.describe_model_package(ModelPackageName=package)
        .get("ModelMetrics", {})
        .get("ModelDataQuality", {})
    )
    uris = [quality.get(kind, {}).get("S3Uri", "") for kind in ("Statistics", "Constraints")]
    prefixes = {uri.rpartition("/")[0] for uri in uris}
    names = [uri.rpartition("/")[2] for uri in uris]
    if not all(uris) or len(prefixes) != 1 or names != ["statistics.json", "constraints.json"]:
        raise UsageError(
            f"endpoint {endpoint} serves {package}, which has no monitoring baseline (ModelDataQuality "
            "statistics.json and constraints.json under one prefix; the pipeline's Baseline step registers "
            "them): pass --baseline"
        )
    (prefix,) = prefixes
    say(f"baseline of {package}: {prefix}/")
    return prefix


def upload_baseline(aws: Aws, local: Path, prefix: str) -> str:
    """Upload ``monitor baseline``'s two files to ``prefix``; returns it."""
    bucket, key = parse_s3_uri(prefix, "--output")
    for name in ("statistics.json", "constraints.json"):
        say(f"PutObject {prefix}/{name}")
        aws.client("s3").upload_file(str(local / name), bucket, f"{key.rstrip('/')}/{name}".lstrip("/"))
    return prefix


def check_baseline(aws: Aws, prefix: str) -> None:
    from botocore.exceptions import ClientError

    bucket, key = parse_s3_uri(prefix, "--baseline")
    check_bucket(aws, bucket)
    for name in ("statistics.json", "constraints.json"):
        try:
            aws.client("s3").head_object(Bucket=bucket, Key=f"{key.rstrip('/')}/{name}".lstrip("/"))
        except ClientError as exc:
            if error_code(exc) in ("404", "NoSuchKey"):
                raise UsageError(
                    f"--baseline {prefix} has no {name}: write it with `monitor baseline` and upload it"
                ) from None
            raise


def get_schedule(scheduler, name: str) -> dict | None:
    from botocore.exceptions import ClientError

    try:
        return scheduler.get_schedule(Name=name)
    except ClientError as exc:
        if error_code(exc) == "ResourceNotFoundException":
            return None
        raise


def create(aws: Aws, args: argparse.Namespace) -> None:
    sm = aws.client("sagemaker")
    capture = endpoint_capture(sm, args.endpoint)
    capture = args.capture or capture
    if not capture:
        raise UsageError(
            f"endpoint {args.endpoint} has no data capture: redeploy with --data-capture s3://… "
            "(or pass --capture)"
        )
    check_bucket(aws, parse_s3_uri(capture, "--capture")[0])
    check_bucket(aws, parse_s3_uri(args.output, "--output")[0])
    if not args.baseline:
        args.baseline = served_baseline(sm, args.endpoint)
    elif not args.baseline.startswith("s3://"):  # checked above: a local directory with both files
        args.baseline = upload_baseline(
            aws, Path(args.baseline), f"{_uri(args.output)}/{args.endpoint}/baseline"
        )
    check_baseline(aws, args.baseline)
    image = args.image or default_image(aws, SERVE_REPOSITORY)
    if args.image:
        check_ecr_image(aws, image)

    scheduler = aws.client("scheduler")
    name = schedule_name(args.endpoint)
    request = {
        "Name": name,
        "Description": f"monitor.sh: hourly `monitor` analysis of endpoint {args.endpoint}",
        "ScheduleExpression": SCHEDULE_EXPRESSION,
        "ScheduleExpressionTimezone": "UTC",
        "FlexibleTimeWindow": {"Mode": "OFF"},
        "State": "ENABLED",
        "Target": {
            "Arn": TARGET_ARN,
            "RoleArn": args.scheduler_role_arn or args.role_arn,
            "Input": json.dumps(processing_job(args, image, capture)),
            "RetryPolicy": {"MaximumRetryAttempts": 3, "MaximumEventAgeInSeconds": 3600},
        },
    }
    show_request("CreateSchedule", request | {"Target": {**request["Target"], "Input": "(the job below)"}})
    show_request("  CreateProcessingJob", processing_job(args, image, capture))
    if get_schedule(scheduler, name) is None:
        scheduler.create_schedule(**request)
    else:
        say(f"schedule {name} exists: UpdateSchedule")
        scheduler.update_schedule(**request)
    result(name)
    cloudwatch = aws.client("cloudwatch")
    for alarm in alarms(args):
        say(
            f"PutMetricAlarm {alarm['AlarmName']}: {alarm['MetricName']} {alarm['ComparisonOperator']} "
            f"{alarm['Threshold']:g}"
        )
        cloudwatch.put_metric_alarm(**alarm)
        result(alarm["AlarmName"])


def read_violations(aws: Aws, job: dict) -> str:
    """'N violations: check on feature, ...' from the job's constraint_violations.json, or why not."""
    from botocore.exceptions import ClientError

    outputs = job.get("ProcessingOutputConfig", {}).get("Outputs", [])
    if not outputs:
        return "no output"
    bucket, key = parse_s3_uri(outputs[0]["S3Output"]["S3Uri"])
    try:
        body = aws.client("s3").get_object(Bucket=bucket, Key=f"{key.rstrip('/')}/constraint_violations.json")
    except ClientError as exc:
        if error_code(exc) in ("404", "NoSuchKey"):
            return "no constraint_violations.json"
        raise
    found = json.loads(body["Body"].read()).get("violations", [])
    if not found:
        return "0 violations"
    listed = ", ".join(f"{v.get('constraint_check_type')} on {v.get('feature_name')}" for v in found)
    return f"{len(found)} violations: {listed}"


def status(aws: Aws, args: argparse.Namespace) -> None:
    scheduler, sm = aws.client("scheduler"), aws.client("sagemaker")
    schedule = get_schedule(scheduler, schedule_name(args.endpoint))
    if schedule is None:
        say(f"no schedule {schedule_name(args.endpoint)} (create: scripts/monitor.sh create ...)")
    else:
        say(f"schedule {schedule['Name']}: {schedule['State']}, {schedule['ScheduleExpression']} UTC")
        result(f"schedule {schedule['Name']} {schedule['State']}")
    described = aws.client("cloudwatch").describe_alarms(AlarmNames=alarm_names(args.endpoint))
    for alarm in described["MetricAlarms"]:
        result(f"alarm {alarm['AlarmName']} {alarm['StateValue']}")
    jobs = []
    for page in sm.get_paginator("list_processing_jobs").paginate(
        NameContains=job_prefix(args.endpoint), SortBy="CreationTime", SortOrder="Descending"
    ):
        jobs += [
            j
            for j in page["ProcessingJobSummaries"]
            if j["ProcessingJobName"].startswith(job_prefix(args.endpoint))
        ]
    jobs = sorted(jobs, key=lambda j: j["CreationTime"], reverse=True)[: args.last]
    if not jobs:
        say("no runs yet")
    for summary in jobs:
        job = sm.describe_processing_job(ProcessingJobName=summary["ProcessingJobName"])
        state = job["ProcessingJobStatus"]
        env = job.get("Environment", {})
        window = f"window ending {env.get('end_time', '?')}"
        if state == "Completed":
            detail = read_violations(aws, job)
        elif state == "Failed":
            detail = f"failed: {job.get('FailureReason') or job.get('ExitMessage') or 'no reason given'}"
        else:
            detail = state
        result(f"run {job['ProcessingJobName']} {state} ({window}): {detail}")


def delete(aws: Aws, args: argparse.Namespace) -> None:
    scheduler = aws.client("scheduler")
    name = schedule_name(args.endpoint)
    cloudwatch = aws.client("cloudwatch")
    existing = [
        a["AlarmName"]
        for a in cloudwatch.describe_alarms(AlarmNames=alarm_names(args.endpoint))["MetricAlarms"]
    ]
    schedule = get_schedule(scheduler, name)
    if schedule is None and not existing:
        say(f"nothing to delete for endpoint {args.endpoint}: no schedule {name}, no alarms")
        return
    if schedule is not None:
        say(f"DeleteSchedule {name}")
        scheduler.delete_schedule(Name=name)
        result(name)
    if existing:
        say(f"DeleteAlarms {', '.join(existing)}")
        cloudwatch.delete_alarms(AlarmNames=existing)
        for alarm in existing:
            result(alarm)
    say("past runs (processing jobs) and their results in S3 are kept")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    def body() -> None:
        check_args(args)  # nothing is created or changed until every check passes
        aws = connect(args.region)
        {"create": create, "status": status, "delete": delete}[args.action](aws, args)

    return run_main("monitor", body)
