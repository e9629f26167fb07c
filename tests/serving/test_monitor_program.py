"""The ``monitor`` program's analysis without a model or a server: capture records in every encoding, the
time window, Model Monitor's environment and outputs, and the bad input (unknown endpoint, no data, no or
broken baseline, thresholds out of range) refused with a clear message and nothing half-written.

The baseline here is a hand-made one (``ncf_core.monitoring.Window`` fed stand-in answers); the real
model's baseline and real traffic are tests/serving/test_monitor_e2e.py's.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from ncf_core.monitoring import RECOMMEND, SCORES, TOP_ITEMS, Catalogue, Thresholds, Window
from ncf_sagemaker import capture as reader
from ncf_sagemaker import contract, monitor_job
from tests.support import capture

ENDPOINT, VARIANT = "ep", "AllTraffic"
HOUR = datetime(2024, 5, 1, 10, tzinfo=UTC)
USERS, ITEMS = list(range(1, 41)), list(range(100, 160))


def baseline_dir(root: Path, constraints: dict | None = None, name: str = "baseline") -> Path:
    cat = Catalogue.build(USERS, ITEMS, list(range(len(ITEMS), 0, -1)))
    rng = np.random.default_rng(0)
    window = Window(cat)
    for user in USERS * 3:
        window.query(RECOMMEND, [user])
        window.answer(RECOMMEND, rng.choice(ITEMS, 5, replace=False).tolist(), rng.uniform(0, 1, 5), False)
        window.query(TOP_ITEMS, [user])
        window.answer(TOP_ITEMS, rng.choice(ITEMS, 5, replace=False).tolist())
        window.query(SCORES, [user])
        window.answer(SCORES, None, rng.uniform(0, 1, 5), [False] * 5)
    section = {"kind": "baseline", "settings": {}, "known_ids": cat.to_dict(), **window.summary()}
    out = root / name
    out.mkdir()
    (out / "statistics.json").write_text(json.dumps(monitor_job.statistics_document(section)))
    doc = monitor_job.constraints_document(Thresholds())
    if constraints is not None:
        doc["monitoring_config"]["recommender"].update(constraints)
    (out / "constraints.json").write_text(json.dumps(doc))
    return out


def answer(doc: dict) -> bytes:
    """The server's answer to a JSON request (stand-in scores), in its wire shape."""
    if "pairs" in doc:
        return json.dumps(
            {"scores": [0.5] * len(doc["pairs"]), "fallback": [False] * len(doc["pairs"])}
        ).encode()
    if "users" in doc:
        recs = [
            {"user": u, "items": ITEMS[:3], "scores": [0.9, 0.8, 0.7], "fallback": False}
            for u in doc["users"]
        ]
        return json.dumps({"recommendations": recs}).encode()
    return json.dumps(doc["item"][: doc.get("k", 10)]).encode()


def json_record(doc: dict, when: datetime, reply: bytes | None = None) -> dict:
    body = json.dumps(doc).encode()
    return capture.record(body, "application/json", reply or answer(doc), "application/json", when)


