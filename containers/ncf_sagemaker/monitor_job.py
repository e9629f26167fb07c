"""The ``monitor`` program: the health of a recommender endpoint from its data capture, against a baseline.

Two modes, as processing jobs on the serving image (it has the wire format and the model code):

- ``monitor baseline`` (once per model version, e.g. a pipeline step): the model (``model.tar.gz`` or its
  directory, ``/opt/ml/processing/model``) answers the request kinds the endpoint serves for a sample of
  its own training users; writes ``statistics.json`` (the reference figures and the ids the model knows)
  and ``constraints.json`` (the thresholds, defaults unless ``--threshold`` says otherwise) and a report.
- ``monitor`` / ``monitor analyze`` (on a schedule): reads the data capture of a time window and writes
  ``statistics.json``, ``constraint_violations.json`` and ``report.md`` to ``output_path``, and CloudWatch
  metrics when asked.

Analysis runs under Model Monitor's bring-your-own-container contract unchanged: it reads
``dataset_format``, ``dataset_source``, ``output_path``, ``start_time``, ``end_time``,
``baseline_statistics``, ``baseline_constraints``, ``publish_cloudwatch_metrics``,
``sagemaker_endpoint_name`` and ``sagemaker_monitoring_schedule_name`` from the environment (options
override them, for our own schedule), writes the metrics file Model Monitor publishes
(``/opt/ml/output/metrics/cloudwatch``) when ``publish_cloudwatch_metrics`` is ``Enabled``, and calls
PutMetricData itself only with ``--put-metric-data``. Exit status: 0 when the analysis ran (violations or
not; an empty window is a "no data" result), 1 when it could not (the reason on stderr and in
``/opt/ml/output/message``, nothing written), 3 for violations with ``--fail-on-violations`` (a gate).
The statistics are ``ncf_core.monitoring``'s; reading capture files is ``capture``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ncf_core import monitoring
from ncf_core.errors import ConfigError, NcfError
from ncf_core.jsonio import write_json
from ncf_core.monitoring import LIST_KINDS, SCORE_KINDS, Catalogue, Thresholds, Violation, Window

from . import capture, contract
from .evaluation_job import model_directory, report_failure

log = logging.getLogger("ncf_sagemaker.monitor")

ANALYZE, BASELINE = "analyze", "baseline"
MODE_ENV = "NCF_MONITOR_MODE"  # ours: the mode when no argument gives it (analyze)
FAIL_ON_VIOLATIONS_ENV = "NCF_MONITOR_FAIL_ON_VIOLATIONS"  # ours: "true" makes violations exit 3
# ours (scripts/monitor.sh's schedule): without start_time, the window is the last whole WINDOW seconds
# (aligned on the epoch, so 3600 = the last full clock hour) ending at or before end_time.
WINDOW_SECONDS_ENV = "NCF_MONITOR_WINDOW_SECONDS"
EXIT_FAILED = 1
EXIT_VIOLATIONS = 3
REPORT_FILE = "report.md"
SECTION = "recommender"  # our section of statistics.json and of constraints.json's monitoring_config
ENABLED, DISABLED = contract.MONITOR_ENABLED, "Disabled"
PUT_CHUNK = 20  # metrics per PutMetricData call


class MonitorError(NcfError):
    """The monitor cannot run: the message says what to fix."""


# --------------------------------------------------------------------------------------------- baseline
def baseline(
    model: Path, users: int, k: int, candidates: int, pairs: int, head_fraction: float, limits: Thresholds
) -> tuple[dict, dict, str]:
    """(statistics.json, constraints.json, report) of the model's own answers on its training users."""
    from ncf_core.inference import Recommender  # torch: only in baseline mode

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ncf-monitor-") as scratch:
        recommender = Recommender.load(model_directory(model, Path(scratch)))
    window = monitoring.baseline_window(recommender, users, k, candidates, pairs, head_fraction)
    summary = window.summary()
    settings = {
        "users": users,
        "k": k,
        "candidates": candidates,
        "pairs_per_user": pairs,
        "head_fraction": head_fraction,
        "seed": monitoring.SEED,
    }
    section = {"kind": BASELINE, "settings": settings, "known_ids": window.catalogue.to_dict(), **summary}
    statistics = statistics_document(section)
    constraints = constraints_document(limits)
    seconds = time.monotonic() - started
    return statistics, constraints, report_text(section, None, [], limits, seconds)


