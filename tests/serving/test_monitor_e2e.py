"""End to end, locally, for real: ``serve`` on a trained model answers a realistic traffic mix; SageMaker
data capture is written from exactly those requests and responses; ``monitor`` runs as a plain process
under Model Monitor's environment against the model's baseline.

A normal hour (the request kinds the baseline simulates, known users, random candidates) gives no
violations. A drifted hour (unknown users, candidate lists of the most popular items, a few unknown items,
corrupted capture lines) gives the expected violations, and the corrupted lines are counted, not fatal.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from ncf_sagemaker import contract
from tests.support import capture
from tests.support.serving import running_server

ENDPOINT, VARIANT, SCHEDULE = "ncf-endpoint", "AllTraffic", "ncf-hourly"
NORMAL_HOUR = datetime(2024, 5, 1, 10, tzinfo=UTC)
DRIFT_HOUR = NORMAL_HOUR + timedelta(hours=1)
REQUESTS = 200  # per hour
CANDIDATES, PAIRS, K = 30, 20, 10
CAPTURE_FORMAT = json.dumps(
    {"sagemakerCaptureJson": {"captureIndexNames": ["endpointInput", "endpointOutput"]}}
)
# Corrupted capture lines, as a broken writer or a truncated upload would leave them.
CORRUPTED = [
    '{"captureData": {"endpointInput": {"observedContentType": "application/json", "mo',  # truncated
    "null",
    "\x00\x01binary",
    '{"captureData": {"endpointInput": {"observedContentType": "application/jsonlines", "mode": "INPUT", '
    '"data": "!!not base64!!", "encoding": "BASE64"}}, "eventMetadata": {"eventId": "x", '
    '"inferenceTime": "2024-05-01T11:30:00Z"}, "eventVersion": "0"}',
    '{"captureData": {"endpointInput": {"observedContentType": "application/json", "mode": "INPUT", '
    '"data": "{}", "encoding": "GZIP"}}, "eventMetadata": {"eventId": "x", '
    '"inferenceTime": "2024-05-01T11:30:00Z"}, "eventVersion": "0"}',
    '{"captureData": {"endpointInput": {"observedContentType": "application/json", "mode": "INPUT", '
    '"data": "{\\"users\\": [1]}", "encoding": "JSON"}}, "eventVersion": "0"}',  # no eventMetadata
    '{"captureData": {"endpointInput": {"observedContentType": "application/json", "mode": "INPUT", '
    '"data": "{\\"users\\": [1], \\"k\\": 3}", "encoding": "JSON"}, "endpointOutput": '
    '{"observedContentType": "application/json", "mode": "OUTPUT", "data": "{\\"recommendations\\": 5}", '
    '"encoding": "JSON"}}, '
    '"eventMetadata": {"eventId": "x", "inferenceTime": "2024-05-01T11:30:00Z"}, "eventVersion": "0"}',
    "[]",
]


def known_ids(model_dir: Path) -> tuple[list, list]:
    """(users, items by training popularity, most popular first) of the artifact."""
    ids = json.loads((model_dir / "id_maps.json").read_text())
    with np.load(model_dir / "interactions.npz") as npz:
        popularity = npz["item_popularity"]
    order = np.argsort(-popularity, kind="stable")
    return ids["users"], [ids["items"][int(i)] for i in order]


def requests(hour_kind: str, users: list, items: list, seed: int) -> list[tuple[bytes, str, dict]]:
    """(body, content type, extra headers) of an hour's traffic: half the workshop's request (one user
    against candidate items), a quarter top-K, pair scores, a JSON Lines batch and a CSV batch."""
    rng = np.random.default_rng(seed)
    drift = hour_kind == "drift"
    unknown = iter(range(900_000, 999_999))

    def user(p_unknown: float = 0.0) -> int:
        return next(unknown) if drift and rng.random() < p_unknown else int(rng.choice(users))

    def candidates(popular: bool = False) -> list:
        pool = items[:10] if popular else items
        return [int(x) for x in rng.choice(pool, size=min(CANDIDATES, len(pool)), replace=False)]

    out = []
    for i in range(REQUESTS):
        slot = i % 20
        if slot < 10:  # the workshop's request
            u = user(0.3)
            cands = candidates(popular=drift)
            doc = {"user": [u] * len(cands), "item": cands, "k": K}
            out.append((json.dumps(doc).encode(), "application/json", {}))
        elif slot < 15:
            doc = {"users": [user(0.8)], "k": K}
            out.append((json.dumps(doc).encode(), "application/json", {}))
        elif slot < 18:
            u = user(0.3)
            doc = {"pairs": [[u, int(x)] for x in rng.choice(items, size=PAIRS, replace=False)]}
            out.append((json.dumps(doc).encode(), "application/json", {}))
        elif slot == 18 and drift and i % 40 == 18:  # a client whose catalogue the model does not know
            cands = candidates()[:15] + list(range(50_000, 50_015))
            doc = {"user": [user()] * len(cands), "item": cands, "k": K}
            out.append((json.dumps(doc).encode(), "application/json", {}))
        elif slot == 18:
            lines = [
                {"users": [user(0.6)], "k": K},
                {"pairs": [[user(0.3), int(x)] for x in rng.choice(items, size=PAIRS, replace=False)]},
                {"user": [user(0.3)] * CANDIDATES, "item": candidates(), "k": K},
            ]
            body = "".join(json.dumps(line) + "\n" for line in lines).encode()
            out.append((body, "application/jsonlines", {}))
        else:
            body = "".join(f"{user(0.6)}\n" for _ in range(4)).encode()
            out.append((body, "text/csv", {"X-Amzn-SageMaker-Custom-Attributes": f"k={K}"}))
    return out


def send(server, traffic: list, hour: datetime) -> list[tuple[datetime, dict]]:
    """Send each request; capture it with the response the server gave, at its time within the hour."""
    records = []
    step = 3600 / len(traffic)
    for n, (body, content_type, headers) in enumerate(traffic):
        resp = server.request("POST", "/invocations", body, headers={"Content-Type": content_type, **headers})
        assert resp.status in (200, 400), (resp.status, resp.body[:200])
        when = hour + timedelta(seconds=n * step, milliseconds=n % 1000)
        records.append(
            (when, capture.record(body, content_type, resp.body, resp.headers["content-type"], when))
        )
    return records


def run_monitor(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SAGEMAKER_", "NCF_"))}
    return subprocess.run(
        [sys.executable, "-m", "ncf_sagemaker.monitor_job", *args],
        env={**base, "OMP_NUM_THREADS": "1", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def model_monitor_env(root: Path, baseline: Path, start: datetime, out: str) -> dict[str, str]:
    """What a monitoring schedule's processing job gets (Model Monitor's container contract inputs)."""
    return {
        contract.MONITOR_DATASET_FORMAT_ENV: CAPTURE_FORMAT,
        contract.MONITOR_DATASET_SOURCE_ENV: str(root / "endpointdata"),
        contract.MONITOR_OUTPUT_PATH_ENV: str(root / out),
        contract.MONITOR_START_TIME_ENV: start.strftime("%Y-%m-%dT%H:%M:%SZ"),
        contract.MONITOR_END_TIME_ENV: (start + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        contract.MONITOR_BASELINE_STATISTICS_ENV: str(baseline / contract.MONITOR_STATISTICS),
        contract.MONITOR_BASELINE_CONSTRAINTS_ENV: str(baseline / contract.MONITOR_CONSTRAINTS),
        contract.MONITOR_PUBLISH_METRICS_ENV: contract.MONITOR_ENABLED,
        contract.MONITOR_ENDPOINT_ENV: ENDPOINT,
        contract.MONITOR_SCHEDULE_ENV: SCHEDULE,
        contract.BASE_DIR_ENV: str(root / out / "opt-ml"),
    }


@pytest.fixture(scope="module")
def endpoint(model_dir: Path, tmp_path_factory) -> Path:
    """A baseline of the model, and two hours of its endpoint's capture: normal, then drifted."""
    root = tmp_path_factory.mktemp("monitor-e2e")
    users, items = known_ids(model_dir)
    baseline = run_monitor(
        {},
        *("baseline", "--model", str(model_dir), "--output", str(root / "baseline")),
        *("--users", "240", "--k", str(K), "--candidates", str(CANDIDATES), "--pairs", str(PAIRS)),
    )
    assert baseline.returncode == 0, baseline.stderr
    with running_server(root / "serve", model_dir) as server:
        normal = send(server, requests("normal", users, items, seed=1), NORMAL_HOUR)
        drifted = send(server, requests("drift", users, items, seed=2), DRIFT_HOUR)
    corrupted = [(DRIFT_HOUR + timedelta(minutes=7 * n + 1), line) for n, line in enumerate(CORRUPTED)]
    capture.write(
        root / "endpointdata", ENDPOINT, VARIANT, sorted([*normal, *drifted, *corrupted], key=_when)
    )
    return root


