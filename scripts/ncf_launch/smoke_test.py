"""scripts/smoke_test.sh: invoke an endpoint with our requests; fail on an error or a slow p99.

    scripts/smoke_test.sh --endpoint ncf-staging                      SageMaker (InvokeEndpoint)
    scripts/smoke_test.sh --endpoint ncf-staging --max-p99-ms 300 --requests 100
    scripts/smoke_test.sh --url http://127.0.0.1:8080                 a local `serve` (POST /invocations)
    scripts/smoke_test.sh --url ... --payload a.json --payload b.json

Sends each payload (default: the seed payload, payloads/seed.json, and a top-K request, payloads/users.json)
--requests times, one after the other, after one warm-up request each. Every answer must be a 2xx with a
JSON body that is not empty. Prints one line per payload (requests, errors, p50, p99 in ms) and exits 1
when any request failed or any payload's p99 exceeds --max-p99-ms (the pipeline's smoke-test stage fails
with it). Latency is measured by the caller: for SageMaker it includes the network to the endpoint.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

from .aws_client import (
    SCRIPTS_DIR,
    SEED_PAYLOAD_FILE,
    Failure,
    UsageError,
    check_name,
    connect,
    describe_or_none,
    result,
    run_main,
    say,
)

TOP_K_PAYLOAD_FILE = SCRIPTS_DIR / "payloads" / "users.json"
ERROR_SAMPLES = 3


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="smoke_test.sh",
        description="Invoke an endpoint with the seed and top-K requests; fail on errors or a slow p99.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--endpoint", help="SageMaker endpoint name")
    where.add_argument("--url", help="base URL of a local `serve` (e.g. http://127.0.0.1:8080)")
    p.add_argument(
        "--payload", type=Path, action="append", help="request body file (repeatable; default seed + top-K)"
    )
    p.add_argument("--requests", type=int, default=50, help="requests per payload (default 50)")
    p.add_argument("--max-p99-ms", type=float, default=1000.0, help="fail above this p99 (default 1000)")
    p.add_argument("--target-model", help="multi-model endpoints: which model (e.g. ml-1m.tar.gz)")
    p.add_argument("--timeout", type=float, default=30.0, help="per request, seconds (default 30)")
    p.add_argument("--region", help="AWS region (default: AWS_REGION / your profile)")
    return p


def check_args(args: argparse.Namespace) -> list[tuple[Path, bytes]]:
    if args.requests < 1:
        raise UsageError(f"--requests must be at least 1, got {args.requests}")
    if not args.max_p99_ms > 0:
        raise UsageError(f"--max-p99-ms must be above 0, got {args.max_p99_ms:g}")
    if not args.timeout > 0:
        raise UsageError(f"--timeout must be above 0, got {args.timeout:g}")
    if args.url is not None:
        parts = urllib.parse.urlsplit(args.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise UsageError(f"--url {args.url!r} is not a URL like http://127.0.0.1:8080")
    else:
        check_name(args.endpoint, "--endpoint")
    payloads = []
    for path in args.payload or [SEED_PAYLOAD_FILE, TOP_K_PAYLOAD_FILE]:
        if not path.is_file():
            raise UsageError(f"payload file {path} not found")
        payloads.append((path, path.read_bytes()))
    return payloads


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def local_caller(args: argparse.Namespace) -> Callable[[bytes], bytes]:
    base = args.url.rstrip("/")
    url = (
        f"{base}/models/{urllib.parse.quote(args.target_model, safe='')}/invoke"
        if args.target_model
        else f"{base}/invocations"
    )
    headers = {"Content-Type": "application/json", "Accept": "application/json"}

    def call(body: bytes) -> bytes:
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=args.timeout) as resp:
                return resp.read()
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"{exc.code} {exc.read()[:200].decode(errors='replace')}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise RuntimeError(f"cannot reach {url}: {getattr(exc, 'reason', exc)}") from None

    return call


def sagemaker_caller(args: argparse.Namespace) -> Callable[[bytes], bytes]:
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    aws = connect(args.region)
    desc = describe_or_none(aws.client("sagemaker").describe_endpoint, EndpointName=args.endpoint)
    if desc is None:
        raise UsageError(f"no endpoint named {args.endpoint} in {aws.region}")
    if desc["EndpointStatus"] != "InService":
        raise UsageError(f"endpoint {args.endpoint} is {desc['EndpointStatus']}, not InService")
    # No retries: a smoke test counts every failure.
    runtime = aws.session.client(
        "sagemaker-runtime", config=Config(retries={"max_attempts": 1}, read_timeout=args.timeout)
    )
    extra = {"TargetModel": args.target_model} if args.target_model else {}

    def call(body: bytes) -> bytes:
        try:
            response = runtime.invoke_endpoint(
                EndpointName=args.endpoint,
                Body=body,
                ContentType="application/json",
                Accept="application/json",
                **extra,
            )
            return response["Body"].read()
        except ClientError as exc:
            error = exc.response.get("Error", {})
            raise RuntimeError(f"{error.get('Code')}: {error.get('Message')}") from None
        except BotoCoreError as exc:
            raise RuntimeError(str(exc)) from None

    return call


def check_answer(answer: bytes) -> None:
    try:
        decoded = json.loads(answer)
    except ValueError:
        raise RuntimeError(f"the answer is not JSON: {answer[:100]!r}") from None
    if decoded in (None, [], {}):
        raise RuntimeError(f"the answer is empty: {answer[:100]!r}")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    def body() -> None:
        payloads = check_args(args)
        call = local_caller(args) if args.url else sagemaker_caller(args)
        target = args.url or f"endpoint {args.endpoint}"
        problems = []
        for path, payload in payloads:
            errors: list[str] = []
            latencies: list[float] = []
            for i in range(args.requests + 1):  # the first one warms up, and is not timed
                start = time.perf_counter()
                try:
                    check_answer(call(payload))
                except RuntimeError as exc:
                    errors.append(str(exc))
                    continue
                if i:
                    latencies.append((time.perf_counter() - start) * 1000)
            p50 = percentile(latencies, 50) if latencies else math.nan
            p99 = percentile(latencies, 99) if latencies else math.nan
            sent = args.requests + 1
            result(f"{path.name}: {sent} requests, {len(errors)} errors, p50 {p50:.1f} ms, p99 {p99:.1f} ms")
            for sample in errors[:ERROR_SAMPLES]:
                say(f"  {path.name}: {sample}")
            if errors:
                problems.append(f"{path.name}: {len(errors)} of {args.requests + 1} requests failed")
            elif p99 > args.max_p99_ms:
                problems.append(f"{path.name}: p99 {p99:.1f} ms is over --max-p99-ms {args.max_p99_ms:g}")
        if problems:
            raise Failure(f"smoke test of {target} failed: " + "; ".join(problems))
        say(f"smoke test of {target} passed (p99 at most {args.max_p99_ms:g} ms)")

    return run_main("smoke_test", body)