# --------------------------------------------------------------------------------------------- analysis
def load_baseline(statistics: Path | None, constraints: Path | None, overrides: Mapping) -> tuple:
    """(baseline section, catalogue, thresholds, evaluate, emit) from the baseline files."""
    if statistics is None:
        raise MonitorError(
            "no baseline statistics: run `monitor baseline` on the model and pass its statistics.json "
            f"as --baseline-statistics (a schedule's BaselineConfig sets "
            f"{contract.MONITOR_BASELINE_STATISTICS_ENV})"
        )
    doc = _read_json(statistics, "baseline statistics")
    section = doc.get(SECTION) if isinstance(doc, dict) else None
    if not isinstance(section, dict) or section.get("kind") != BASELINE or "known_ids" not in section:
        raise MonitorError(
            f"{statistics} is not the statistics.json of `monitor baseline` (no '{SECTION}' baseline)"
        )
    try:
        catalogue = Catalogue.from_dict(section["known_ids"])
    except ConfigError as exc:
        raise MonitorError(f"{statistics}: {exc}") from None
    config: dict = {}
    if constraints is not None:
        cdoc = _read_json(constraints, "baseline constraints")
        config = cdoc.get("monitoring_config", {}) if isinstance(cdoc, dict) else None
        if not isinstance(config, dict):
            raise MonitorError(f"{constraints}: 'monitoring_config' must be an object")
    try:
        limits = Thresholds.from_dict({**(config.get(SECTION) or {}), **overrides})
    except (ConfigError, TypeError) as exc:
        where = f"{constraints}: " if constraints is not None else ""
        raise MonitorError(f"{where}{exc}") from None
    switches = []
    for name in ("evaluate_constraints", "emit_metrics"):
        value = config.get(name, ENABLED)
        if value not in (ENABLED, DISABLED):
            raise MonitorError(
                f"{constraints}: monitoring_config.{name} is {value!r}, not Enabled or Disabled"
            )
        switches.append(value == ENABLED)
    return section, catalogue, limits, *switches


def analyze(
    source: Path,
    endpoint: str | None,
    period: capture.TimeWindow,
    base: Mapping,
    catalogue: Catalogue,
    limits: Thresholds,
    evaluate: bool,
    outputs: bool = True,
) -> tuple[dict, list[Violation], dict]:
    """(statistics section, violations, timing) of the capture in ``period``."""
    started = time.monotonic()
    files = capture.capture_files(source, endpoint, period)
    window = Window(catalogue)
    outside = capture.read_files(files, window, period, outputs, source, endpoint)
    read_s = time.monotonic() - started
    summary = window.summary(reference=base)
    status = "no data" if window.requests == 0 and window.unreadable == 0 else "ok"
    violations = monitoring.check(base, summary, limits) if evaluate and status == "ok" else []
    section = {
        "kind": "analysis",
        "status": status,
        "endpoint": endpoint,
        "window": {"start": _iso(period.start), "end": _iso(period.end)},
        "files": len(files),
        "records_outside_window": outside,
        **summary,
    }
    timing = {"files": len(files), "read_s": read_s, "total_s": time.monotonic() - started}
    return section, violations, timing