def _when(entry: tuple) -> datetime:
    return entry[0]


def outputs(root: Path, out: str) -> tuple[dict, dict, str, list[dict]]:
    folder = root / out
    statistics = json.loads((folder / contract.MONITOR_STATISTICS).read_text())
    violations = json.loads((folder / contract.MONITOR_VIOLATIONS).read_text())
    report = (folder / "report.md").read_text()
    metrics_file = folder / "opt-ml" / "output" / "metrics" / "cloudwatch" / contract.CLOUDWATCH_METRICS_FILE
    metrics = [json.loads(line) for line in metrics_file.read_text().splitlines()]
    return statistics, violations, report, metrics


def test_normal_traffic_no_violations(endpoint: Path):
    proc = run_monitor(model_monitor_env(endpoint, endpoint / "baseline", NORMAL_HOUR, "normal"))
    assert proc.returncode == 0, proc.stderr
    statistics, violations, report, metrics = outputs(endpoint, "normal")
    assert violations == {"violations": []}, report
    section = statistics["recommender"]
    traffic = section["traffic"]
    assert traffic["requests"] == REQUESTS
    assert traffic["request_kinds"]["batch"] == 20  # 10 JSON Lines + 10 CSV bodies
    assert traffic["records"] == 180 + 10 * 3 + 10 * 4  # JSON bodies, JSON Lines lines, CSV rows
    assert traffic["content_types"] == {"application/json": 180, "application/jsonlines": 10, "text/csv": 10}
    assert section["cold_start"]["unknown_user_share"] == 0
    assert section["unreadable"]["records"] == 0
    assert section["status"] == "ok"
    assert {d["MetricName"] for d in metrics} >= {"requests", "unknown_user_share", "recommend_score_psi"}
    assert all(
        d["Dimensions"]
        == [{"Name": "Endpoint", "Value": ENDPOINT}, {"Name": "MonitoringSchedule", "Value": SCHEDULE}]
        for d in metrics
    )
    assert "Status: no violations" in report


