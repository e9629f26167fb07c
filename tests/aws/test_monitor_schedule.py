"""monitor.sh create|status|delete against the moto server: an EventBridge Scheduler schedule whose target
creates the monitor's processing job, two CloudWatch alarms, the runs' violations, and the refusals.

moto stores schedules but never fires them: the test fires one itself, sending the schedule's Input (with
the scheduler's placeholders filled in as Scheduler would) to CreateProcessingJob, which also proves the
Input is a valid request, then writes the run's constraint_violations.json where the job would.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from tests.support.moto import BUCKET, REGISTRY, ROLE, Aws, ok, refused

CAPTURE = f"s3://{BUCKET}/ncf/capture"
BASELINE = f"s3://{BUCKET}/ncf/baseline"
OUTPUT = f"s3://{BUCKET}/ncf/monitoring"


def clients(aws: Aws):
    return (
        aws.session.client("scheduler", endpoint_url=aws.server.url),
        aws.session.client("cloudwatch", endpoint_url=aws.server.url),
    )


def deploy_with_capture(aws: Aws, endpoint: str = "ncf", capture: bool = True) -> None:
    aws.push_fake_image("ncf-serve")
    extra = ["--data-capture", CAPTURE] if capture else []
    ok(aws.run("deploy", "--endpoint", endpoint, "--model-data", aws.put("m/model.tar.gz"), *extra))
    aws.put("ncf/baseline/statistics.json", b"{}")
    aws.put("ncf/baseline/constraints.json", b"{}")


def fire(aws: Aws, schedule: dict, execution_id: str, scheduled: str) -> dict:
    """What EventBridge Scheduler does at the scheduled time: the universal target's API call."""
    body = schedule["Target"]["Input"]
    body = body.replace("<aws.scheduler.execution-id>", execution_id)
    body = body.replace("<aws.scheduler.scheduled-time>", scheduled)
    job = json.loads(body)
    aws.sm.create_processing_job(**job)
    return job


