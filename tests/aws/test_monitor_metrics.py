"""``monitor --put-metric-data``: our own schedule's figures reach CloudWatch (moto), with the dimensions
Model Monitor recommends; Model Monitor's own runs leave them in the metrics file instead."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from ncf_sagemaker import contract, monitor_job
from tests.serving.test_monitor_program import ENDPOINT, HOUR, VARIANT, baseline_dir, json_record
from tests.support import capture
from tests.support.moto import Aws


@pytest.fixture
def cloud_env(aws: Aws, monkeypatch, tmp_path):
    for key, value in aws.env.items():
        if key.startswith("AWS_"):
            monkeypatch.setenv(key, value)
    monkeypatch.setenv(contract.BASE_DIR_ENV, str(tmp_path / "opt-ml"))
    for name in (contract.MONITOR_PUBLISH_METRICS_ENV, contract.MONITOR_DATASET_FORMAT_ENV, "output_path"):
        monkeypatch.delenv(name, raising=False)
    return aws


def test_put_metric_data_publishes_the_window_figures(cloud_env: Aws, tmp_path):
    lines = [
        (HOUR + timedelta(minutes=n), json_record({"users": [1 + n]}, HOUR + timedelta(minutes=n)))
        for n in range(6)
    ]
    capture.write(tmp_path / "capture", ENDPOINT, VARIANT, lines)
    base = baseline_dir(tmp_path)
    argv = [
        "--capture", str(tmp_path / "capture"), "--endpoint", ENDPOINT, "--output", str(tmp_path / "out"),
        "--start", "2024-05-01T10:00:00Z", "--end", "2024-05-01T11:00:00Z",
        "--baseline-statistics", str(base / "statistics.json"),
        "--baseline-constraints", str(base / "constraints.json"),
        "--schedule-name", "ncf-hourly", "--put-metric-data", "--namespace", "ncf/monitoring",
    ]  # fmt: skip
    assert monitor_job.main(argv) == 0
    cw = cloud_env.session.client("cloudwatch", endpoint_url=cloud_env.server.url)
    names = {m["MetricName"] for m in cw.list_metrics(Namespace="ncf/monitoring")["Metrics"]}
    assert {"requests", "unknown_user_share", "violations", "recommend_head_share"} <= names
    dims = [{"Name": "Endpoint", "Value": ENDPOINT}, {"Name": "MonitoringSchedule", "Value": "ncf-hourly"}]
    stats = cw.get_metric_statistics(
        Namespace="ncf/monitoring",
        MetricName="requests",
        Dimensions=dims,
        StartTime=datetime(2024, 5, 1, 10, tzinfo=UTC),
        EndTime=datetime(2024, 5, 1, 12, tzinfo=UTC),
        Period=3600,
        Statistics=["Sum"],
    )
    assert [p["Sum"] for p in stats["Datapoints"]] == [6.0]
    # without publish_cloudwatch_metrics=Enabled, no metrics file for Model Monitor to publish
    assert not (tmp_path / "opt-ml" / "output" / "metrics").exists()
    assert (
        json.loads((tmp_path / "out" / "statistics.json").read_text())["recommender"]["traffic"]["requests"]
        == 6
    )


def test_put_metric_data_failure_is_reported_after_the_analysis_is_written(
    cloud_env: Aws, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    (tmp_path / "capture").mkdir()
    base = baseline_dir(tmp_path)
    argv = [
        "--capture", str(tmp_path / "capture"), "--output", str(tmp_path / "out"), "--put-metric-data",
        "--baseline-statistics", str(base / "statistics.json"),
    ]  # fmt: skip
    assert monitor_job.main(argv) == 1
    assert "PutMetricData failed" in capsys.readouterr().err
    assert (tmp_path / "out" / "statistics.json").is_file()