def test_drifted_traffic_expected_violations_corrupted_lines_counted(endpoint: Path):
    proc = run_monitor(model_monitor_env(endpoint, endpoint / "baseline", DRIFT_HOUR, "drift"))
    assert proc.returncode == 0, proc.stderr  # violations are a result, not a failure
    statistics, violations, report, _ = outputs(endpoint, "drift")
    print(report)
    found = {(v["constraint_check_type"], v["feature_name"]) for v in violations["violations"]}
    assert found == {
        ("data_quality_check", "capture_record"),
        ("cold_start_check", "user"),
        ("cold_start_check", "item"),
        ("baseline_drift_check", "recommend_score"),
        ("baseline_drift_check", "pair_score"),
        ("catalogue_coverage_check", "top_items_items"),
        ("popularity_concentration_check", "top_items_items"),
        ("popularity_concentration_check", "recommend_items"),
    }, report
    unreadable = statistics["recommender"]["unreadable"]
    assert unreadable["records"] == len(CORRUPTED)
    assert len(unreadable["samples"]) == 5
    assert statistics["recommender"]["traffic"]["requests"] == REQUESTS


def test_gate_fails_on_violations_only_when_asked(endpoint: Path):
    env = model_monitor_env(endpoint, endpoint / "baseline", DRIFT_HOUR, "gate")
    assert run_monitor(env, "--fail-on-violations").returncode == 3
    env = model_monitor_env(endpoint, endpoint / "baseline", NORMAL_HOUR, "gate-normal")
    assert run_monitor(env, "--fail-on-violations").returncode == 0


def test_baseline_holds_what_the_analysis_needs(endpoint: Path, model_dir: Path):
    statistics = json.loads((endpoint / "baseline" / contract.MONITOR_STATISTICS).read_text())
    constraints = json.loads((endpoint / "baseline" / contract.MONITOR_CONSTRAINTS).read_text())
    users, items = known_ids(model_dir)
    section = statistics["recommender"]
    assert section["kind"] == "baseline"
    assert sorted(section["known_ids"]["users"]) == sorted(users)
    assert section["known_ids"]["head_items"] == sorted(items[:2])  # 1 % of 120 items, rounded up
    assert section["settings"]["candidates"] == CANDIDATES
    for kind in ("recommend", "scores"):
        assert len(section["scores"][kind]["bins"]["counts"]) == 10
    assert set(section["catalogue"]["top_items"]["curve"]) == {"16", "32", "64", "128"}
    assert constraints["monitoring_config"]["recommender"]["max_score_psi"] == 0.2
    assert (endpoint / "baseline" / "report.md").read_text().startswith("# Recommender baseline")


def test_baseline_refuses_a_missing_model(tmp_path: Path):
    proc = run_monitor({contract.BASE_DIR_ENV: str(tmp_path)}, "baseline", "--output", str(tmp_path / "out"))
    assert proc.returncode == 1
    assert "no model.tar.gz and no artifact in the model input" in proc.stderr
    assert not (tmp_path / "out").exists()