@pytest.fixture
def tree(tmp_path: Path, monkeypatch) -> Path:
    """/opt/ml relocated; Model Monitor's variables cleared (each test sets its own)."""
    for name in (
        contract.MONITOR_DATASET_FORMAT_ENV,
        contract.MONITOR_DATASET_SOURCE_ENV,
        contract.MONITOR_OUTPUT_PATH_ENV,
        contract.MONITOR_START_TIME_ENV,
        contract.MONITOR_END_TIME_ENV,
        contract.MONITOR_BASELINE_STATISTICS_ENV,
        contract.MONITOR_BASELINE_CONSTRAINTS_ENV,
        contract.MONITOR_PUBLISH_METRICS_ENV,
        contract.MONITOR_ENDPOINT_ENV,
        contract.MONITOR_SCHEDULE_ENV,
        monitor_job.MODE_ENV,
        monitor_job.FAIL_ON_VIOLATIONS_ENV,
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(contract.BASE_DIR_ENV, str(tmp_path / "opt-ml"))
    (tmp_path / "capture").mkdir()
    return tmp_path


def model_monitor_env(tree: Path, monkeypatch, baseline: Path, **extra: str) -> None:
    env = {
        contract.MONITOR_DATASET_FORMAT_ENV: json.dumps(
            {"sagemakerCaptureJson": {"captureIndexNames": list(contract.CAPTURE_INDEX_NAMES)}}
        ),
        contract.MONITOR_DATASET_SOURCE_ENV: str(tree / "capture"),
        contract.MONITOR_OUTPUT_PATH_ENV: str(tree / "out"),
        contract.MONITOR_START_TIME_ENV: "2024-05-01T10:00:00Z",
        contract.MONITOR_END_TIME_ENV: "2024-05-01T11:00:00Z",
        contract.MONITOR_BASELINE_STATISTICS_ENV: str(baseline / "statistics.json"),
        contract.MONITOR_BASELINE_CONSTRAINTS_ENV: str(baseline / "constraints.json"),
        contract.MONITOR_PUBLISH_METRICS_ENV: "Disabled",
        contract.MONITOR_ENDPOINT_ENV: ENDPOINT,
        **extra,
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)


def statistics(tree: Path) -> dict:
    return json.loads((tree / "out" / "statistics.json").read_text())["recommender"]


def test_every_encoding_and_kind_is_read_and_the_window_is_respected(tree, monkeypatch, capsys):
    at = [HOUR + timedelta(minutes=n) for n in range(8)]
    error = b'{"error": "unknown item id 7777", "request_id": "r"}'
    lines = [
        (at[1], json_record({"user": [1, 1, 1], "item": [100, 101, 102], "k": 2}, at[1])),
        (at[2], json_record({"users": [2, 999], "k": 3}, at[2])),
        (at[3], json_record({"pairs": [[3, 100], [3, 7777]]}, at[3], error)),
    ]
    jl = b'{"users": [4], "k": 3}\n{"pairs": [[5, 101]]}\n'
    jl_reply = answer({"users": [4]}) + b"\n" + answer({"pairs": [[5, 101]]}) + b"\n"
    when = HOUR + timedelta(minutes=4)
    lines.append((when, capture.record(jl, "application/jsonlines", jl_reply, "application/jsonlines", when)))
    when = HOUR + timedelta(minutes=5)
    lines.append((when, capture.record(b"6\n7\n", "text/csv", b"100,101\n102,103\n", "text/csv", when)))
    when = HOUR + timedelta(minutes=6)
    lines.append((when, capture.record(b"6,100\n", "text/csv", b"0.25\n", "text/csv; charset=utf-8", when)))
    when = HOUR + timedelta(minutes=7)
    lines.append(
        (when, capture.record(b"<xml/>", "application/xml", b'{"error": "415"}', "application/json", when))
    )
    outside = HOUR + timedelta(minutes=59, seconds=59, milliseconds=999)
    late = json_record({"users": [1]}, outside + timedelta(seconds=1))  # 11:00:00.999: the next window
    lines.append((outside, late))  # in the 10:00 folder, inferred at 11:00: not this window's
    far = HOUR + timedelta(hours=5)
    lines.append((far, json_record({"users": [1]}, far)))  # a file the window never opens
    capture.write(tree / "capture", ENDPOINT, VARIANT, lines)
    model_monitor_env(tree, monkeypatch, baseline_dir(tree))
    assert monitor_job.main([]) == 0
    s = statistics(tree)
    t = s["traffic"]
    assert t["requests"] == 7 and t["records"] == 3 + 2 + 2 + 1 + 1
    assert t["request_kinds"] == {"batch": 3, "recommend": 3, "scores": 3, "top_items": 1}
    assert t["content_types"] == {"application/json": 3, "application/jsonlines": 1, "application/xml": 1,
                                  "text/csv": 2}  # fmt: skip
    assert t["response_content_types"]["text/csv"] == 2
    assert t["error_responses"] == 2 and t["rejected_requests"] == 1
    assert t["variants"] == {VARIANT: 7}
    assert s["records_outside_window"] == 1 and s["files"] == 1
    cold = s["cold_start"]
    assert (cold["users"], cold["unknown_users"]) == (9, 1)  # 999 is new
    assert (cold["items"], cold["unknown_items"]) == (3 + 2 + 1 + 1, 1)  # 7777
    assert s["scores"]["scores"]["count"] == 2 and s["scores"]["recommend"]["count"] == 9
    assert s["catalogue"]["top_items"]["lists"] == 1 and s["catalogue"]["recommend"]["lists"] == 5
    assert s["unreadable"]["records"] == 0
    assert "requests 7" in capsys.readouterr().out


def test_corrupted_lines_are_counted_and_sampled_never_fatal(tree, monkeypatch):
    good = [(HOUR + timedelta(minutes=n), json_record({"users": [1 + n % 40]}, HOUR + timedelta(minutes=n)))
            for n in range(20)]  # fmt: skip
    bad = [
        "not json",
        '{"captureData": 1}',
        '{"captureData": {}, "eventMetadata": {"inferenceTime": "yesterday"}}',
    ]
    bad_reply = json_record({"users": [1]}, HOUR, reply=b'{"recommendations": [{"items": [1]}]}')
    lines = good + [(HOUR + timedelta(minutes=30), line) for line in [*bad, bad_reply]]
    capture.write(tree / "capture", ENDPOINT, VARIANT, lines)
    model_monitor_env(tree, monkeypatch, baseline_dir(tree))
    assert monitor_job.main([]) == 0
    s = statistics(tree)
    assert s["traffic"]["requests"] == 20
    assert s["unreadable"]["records"] == 4
    reasons = [x["reason"] for x in s["unreadable"]["samples"]]
    assert any("not a JSON object" in r for r in reasons)
    assert any("inferenceTime 'yesterday'" in r for r in reasons)
    assert any("does not fit its request" in r for r in reasons)
    violations = json.loads((tree / "out" / contract.MONITOR_VIOLATIONS).read_text())["violations"]
    assert [v["constraint_check_type"] for v in violations] == ["data_quality_check"]


def test_no_data_is_a_result_not_a_failure(tree, monkeypatch, capsys):
    model_monitor_env(tree, monkeypatch, baseline_dir(tree))
    assert monitor_job.main([]) == 0
    assert statistics(tree)["status"] == "no data"
    assert json.loads((tree / "out" / contract.MONITOR_VIOLATIONS).read_text()) == {"violations": []}
    assert "Status: no data" in capsys.readouterr().out


def refused(tree: Path, capsys, *fragments: str, argv: list[str] | None = None) -> None:
    """Exit 1, the reason on stderr and in the job's exit message, no output written."""
    assert monitor_job.main(argv or []) == 1
    err = capsys.readouterr().err
    for fragment in fragments:
        assert fragment in err, err
    assert not (tree / "out").exists()
    message = (tree / "opt-ml" / "output" / "message").read_text()
    assert message.strip() == err.strip()[: contract.EXIT_MESSAGE_LIMIT]


def test_unknown_endpoint_is_refused_naming_what_is_there(tree, monkeypatch, capsys):
    capture.write(tree / "capture", "other-endpoint", VARIANT, [(HOUR, json_record({"users": [1]}, HOUR))])
    model_monitor_env(tree, monkeypatch, baseline_dir(tree))
    refused(tree, capsys, "no data capture for endpoint 'ep'", "'other-endpoint'")


def test_missing_or_foreign_baseline_is_refused(tree, monkeypatch, capsys):
    base = baseline_dir(tree)
    model_monitor_env(tree, monkeypatch, base)
    monkeypatch.delenv(contract.MONITOR_BASELINE_STATISTICS_ENV)
    refused(tree, capsys, "no baseline statistics: run `monitor baseline`")
    model_monitor_env(tree, monkeypatch, base, baseline_statistics=str(tree / "nope.json"))
    refused(tree, capsys, "nope.json does not exist")
    (tree / "foreign.json").write_text(json.dumps({"version": 0, "features": []}))
    model_monitor_env(tree, monkeypatch, base, baseline_statistics=str(tree / "foreign.json"))
    refused(tree, capsys, "is not the statistics.json of `monitor baseline`")


def test_thresholds_out_of_range_are_refused(tree, monkeypatch, capsys):
    model_monitor_env(tree, monkeypatch, baseline_dir(tree, {"max_score_psi": -1}))
    refused(tree, capsys, "max_score_psi is -1: it must lie in [0.0, 100.0]", "constraints.json")
    model_monitor_env(tree, monkeypatch, baseline_dir(tree, name="defaults"))
    refused(tree, capsys, "max_unknown_user_share", argv=["--threshold", "max_unknown_user_share=2"])
    refused(tree, capsys, "unknown threshold(s) ['psi']", argv=["--threshold", "psi=0.1"])


def test_bad_window_and_dataset_format_are_refused(tree, monkeypatch, capsys):
    base = baseline_dir(tree)
    model_monitor_env(tree, monkeypatch, base, end_time="2024-05-01T09:00:00Z")
    refused(tree, capsys, "the window ends")
    model_monitor_env(tree, monkeypatch, base, start_time="ten o'clock")
    refused(tree, capsys, 'start_time "ten o\'clock" is not an ISO 8601 time')
    model_monitor_env(tree, monkeypatch, base, dataset_format=json.dumps({"csv": {"header": True}}))
    refused(tree, capsys, "not a batch transform dataset")


def test_model_monitor_example_times_metrics_file_and_gate(tree, monkeypatch):
    lines = [(HOUR + timedelta(minutes=n), json_record({"users": [999_000 + n]}, HOUR + timedelta(minutes=n)))
             for n in range(5)]  # fmt: skip
    capture.write(tree / "capture", ENDPOINT, VARIANT, lines)
    base = baseline_dir(tree)
    # the documented example's spacing ("2019-12-01T15: 20: 00Z"), metrics asked for, a schedule name
    model_monitor_env(
        tree,
        monkeypatch,
        base,
        start_time="2024-05-01T10: 00: 00Z",
        end_time="2024-05-01T11: 00: 00Z",
        publish_cloudwatch_metrics="Enabled",
        sagemaker_monitoring_schedule_name="hourly",
    )
    assert monitor_job.main([]) == 0
    metrics_file = tree / "opt-ml" / "output" / "metrics" / "cloudwatch" / contract.CLOUDWATCH_METRICS_FILE
    metrics = {m["MetricName"]: m for m in map(json.loads, metrics_file.read_text().splitlines())}
    assert metrics["unknown_user_share"]["Value"] == 1.0
    assert metrics["violations"]["Value"] == 1.0
    assert metrics["requests"] == {
        "MetricName": "requests",
        "Timestamp": "2024-05-01T11:00:00Z",
        "Dimensions": [
            {"Name": "Endpoint", "Value": ENDPOINT},
            {"Name": "MonitoringSchedule", "Value": "hourly"},
        ],
        "Value": 5.0,
        "Unit": "Count",
    }
    monkeypatch.setenv(monitor_job.FAIL_ON_VIOLATIONS_ENV, "true")
    assert monitor_job.main([]) == monitor_job.EXIT_VIOLATIONS
    # constraints can switch evaluation and metrics off
    off = baseline_dir(tree, name="off")
    doc = json.loads((off / "constraints.json").read_text())
    doc["monitoring_config"].update(evaluate_constraints="Disabled", emit_metrics="Disabled")
    (off / "constraints.json").write_text(json.dumps(doc))
    metrics_file.unlink()
    monkeypatch.setenv(contract.MONITOR_BASELINE_CONSTRAINTS_ENV, str(off / "constraints.json"))
    assert monitor_job.main([]) == 0
    assert not metrics_file.exists()


def test_input_only_capture_counts_requests_without_answers(tree, monkeypatch):
    capture.write(tree / "capture", ENDPOINT, VARIANT, [(HOUR, json_record({"users": [1]}, HOUR))])
    fmt = json.dumps({"sagemakerCaptureJson": {"captureIndexNames": ["endpointInput"]}})
    model_monitor_env(tree, monkeypatch, baseline_dir(tree), dataset_format=fmt)
    assert monitor_job.main([]) == 0
    s = statistics(tree)
    assert s["traffic"]["requests_without_output"] == 1 and s["catalogue"]["recommend"]["lists"] == 0


def test_time_window_and_files():
    window = reader.TimeWindow(
        reader.parse_time("2024-05-01T10:00:00Z"), reader.parse_time("2024-05-01T11:00:00Z")
    )
    assert reader.parse_time("2024-05-01T10:30:00.123Z") in window
    assert reader.parse_time("2024-05-01T11:00:00Z") not in window
    assert reader.parse_time("2024-05-01T12:00:00+02:00") in window  # 10:00 UTC
    assert window.hour_may_hold(datetime(2024, 5, 1, 11, tzinfo=UTC))  # written just after the window
    assert not window.hour_may_hold(datetime(2024, 5, 1, 13, tzinfo=UTC))