def test_create_status_delete(aws):
    deploy_with_capture(aws)
    scheduler, cloudwatch = clients(aws)
    proc = aws.run("monitor", "create", "--endpoint", "ncf", "--baseline", BASELINE + "/", "--output", OUTPUT)
    assert ok(proc) == ["ncf-monitor", "ncf-monitor-violations", "ncf-monitor-not-running"]

    schedule = scheduler.get_schedule(Name="ncf-monitor")
    assert schedule["ScheduleExpression"] == "cron(10 * * * ? *)"
    assert schedule["Target"]["Arn"] == "arn:aws:scheduler:::aws-sdk:sagemaker:createProcessingJob"
    assert schedule["Target"]["RoleArn"] == ROLE
    job = json.loads(schedule["Target"]["Input"])
    assert job["ProcessingJobName"] == "ncf-mon-<aws.scheduler.execution-id>"
    assert job["AppSpecification"]["ContainerEntrypoint"] == ["monitor"]
    assert job["AppSpecification"]["ContainerArguments"] == ["--put-metric-data"]
    assert job["AppSpecification"]["ImageUri"].endswith("/ncf-serve:latest")
    inputs = {i["InputName"]: i["S3Input"] for i in job["ProcessingInputs"]}
    assert inputs["endpointdata"]["S3Uri"] == f"{CAPTURE}/ncf/"  # the endpoint's own DataCaptureConfig
    assert inputs["endpointdata"]["LocalPath"] == "/opt/ml/processing/endpointdata/ncf"
    assert inputs["baseline"]["S3Uri"] == BASELINE + "/"
    env = job["Environment"]
    assert env["dataset_source"] == "/opt/ml/processing/endpointdata"
    assert env["sagemaker_endpoint_name"] == "ncf"
    assert env["end_time"] == "<aws.scheduler.scheduled-time>"
    assert env["NCF_MONITOR_WINDOW_SECONDS"] == "3600"
    assert env["baseline_statistics"] == "/opt/ml/processing/baseline/statistics.json"

    alarms = {a["AlarmName"]: a for a in cloudwatch.describe_alarms()["MetricAlarms"]}
    violations = alarms["ncf-monitor-violations"]
    # The names `monitor` publishes under (docs/monitoring.md, monitor_job.metric_data).
    assert violations["Namespace"] == "/aws/sagemaker/Endpoint/data-metrics"
    assert violations["MetricName"] == "violations"
    assert {d["Name"]: d["Value"] for d in violations["Dimensions"]} == {
        "Endpoint": "ncf",
        "MonitoringSchedule": "ncf-monitor",
    }
    assert (violations["ComparisonOperator"], violations["Threshold"]) == ("GreaterThanThreshold", 0.0)
    assert alarms["ncf-monitor-not-running"]["TreatMissingData"] == "breaching"

    # Re-running create updates in place.
    proc = aws.run(
        "monitor", "create", "--endpoint", "ncf", "--baseline", BASELINE, "--output", OUTPUT,
        "--max-violations", "2", "--alarm-action", "arn:aws:sns:us-east-1:123456789012:ops",
    )  # fmt: skip
    ok(proc)
    assert "UpdateSchedule" in proc.stderr
    violations = cloudwatch.describe_alarms(AlarmNames=["ncf-monitor-violations"])["MetricAlarms"][0]
    assert violations["Threshold"] == 2.0
    assert violations["AlarmActions"] == ["arn:aws:sns:us-east-1:123456789012:ops"]

    # Two runs, as the scheduler would start them; the second finds two violations.
    schedule = scheduler.get_schedule(Name="ncf-monitor")
    for run, found in (("a1b2c3d4", []), ("e5f6a7b8", ["cold_start_check", "baseline_drift_check"])):
        job = fire(aws, schedule, run, "2026-12-05T14:10:00Z")
        out = job["ProcessingOutputConfig"]["Outputs"][0]["S3Output"]["S3Uri"]
        assert out == f"{OUTPUT}/ncf/{run}"
        document = {"violations": [{"feature_name": "f", "constraint_check_type": c} for c in found]}
        aws.put(out.split(f"{BUCKET}/", 1)[1] + "/constraint_violations.json", json.dumps(document).encode())
    lines = ok(aws.run("monitor", "status", "--endpoint", "ncf"))
    assert lines[0] == "schedule ncf-monitor ENABLED"
    assert {line.rsplit(" ", 1)[0] for line in lines[1:3]} == {
        "alarm ncf-monitor-violations",
        "alarm ncf-monitor-not-running",
    }
    runs = [line for line in lines if line.startswith("run ")]
    assert len(runs) == 2
    assert any(
        "ncf-mon-e5f6a7b8" in r and "2 violations: cold_start_check on f, baseline_drift_check on f" in r
        for r in runs
    ), runs
    assert any("ncf-mon-a1b2c3d4" in r and ": 0 violations" in r for r in runs), runs
    assert all("window ending 2026-12-05T14:10:00Z" in r for r in runs), runs

    proc = aws.run("monitor", "delete", "--endpoint", "ncf")
    assert ok(proc) == ["ncf-monitor", "ncf-monitor-violations", "ncf-monitor-not-running"]
    assert scheduler.list_schedules()["Schedules"] == []
    assert cloudwatch.describe_alarms()["MetricAlarms"] == []
    assert "nothing to delete" in aws.run("monitor", "delete", "--endpoint", "ncf").stderr


@pytest.mark.parametrize(
    ("setup", "extra", "message"),
    [
        ("none", [], "no endpoint named ncf: deploy it first"),
        ("no-capture", [], "has no data capture: redeploy with --data-capture"),
        ("no-baseline", [], "has no statistics.json"),
        ("capture", ["--max-violations", "-1"], "--max-violations must be 0 or more"),
        ("capture", ["--alarm-action", "topic"], "is not an ARN"),
        ("capture", ["--output", "bucket/x"], "is not of the form s3://"),
    ],
)
def test_bad_input_creates_nothing(aws, setup, extra, message):
    if setup != "none":
        deploy_with_capture(aws, capture=setup != "no-capture")
    if setup == "no-baseline":
        aws.s3.delete_object(Bucket=BUCKET, Key="ncf/baseline/statistics.json")
    args = ["--endpoint", "ncf", "--baseline", BASELINE, "--output", OUTPUT, *extra]
    refused(aws.run("monitor", "create", *args), message)
    scheduler, cloudwatch = clients(aws)
    assert scheduler.list_schedules()["Schedules"] == []
    assert cloudwatch.describe_alarms()["MetricAlarms"] == []


def test_long_endpoint_names_and_bad_last_are_refused(aws):
    refused(aws.run("monitor", "status", "--endpoint", "n" * 25), "at most 24")
    refused(aws.run("monitor", "status", "--endpoint", "ncf", "--last", "0"), "--last must be at least 1")


def test_the_window_is_the_last_full_hour_before_the_scheduled_time():
    from ncf_sagemaker.monitor_job import aligned_window

    window = aligned_window(datetime(2026, 12, 5, 14, 10, 3, tzinfo=UTC), "3600")
    assert (window.start, window.end) == (
        datetime(2026, 12, 5, 13, tzinfo=UTC),
        datetime(2026, 12, 5, 14, tzinfo=UTC),
    )