# --------------------------------------------------------------------------------------------- documents
def statistics_document(section: Mapping) -> dict:
    """Model Monitor's statistics.json shape (``dataset``, ``features``) with our figures under
    ``recommender``: each score distribution as a Fractional feature (its ten buckets are the baseline's
    deciles), request kinds and content types as String features."""
    features = []
    for kind in SCORE_KINDS:
        stats = section["scores"][kind]
        if not stats.get("count"):
            continue
        edges, counts = stats["bins"]["edges"], stats["bins"]["counts"]
        bounds = [0.0, *edges, 1.0]
        buckets = [
            {"lower_bound": lo, "upper_bound": hi, "count": c}
            for lo, hi, c in zip(bounds[:-1], bounds[1:], counts, strict=True)
        ]
        numerical = {k: stats[k] for k in ("mean", "sum", "std_dev", "min", "max")}
        features.append(
            {
                "name": monitoring.SCORE_FEATURES[kind],
                "inferred_type": "Fractional",
                "numerical_statistics": {
                    "common": {"num_present": stats["count"], "num_missing": 0},
                    **numerical,
                    "distribution": {"kll": {"buckets": buckets}},
                },
            }
        )
    traffic = section["traffic"]
    for name, counts in (
        ("request_kind", traffic["request_kinds"]),
        ("content_type", traffic["content_types"]),
    ):
        features.append(
            {
                "name": name,
                "inferred_type": "String",
                "string_statistics": {
                    "common": {"num_present": sum(counts.values()), "num_missing": 0},
                    "distinct_count": len(counts),
                    "distribution": {
                        "categorical": {"buckets": [{"value": v, "count": c} for v, c in counts.items()]}
                    },
                },
            }
        )
    return {
        "version": 0,
        "dataset": {"item_count": traffic["records"]},
        "features": features,
        SECTION: section,
    }


def constraints_document(limits: Thresholds) -> dict:
    """Model Monitor's constraints.json shape; our thresholds in ``monitoring_config.recommender``."""
    features = [
        {
            "name": monitoring.SCORE_FEATURES[kind],
            "inferred_type": "Fractional",
            "completeness": 1.0,
            "num_constraints": {"is_non_negative": True},
        }
        for kind in SCORE_KINDS
    ]
    config = {"evaluate_constraints": ENABLED, "emit_metrics": ENABLED, SECTION: limits.to_dict()}
    return {"version": 0, "features": features, "monitoring_config": config}


def violations_document(violations: Sequence[Violation]) -> dict:
    return {"violations": [v.__dict__ for v in violations]}


def metric_values(section: Mapping, violations: Sequence[Violation]) -> dict[str, tuple[float, str]]:
    """The figures sent to CloudWatch: name → (value, unit); those without a value this window left out."""
    traffic, cold = section["traffic"], section["cold_start"]
    values: dict[str, tuple[Any, str]] = {
        "requests": (traffic["requests"], "Count"),
        "records": (traffic["records"], "Count"),
        "error_responses": (traffic["error_responses"], "Count"),
        "unreadable_records": (section["unreadable"]["records"], "Count"),
        "unknown_user_share": (cold["unknown_user_share"], "None"),
        "unknown_item_share": (cold["unknown_item_share"], "None"),
        "fallback_share": (cold["fallback_share"], "None"),
        "violations": (len(violations), "Count"),
    }
    for kind in SCORE_KINDS:
        stats = section["scores"][kind]
        values[monitoring.SCORE_FEATURES[kind] + "_psi"] = (stats.get("psi"), "None")
        values[monitoring.SCORE_FEATURES[kind] + "_mean"] = (stats.get("mean"), "None")
    for kind in LIST_KINDS:
        stats = section["catalogue"][kind]
        at = stats.get("at") or {}
        values[f"{kind}_coverage"] = (at.get("coverage"), "None")
        values[f"{kind}_gini"] = (at.get("gini"), "None")
        values[f"{kind}_head_share"] = (stats.get("head_share"), "None")
    return {name: (float(v), unit) for name, (v, unit) in values.items() if v is not None}


def metric_data(
    values: Mapping[str, tuple[float, str]], when: datetime, endpoint: str | None, schedule: str | None
) -> list[dict]:
    """PutMetricData's datum shape, as Model Monitor's metrics file takes it."""
    dims = [
        {"Name": n, "Value": v} for n, v in (("Endpoint", endpoint), ("MonitoringSchedule", schedule)) if v
    ]
    stamp = _iso(when)
    return [
        {"MetricName": name, "Timestamp": stamp, "Dimensions": dims, "Value": value, "Unit": unit}
        for name, (value, unit) in values.items()
    ]