@pytest.mark.parametrize("seconds", ["0", "-3600", "hourly"])
def test_a_bad_window_length_is_refused(seconds):
    from ncf_sagemaker.monitor_job import MonitorError, aligned_window

    with pytest.raises(MonitorError, match="NCF_MONITOR_WINDOW_SECONDS must be a whole number"):
        aligned_window(datetime(2026, 12, 5, 14, 10, tzinfo=UTC), seconds)


def test_a_local_baseline_directory_is_uploaded_beside_the_output(aws, tmp_path):
    """`monitor baseline --output DIR`, then `monitor.sh create --baseline DIR`: no upload step of its own."""
    deploy_with_capture(aws)
    (tmp_path / "statistics.json").write_text('{"recommender": {}}')
    refused(
        aws.run("monitor", "create", "--endpoint", "ncf", "--baseline", str(tmp_path), "--output", OUTPUT),
        "has no constraints.json: write it with `monitor baseline --output DIR`",
    )
    (tmp_path / "constraints.json").write_text('{"monitoring_config": {}}')
    ok(aws.run("monitor", "create", "--endpoint", "ncf", "--baseline", str(tmp_path), "--output", OUTPUT))
    key = "ncf/monitoring/ncf/baseline/statistics.json"
    assert aws.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b'{"recommender": {}}'
    scheduler, _ = clients(aws)
    job = json.loads(scheduler.get_schedule(Name="ncf-monitor")["Target"]["Input"])
    inputs = {i["InputName"]: i["S3Input"]["S3Uri"] for i in job["ProcessingInputs"]}
    assert inputs["baseline"] == f"{OUTPUT}/ncf/baseline/"


def deploy_package(aws: Aws, baseline: str | None) -> str:
    """An approved package as the pipeline registers it (with its Baseline step's files when given), deployed
    with data capture by deploy.sh --model-package-group."""
    aws.push_fake_image("ncf-serve")
    group = "ncf-models"
    aws.sm.create_model_package_group(ModelPackageGroupName=group)
    quality = {
        kind: {"ContentType": "application/json", "S3Uri": f"{baseline}/{name}"}
        for kind, name in (("Statistics", "statistics.json"), ("Constraints", "constraints.json"))
    }
    arn = aws.sm.create_model_package(
        ModelPackageGroupName=group,
        ModelApprovalStatus="Approved",
        InferenceSpecification={
            "Containers": [
                {"Image": f"{REGISTRY}/ncf-serve:latest", "ModelDataUrl": aws.put("m/model.tar.gz")}
            ],
            "SupportedContentTypes": ["application/json"],
            "SupportedResponseMIMETypes": ["application/json"],
        },
        **({"ModelMetrics": {"ModelDataQuality": quality}} if baseline else {}),
    )["ModelPackageArn"]
    args = ["--endpoint", "ncf", "--model-package-group", group, "--data-capture", CAPTURE]
    ok(aws.run("deploy", *args))
    return arn


def test_the_baseline_defaults_to_the_one_registered_with_the_served_package(aws):
    registered = f"s3://{BUCKET}/ncf/pipeline/baseline/exec1"
    arn = deploy_package(aws, registered)
    aws.put("ncf/pipeline/baseline/exec1/statistics.json", b"{}")
    aws.put("ncf/pipeline/baseline/exec1/constraints.json", b"{}")
    proc = aws.run("monitor", "create", "--endpoint", "ncf", "--output", OUTPUT)
    ok(proc)
    assert f"baseline of {arn}: {registered}/" in proc.stderr
    scheduler, _ = clients(aws)
    job = json.loads(scheduler.get_schedule(Name="ncf-monitor")["Target"]["Input"])
    inputs = {i["InputName"]: i["S3Input"]["S3Uri"] for i in job["ProcessingInputs"]}
    assert inputs["baseline"] == f"{registered}/"


@pytest.mark.parametrize(
    ("deployed", "message"),
    [
        ("model-data", "serves model ncf-"),
        ("package-without-baseline", "which has no monitoring baseline (ModelDataQuality"),
        ("baseline-files-missing", "has no statistics.json"),
    ],
)
def test_without_a_baseline_to_find_create_is_refused(aws, deployed, message):
    if deployed == "model-data":
        deploy_with_capture(aws)
    else:
        deploy_package(aws, f"s3://{BUCKET}/gone" if deployed == "baseline-files-missing" else None)
    refused(aws.run("monitor", "create", "--endpoint", "ncf", "--output", OUTPUT), message)
    scheduler, cloudwatch = clients(aws)
    assert scheduler.list_schedules()["Schedules"] == []
    assert cloudwatch.describe_alarms()["MetricAlarms"] == []