def put_metric_data(data: Sequence[dict], namespace: str) -> None:
    try:
        import boto3
    except ImportError:
        raise MonitorError("--put-metric-data needs boto3 (pip install '.[monitor]')") from None
    # AWS_REGION first, as the AWS CLI reads it (a SageMaker job sets it; boto3 alone reads only
    # AWS_DEFAULT_REGION and the profile).
    session = boto3.Session(region_name=os.environ.get("AWS_REGION") or None)
    if not session.region_name:
        raise MonitorError("--put-metric-data needs an AWS region: set AWS_REGION")
    client = session.client("cloudwatch")
    for i in range(0, len(data), PUT_CHUNK):
        chunk = [{**d, "Timestamp": capture.parse_time(d["Timestamp"])} for d in data[i : i + PUT_CHUNK]]
        client.put_metric_data(Namespace=namespace, MetricData=chunk)


# --------------------------------------------------------------------------------------------- report
def report_text(
    section: Mapping,
    base: Mapping | None,
    violations: Sequence[Violation],
    limits: Thresholds,
    seconds: float,
) -> str:
    """The figures for a person: what came in, what went out, what is wrong."""
    t, cold, unread = section["traffic"], section["cold_start"], section["unreadable"]
    if section["kind"] == BASELINE:
        title = f"# Recommender baseline: the model's answers to {section['cold_start']['users']:,} requests"
        status = "baseline"
    else:
        w = section["window"]
        endpoint = section["endpoint"] or "(all)"
        title = f"# Recommender monitor: endpoint {endpoint}, {w['start'] or '-'} to {w['end'] or '-'}"
        status = (
            section["status"]
            if section["status"] == "no data"
            else (f"{len(violations)} violation(s)" if violations else "no violations")
        )
    lines = [title, "", f"Status: {status} ({seconds:.2f} s)", "", "## Traffic", ""]
    lines.append(
        f"- requests {t['requests']:,}, records {t['records']:,}, rejected {t['rejected_requests']:,}, "
        f"error responses {t['error_responses']:,}, unreadable capture records {unread['records']:,}"
    )
    lines.append(f"- kinds: {_counts(t['request_kinds'])}")
    lines.append(
        f"- content types: {_counts(t['content_types'])}; answers: {_counts(t['response_content_types'])}"
    )
    if t["variants"]:
        lines.append(f"- variants: {_counts(t['variants'])}")
    lines += ["", "## Cold start", ""]
    lines.append(
        f"- unknown users: {_pct(cold['unknown_user_share'])} of {cold['users']:,} "
        f"(max {_pct(limits.max_unknown_user_share)})"
    )
    lines.append(
        f"- unknown items named in requests: {_pct(cold['unknown_item_share'])} of {cold['items']:,} "
        f"(max {_pct(limits.max_unknown_item_share)})"
    )
    lines.append(
        f"- answers from the popularity fallback: {_pct(cold['fallback_share'])} of {cold['answers']:,}"
    )
    lines += ["", "## Output scores", ""]
    for kind in SCORE_KINDS:
        s = section["scores"][kind]
        if not s.get("count"):
            lines.append(f"- {monitoring.SCORE_FEATURES[kind]}: none")
            continue
        ref = (base or {}).get("scores", {}).get(kind, {})
        against = f", baseline mean {ref['mean']:.3f}" if ref.get("count") else ""
        drift = f", PSI {s['psi']:.3f} (max {limits.max_score_psi})" if s.get("psi") is not None else ""
        lines.append(
            f"- {monitoring.SCORE_FEATURES[kind]}: {s['count']:,} scores, mean {s['mean']:.3f}, p10/p50/p90 "
            f"{s['quantiles']['p10']:.3f}/{s['quantiles']['p50']:.3f}/{s['quantiles']['p90']:.3f}"
            f"{against}{drift}"
        )
    lines += ["", "## Catalogue health (top-K lists)", ""]
    lines.append("| kind | lists | coverage | Gini | head share |")
    lines.append("|---|---|---|---|---|")
    for kind in LIST_KINDS:
        c = section["catalogue"][kind]
        ref = (base or {}).get("catalogue", {}).get(kind, {})
        at = c.get("at")
        if section["kind"] == BASELINE:
            n = max((int(x) for x in c.get("curve", {})), default=None)
            at = {"lists": n, **c["curve"][str(n)]} if n else None
        curve = ref.get("curve", {}).get(str(at["lists"])) if at else None
        cov = f"{_pct(at['coverage'])} @{at['lists']}" if at else "-"
        gin = f"{at['gini']:.3f}" if at else "-"
        if curve:
            cov += f" (baseline {_pct(curve['coverage'])})"
            gin += f" (baseline {curve['gini']:.3f})"
        head = _pct(c["head_share"])
        if ref.get("head_share") is not None:
            head += f" (baseline {_pct(ref['head_share'])})"
        lines.append(f"| {kind} | {c['lists']:,} | {cov} | {gin} | {head} |")
    if unread["records"]:
        lines += ["", f"## Unreadable capture records: {unread['records']:,} ({_pct(unread['share'])})", ""]
        lines += [f"- {s['where']}: {s['reason']}" for s in unread["samples"]]
    if section["kind"] != BASELINE:
        lines += ["", "## Violations", ""]
        lines += [
            f"- {v.constraint_check_type} on {v.feature_name}: {v.description}" for v in violations
        ] or ["- none" if section["status"] == "ok" else "- none (no data in the window)"]
    return "\n".join(lines) + "\n"


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in counts.items()) or "none"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


# --------------------------------------------------------------------------------------------- the program
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="monitor", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "mode",
        nargs="?",
        choices=(ANALYZE, BASELINE),
        default=None,
        help=f"analyze (default; or ${MODE_ENV}) or baseline",
    )
    p.add_argument(
        "--output", type=Path, default=None, help=f"output directory (${contract.MONITOR_OUTPUT_PATH_ENV})"
    )
    p.add_argument(
        "--threshold",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a threshold (repeatable): " + ", ".join(monitoring.Thresholds().to_dict()),
    )
    b = p.add_argument_group("baseline")
    b.add_argument("--model", type=Path, default=None, help="model.tar.gz or its directory")
    b.add_argument("--users", type=int, default=2000, help="training users sampled (default 2000)")
    b.add_argument("--k", type=int, default=10, help="top-K of the simulated requests (default 10)")
    b.add_argument(
        "--candidates", type=int, default=100, help="candidates per top-items request (default 100)"
    )
    b.add_argument("--pairs", type=int, default=20, help="pairs per pair-score request (default 20)")
    b.add_argument(
        "--head-fraction",
        type=float,
        default=monitoring.HEAD_FRACTION,
        help="the catalogue's head: this fraction of the most popular items (default 0.01)",
    )
    a = p.add_argument_group("analysis (each defaults to Model Monitor's environment variable)")
    a.add_argument(
        "--capture", type=Path, default=None, help=f"capture root (${contract.MONITOR_DATASET_SOURCE_ENV})"
    )
    a.add_argument("--endpoint", default=None, help=f"endpoint name (${contract.MONITOR_ENDPOINT_ENV})")
    a.add_argument(
        "--start", default=None, help=f"window start, ISO 8601 (${contract.MONITOR_START_TIME_ENV})"
    )
    a.add_argument("--end", default=None, help=f"window end, exclusive (${contract.MONITOR_END_TIME_ENV})")
    a.add_argument("--baseline-statistics", type=Path, default=None)
    a.add_argument("--baseline-constraints", type=Path, default=None)
    a.add_argument(
        "--publish-cloudwatch-metrics",
        choices=(ENABLED, DISABLED),
        default=None,
        help=f"write Model Monitor's metrics file (${contract.MONITOR_PUBLISH_METRICS_ENV})",
    )
    a.add_argument("--put-metric-data", action="store_true", help="call CloudWatch PutMetricData (boto3)")
    a.add_argument("--namespace", default=contract.MONITOR_NAMESPACE, help="CloudWatch namespace")
    a.add_argument("--schedule-name", default=None, help=f"${contract.MONITOR_SCHEDULE_ENV}")
    a.add_argument(
        "--fail-on-violations",
        action="store_true",
        default=None,
        help=f"exit {EXIT_VIOLATIONS} when there are violations (${FAIL_ON_VIOLATIONS_ENV}=true)",
    )
    return p


def _overrides(pairs: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise MonitorError(f"--threshold {pair!r}: write NAME=VALUE")
        try:
            number = json.loads(value)
        except ValueError:
            raise MonitorError(f"--threshold {pair!r}: {value!r} is not a number") from None
        out[name.strip()] = number
    return out


def main(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = parser().parse_args(argv)
    env = os.environ if environ is None else environ
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    mode = args.mode or env.get(MODE_ENV, ANALYZE)
    try:
        if mode not in (ANALYZE, BASELINE):
            raise MonitorError(f"${MODE_ENV} is {mode!r}: use {ANALYZE} or {BASELINE}")
        overrides = _overrides(args.threshold)
        if mode == BASELINE:
            return run_baseline(args, env, overrides)
        return run_analysis(args, env, overrides)
    except (NcfError, OSError, ValueError) as exc:
        return fail(f"monitor {mode} failed: {exc}")


def run_baseline(args: argparse.Namespace, env: Mapping[str, str], overrides: dict) -> int:
    for name in ("users", "k", "candidates", "pairs"):
        if getattr(args, name) < 1:
            raise MonitorError(f"--{name} must be at least 1, got {getattr(args, name)}")
    if not 0 < args.head_fraction <= 1:
        raise MonitorError(f"--head-fraction must lie in (0, 1], got {args.head_fraction}")
    try:
        limits = Thresholds.from_dict(overrides)
    except (ConfigError, TypeError) as exc:
        raise MonitorError(str(exc)) from None
    model = args.model or contract.processing_dir(contract.PROCESSING_MODEL)
    output = (
        args.output
        or _path(env.get(contract.MONITOR_OUTPUT_PATH_ENV))
        or contract.processing_dir(contract.PROCESSING_BASELINE)
    )
    statistics, constraints, report = baseline(
        model, args.users, args.k, args.candidates, args.pairs, args.head_fraction, limits
    )
    write_json(output / contract.MONITOR_STATISTICS, statistics)
    write_json(output / contract.MONITOR_CONSTRAINTS, constraints)
    _write_text(output / REPORT_FILE, report)
    print(report, end="", flush=True)
    return 0


def run_analysis(args: argparse.Namespace, env: Mapping[str, str], overrides: dict) -> int:
    fmt = env.get(contract.MONITOR_DATASET_FORMAT_ENV)
    outputs = True
    if fmt:
        try:
            spec = json.loads(fmt)[contract.CAPTURE_DATASET_FORMAT]
        except (ValueError, KeyError, TypeError):
            raise MonitorError(
                f"{contract.MONITOR_DATASET_FORMAT_ENV} is {fmt!r}: this monitor reads endpoint data capture "
                f'({{"{contract.CAPTURE_DATASET_FORMAT}": ...}}), not a batch transform dataset'
            ) from None
        names = (spec or {}).get("captureIndexNames") or list(contract.CAPTURE_INDEX_NAMES)
        if contract.CAPTURE_INDEX_NAMES[0] not in names:
            raise MonitorError(
                f"{contract.MONITOR_DATASET_FORMAT_ENV} leaves out endpointInput: nothing to analyse"
            )
        outputs = contract.CAPTURE_INDEX_NAMES[1] in names
    source = (
        args.capture
        or _path(env.get(contract.MONITOR_DATASET_SOURCE_ENV))
        or contract.processing_dir(contract.PROCESSING_ENDPOINT_DATA)
    )
    output = (
        args.output
        or _path(env.get(contract.MONITOR_OUTPUT_PATH_ENV))
        or contract.processing_dir(contract.PROCESSING_MONITOR_RESULTS)
    )
    endpoint = args.endpoint or env.get(contract.MONITOR_ENDPOINT_ENV) or None
    start = args.start or env.get(contract.MONITOR_START_TIME_ENV) or None
    end = args.end or env.get(contract.MONITOR_END_TIME_ENV) or None
    period = capture.TimeWindow(
        capture.parse_time(start, "start_time") if start else None,
        capture.parse_time(end, "end_time") if end else None,
    )
    if env.get(WINDOW_SECONDS_ENV) and period.end and not period.start:
        period = aligned_window(period.end, env[WINDOW_SECONDS_ENV])
    if period.start and period.end and period.end <= period.start:
        raise MonitorError(f"the window ends ({end}) before it starts ({start})")
    publish = (
        args.publish_cloudwatch_metrics or env.get(contract.MONITOR_PUBLISH_METRICS_ENV) or DISABLED
    ) == ENABLED
    schedule = args.schedule_name or env.get(contract.MONITOR_SCHEDULE_ENV) or None
    fail_on = args.fail_on_violations or env.get(FAIL_ON_VIOLATIONS_ENV, "").lower() == "true"
    statistics_path = args.baseline_statistics or _path(env.get(contract.MONITOR_BASELINE_STATISTICS_ENV))
    constraints_path = args.baseline_constraints or _path(env.get(contract.MONITOR_BASELINE_CONSTRAINTS_ENV))
    base, catalogue, limits, evaluate, emit = load_baseline(statistics_path, constraints_path, overrides)
    try:
        section, violations, timing = analyze(
            source, endpoint, period, base, catalogue, limits, evaluate, outputs
        )
    except capture.CaptureError as exc:
        raise MonitorError(str(exc)) from None
    report = report_text(section, base, violations, limits, timing["total_s"])
    values = metric_values(section, violations)
    data = metric_data(values, period.end or datetime.now(UTC), endpoint, schedule)
    write_json(output / contract.MONITOR_VIOLATIONS, violations_document(violations))
    write_json(output / contract.MONITOR_STATISTICS, statistics_document(section))
    _write_text(output / REPORT_FILE, report)
    if publish and emit:
        _write_text(
            contract.cloudwatch_metrics_dir() / contract.CLOUDWATCH_METRICS_FILE,
            "".join(json.dumps(d, sort_keys=True) + "\n" for d in data),
        )
    print(report, end="", flush=True)
    if args.put_metric_data and emit:
        try:
            put_metric_data(data, args.namespace)
        except MonitorError:
            raise
        except Exception as exc:  # botocore's errors: the analysis is written, the metrics are not
            return fail(f"the analysis is in {output}, but PutMetricData failed: {exc}")
    if violations and fail_on:
        print(f"{len(violations)} violation(s): failing as asked (--fail-on-violations)", file=sys.stderr)
        return EXIT_VIOLATIONS
    return 0


def aligned_window(end: datetime, seconds: str) -> capture.TimeWindow:
    """The last whole window of ``seconds`` (aligned on the epoch) ending at or before ``end``."""
    try:
        size = int(seconds)
    except ValueError:
        size = 0
    if size < 1:
        raise MonitorError(f"${WINDOW_SECONDS_ENV} must be a whole number of seconds > 0, got {seconds!r}")
    stop = int(end.timestamp()) // size * size
    return capture.TimeWindow(datetime.fromtimestamp(stop - size, UTC), datetime.fromtimestamp(stop, UTC))


def fail(reason: str) -> int:
    report_failure(reason)
    return EXIT_FAILED


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise MonitorError(f"the {what} file {path} does not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MonitorError(f"the {what} file {path} is not JSON: {exc}") from None


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


if __name__ == "__main__":
    sys.exit(main())
